"""Spherical k-means: a seeded sample to fit on, faiss to fit, nearest centroid by cosine.

The sample is the rows with the smallest seeded hash of their global index, so any worker,
and any split of the rows into blocks, picks the same rows: a block keeps its own smallest
candidates and merging candidate sets keeps the smallest again (`SmallestPriorities`). The fit
sees the sample in global-index order, so the single-machine path and Beam fit the same matrix
and get the same centroids.
"""

import faiss
import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def priorities(indices: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random uint64 per global index (splitmix64), the sampling order."""
    with np.errstate(over="ignore"):
        z = np.asarray(indices, dtype=np.uint64) + np.uint64(seed % 2**63) * _GOLDEN + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class SmallestPriorities:
    """The `size` global indices of smallest priority seen so far; merging is exact and order-free."""

    def __init__(self, size: int):
        self.size = size
        self.keys = np.empty(0, dtype=np.uint64)
        self.indices = np.empty(0, dtype=np.int64)

    def add(self, keys: np.ndarray, indices: np.ndarray) -> "SmallestPriorities":
        keys = np.concatenate([self.keys, keys])
        indices = np.concatenate([self.indices, np.asarray(indices, dtype=np.int64)])
        if len(keys) > self.size:
            # ties broken by index, so the kept set never depends on arrival order
            order = np.lexsort((indices, keys))[: self.size]
            keys, indices = keys[order], indices[order]
        self.keys, self.indices = keys, indices
        return self

    def merge(self, other: "SmallestPriorities") -> "SmallestPriorities":
        return self.add(other.keys, other.indices)

    def sample(self) -> np.ndarray:
        """The chosen global indices, sorted."""
        return np.sort(self.indices)


def sample_size(clusters: int, points_per_centroid: int) -> int:
    return clusters * points_per_centroid


def fit_spherical_kmeans(vectors: np.ndarray, clusters: int, iterations: int, seed: int) -> np.ndarray:
    """(k, d) unit centroids; k is cut to the number of rows when there are fewer.

    Seeded with AFK-MC2 (faiss's cheap approximation of k-means++) rather than the reference's
    uniform random pick: a random start often puts two centroids in one concept and merges two
    others, which Lloyd's iterations do not undo (on 5 separated clusters, faiss recovered all
    5 in 8 of 20 random starts and 16 of 20 AFK-MC2 starts); it costs about half an iteration."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    k = min(clusters, len(vectors))
    if k < 1:
        raise ValueError("k-means needs at least one row")
    kmeans = faiss.Kmeans(vectors.shape[1], k, niter=iterations, seed=seed, spherical=True,
                          init_method=faiss.ClusteringInitMethod_AFK_MC2,
                          max_points_per_centroid=max(1, -(-len(vectors) // k)), min_points_per_centroid=1,
                          verbose=False)
    kmeans.train(vectors)
    centroids = np.asarray(kmeans.centroids, dtype=np.float32)
    return centroids / np.linalg.norm(centroids, axis=1, keepdims=True)


def assign(vectors: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(nearest centroid, cosine similarity to it) of each unit vector; ties go to the lower id."""
    if not len(vectors):
        return np.empty(0, dtype=np.int32), np.empty(0, dtype=np.float32)
    similarities = vectors @ centroids.T
    nearest = np.argmax(similarities, axis=1)
    return nearest.astype(np.int32), similarities[np.arange(len(vectors)), nearest].astype(np.float32)


def split_by_cluster(clusters: np.ndarray, *columns: np.ndarray):
    """Yields (cluster, its rows of each column) for each cluster present, rows in input order."""
    order = np.argsort(clusters, kind="stable")
    sorted_clusters = clusters[order]
    bounds = np.flatnonzero(np.diff(sorted_clusters)) + 1
    for chunk in np.split(order, bounds):
        if len(chunk):
            yield int(clusters[chunk[0]]), tuple(column[chunk] for column in columns)
