"""SemDeDup inside one k-means cluster: drop near-duplicates, keep the hardest of each group.

Our reading of the reference (facebookresearch/SemDeDup, `semdedup.py` and
`clustering/sort_clusters.py`):
  * its k-means is a clustering of its own, finer than DBP's (50,000 clusters for LAION-440M,
    about 8,800 rows each; DBP then ran a new k = 500 k-means on the deduplicated set with another
    encoder). Here: `dedup_cluster_size` rows per cluster on average, spherical, its own fit;
  * members are ordered by cosine distance to their centroid, farthest first ("keep hard"), so
    the member of a duplicate group that survives is the one farthest from the centroid;
  * a member is removed when its cosine similarity to an earlier member exceeds 1 - eps.
The reference compares with every earlier member, removed or not (the column maximum of the
upper triangle of the similarity matrix); the issue asks for earlier KEPT members, which is
what is done here. Both keep the first member of every group of mutual duplicates; they differ
only on chains (a~b, b~c, a!~c: the reference drops c too, here c stays, because the b it
resembles is gone). This rule guarantees what the reference does not: every removed row has a
kept row within eps, and no two kept rows are within eps of each other.

The O(m^2) comparison runs in chunks of rows, each compared with the rows kept so far, so the
memory is a chunk times the cluster, never the cluster squared.
"""

from dataclasses import dataclass

import numpy as np

SIMILARITY_BUDGET = 1 << 25  # float32 similarities held at once (128 MiB)


@dataclass
class DedupResult:
    kept: np.ndarray  # bool per member (in the order given)
    duplicate_of: np.ndarray  # for removed members, position of the most similar earlier kept member; -1 otherwise
    similarity: np.ndarray  # float32: that similarity (0 for kept members)


def hardest_first(indices: np.ndarray, similarities: np.ndarray) -> np.ndarray:
    """The order SemDeDup walks a cluster in: farthest from the centroid first (lowest cosine
    similarity), ties by global index, so the order never depends on how members arrived."""
    return np.lexsort((indices, similarities))


def deduplicate(vectors: np.ndarray, eps: float, chunk_rows: int | None = None) -> DedupResult:
    """Walks unit `vectors` in the given order; keeps a row unless its cosine similarity to an
    earlier kept row is above 1 - eps."""
    m = len(vectors)
    threshold = np.float32(1.0 - eps)
    kept = np.zeros(m, dtype=bool)
    duplicate_of = np.full(m, -1, dtype=np.int64)
    similarity = np.zeros(m, dtype=np.float32)
    kept_rows = np.empty(m, dtype=np.int64)  # positions of the kept rows, in order
    kept_vectors = np.empty_like(vectors)  # their vectors; the current chunk sits provisionally after them
    n_kept = 0
    chunk = chunk_rows or int(np.clip(SIMILARITY_BUDGET // max(m, 1), 64, 4096))
    for start in range(0, m, chunk):
        block = vectors[start:start + chunk]
        c = len(block)
        kept_vectors[n_kept:n_kept + c] = block
        # one product: the chunk against the rows kept so far and against itself
        sims = block @ kept_vectors[:n_kept + c].T
        best_prev = sims[:, :n_kept].max(axis=1) if n_kept else np.full(c, -np.inf, dtype=np.float32)
        removed = best_prev > threshold
        # inside the chunk, in order: a row still kept removes the later rows it duplicates
        rows, cols = np.nonzero(sims[:, n_kept:] > threshold)
        later = rows < cols
        rows, cols = rows[later], cols[later]
        for i in np.unique(rows):
            if not removed[i]:
                removed[cols[rows == i]] = True
        chunk_kept = ~removed
        # for each removed row, the most similar earlier kept row (earlier chunks or this one)
        for j in np.flatnonzero(removed):
            best, of = -np.inf, -1
            if n_kept:
                arg = int(np.argmax(sims[j, :n_kept]))
                best, of = sims[j, arg], int(kept_rows[arg])
            inside = np.flatnonzero(chunk_kept[:j])
            if len(inside):
                arg = int(np.argmax(sims[inside, n_kept + j]))
                if sims[inside[arg], n_kept + j] > best:
                    best, of = sims[inside[arg], n_kept + j], start + int(inside[arg])
            duplicate_of[start + j], similarity[start + j] = of, best
        kept[start:start + c] = chunk_kept
        new = np.flatnonzero(chunk_kept)
        kept_rows[n_kept:n_kept + len(new)] = start + new
        kept_vectors[n_kept:n_kept + len(new)] = block[new]
        n_kept += len(new)
    return DedupResult(kept, duplicate_of, similarity)
