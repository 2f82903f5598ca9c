"""DBP's cluster complexity: C_j = d_inter x d_intra (amro-kamal/effective_pruning).

  * d_intra: the mean cosine distance (1 - cos) of a cluster's members to its centroid
    (`compute_avg_dist_to_cluster_centroid.py`: the mean of the sorted clusters' distances);
  * d_inter: the mean cosine distance of the centroid to its l nearest other centroids
    (`compute_centroid_distances.py`: an inner-product search for l + 1 neighbours, self dropped);
  * a cluster the reference cannot measure (its comment: "nans can arise if there are only 1-2
    items per cluster"; an empty cluster gives the mean of nothing) gets the mean complexity of
    the others (`np.nanmean`). Here a cluster with fewer than two members is "too small": one
    point says nothing about a spread. With fewer than two clusters there are no neighbours and
    every complexity is 1 (one cluster takes the whole quota anyway).

The member sums are kept in fixed point (2^-32) as Python integers, so merging partial sums in
any order, on any worker, gives the same d_intra to the last bit.
"""

import numpy as np

FIXED_POINT = 2**32
MIN_MEASURABLE = 2


class ClusterStats:
    """Running (members, sum of distances) of one cluster, exact under any merge order."""

    def __init__(self, count: int = 0, fixed_sum: int = 0):
        self.count = count
        self.fixed_sum = fixed_sum

    def add(self, distances: np.ndarray) -> "ClusterStats":
        fixed = np.rint(np.asarray(distances, dtype=np.float64) * FIXED_POINT).astype(np.int64)
        self.count += len(fixed)
        self.fixed_sum += int(fixed.sum())
        return self

    def merge(self, other: "ClusterStats") -> "ClusterStats":
        return ClusterStats(self.count + other.count, self.fixed_sum + other.fixed_sum)

    @property
    def mean(self) -> float:
        return self.fixed_sum / FIXED_POINT / self.count if self.count else float("nan")


def inter_cluster_distances(centroids: np.ndarray, neighbours: int, rows_at_once: int = 1024) -> np.ndarray:
    """d_inter per centroid: mean cosine distance to its `neighbours` nearest other centroids
    (all of them when there are fewer)."""
    k = len(centroids)
    l = min(neighbours, k - 1)
    if l < 1:
        return np.full(k, np.nan)
    out = np.empty(k)
    for start in range(0, k, rows_at_once):
        sims = centroids[start:start + rows_at_once] @ centroids.T
        sims[np.arange(len(sims)), np.arange(start, start + len(sims))] = -np.inf  # not itself
        nearest = -np.partition(-sims, l - 1, axis=1)[:, :l]
        out[start:start + len(sims)] = np.mean(1.0 - nearest.astype(np.float64), axis=1)
    return out


def complexities(sizes: np.ndarray, d_intra: np.ndarray, d_inter: np.ndarray) -> np.ndarray:
    """C_j = d_inter x d_intra; the mean of the measurable clusters for the others."""
    c = np.asarray(d_inter, dtype=np.float64) * np.asarray(d_intra, dtype=np.float64)
    c[np.asarray(sizes) < MIN_MEASURABLE] = np.nan
    if np.all(np.isnan(c)):
        return np.ones(len(c))
    c[np.isnan(c)] = np.nanmean(c)
    return c
