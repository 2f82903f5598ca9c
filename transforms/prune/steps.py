"""The work of each prune step on one element (a block, a cluster, the cluster table), shared by
the single-machine path and the Beam transforms: the two differ only in how elements meet, and
every step puts its input in a canonical order first, so both give the same bits.

    blocks ─► sample ─► fit SemDeDup k-means ─► assign blocks ─► per cluster: SemDeDup
    survivors ─► sample ─► fit DBP k-means ─► assign (by block) ─► per-cluster stats
        ─► cluster table (complexity, quotas) ─► per cluster: select
"""

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from crawl2clip.transforms.errors import count_error, counter
from crawl2clip.transforms.prune.complexity import ClusterStats, complexities, inter_cluster_distances
from crawl2clip.transforms.prune.kmeans import (
    SmallestPriorities,
    assign,
    fit_spherical_kmeans,
    priorities,
    split_by_cluster,
)
from crawl2clip.transforms.prune.quotas import cluster_quotas
from crawl2clip.transforms.prune.select import select_members
from crawl2clip.transforms.prune.semdedup import deduplicate, hardest_first
from crawl2clip.transforms.prune.settings import PruneSettings
from crawl2clip.transforms.prune.vectors import STAGE, Block, Plan, gather, read_block

Arrays = tuple[np.ndarray, ...]


def dedup_clusters(plan: Plan, settings: PruneSettings) -> int:
    return max(1, math.ceil(plan.rows / settings.dedup_cluster_size))


def block_candidates(block: Block, seed: int, size: int) -> tuple[SmallestPriorities, int, list[dict]]:
    """A block's sampling candidates, its number of usable rows, and an error per unusable row."""
    indices, _, errors = read_block(block)
    counter(STAGE, "rows").inc(len(indices) + len(errors))
    return SmallestPriorities(size).add(priorities(indices, seed), indices), len(indices), \
        [count_error(error) for error in errors]


def candidates_of(indices: np.ndarray, seed: int, size: int) -> SmallestPriorities:
    return SmallestPriorities(size).add(priorities(indices, seed), indices)


def fit_on_sample(plan: Plan, sample: np.ndarray, clusters: int, settings: PruneSettings, seed: int) -> np.ndarray:
    """Centroids fitted on the sampled rows (global-index order), in one worker."""
    if not len(sample):
        raise ValueError("no usable embeddings to cluster")
    return fit_spherical_kmeans(gather(plan, sample), clusters, settings.kmeans_iterations, seed)


def assign_block(block: Block, centroids: np.ndarray) -> list[tuple[int, Arrays]]:
    """(cluster, (global indices, cosine similarities to its centroid)) for each cluster in the block."""
    indices, vectors, _ = read_block(block)
    nearest, similarities = assign(vectors, centroids)
    return list(split_by_cluster(nearest, indices, similarities))


def dedup_cluster(plan: Plan, members: list[Arrays], eps: float) -> tuple[np.ndarray, Arrays]:
    """SemDeDup of one cluster: (survivors' global indices, sorted; (removed, the kept row each
    duplicates, their similarity))."""
    indices = np.concatenate([m[0] for m in members])
    similarities = np.concatenate([m[1] for m in members])
    order = hardest_first(indices, similarities)
    indices = indices[order]
    result = deduplicate(gather(plan, indices), eps)
    removed = ~result.kept
    counter(STAGE, "duplicates_removed").inc(int(removed.sum()))
    duplicates = (indices[removed], indices[result.duplicate_of[removed]], result.similarity[removed])
    return np.sort(indices[result.kept]), duplicates


def by_block(plan: Plan, indices: np.ndarray, block_rows: int) -> list[tuple[tuple[int, int], np.ndarray]]:
    """Global indices grouped by the block they lie in, keyed (part position, block number)."""
    indices = np.sort(indices)
    where, rows = plan.locate(indices)
    keys = where.astype(np.int64) * (1 << 32) + rows // block_rows
    bounds = np.flatnonzero(np.diff(keys)) + 1
    return [((int(where[c[0]]), int(rows[c[0]] // block_rows)), indices[c])
            for c in np.split(np.arange(len(indices)), bounds) if len(c)]


def assign_rows(plan: Plan, indices: np.ndarray, centroids: np.ndarray) -> list[tuple[int, Arrays]]:
    """(cluster, (global indices, cosine distances to its centroid)) for the given rows (one block)."""
    indices = np.sort(indices)
    nearest, similarities = assign(gather(plan, indices), centroids)
    distances = (1.0 - similarities).astype(np.float32)
    return list(split_by_cluster(nearest, indices, distances))


@dataclass
class ClusterTable:
    """Per DBP cluster j = 0..k-1, and the run's totals: what selection needs and clusters.parquet shows."""

    size: np.ndarray
    d_intra: np.ndarray
    d_inter: np.ndarray
    complexity: np.ndarray
    probability: np.ndarray
    quota: np.ndarray
    valid_rows: int
    target: int

    def to_arrow(self) -> pa.Table:
        keep_rate = np.divide(self.quota, self.size, out=np.zeros(len(self.size)), where=self.size > 0)
        return pa.table({
            "cluster": pa.array(np.arange(len(self.size)), pa.int32()),
            "size": pa.array(self.size, pa.int64()),
            "d_intra": pa.array(self.d_intra, pa.float64()),
            "d_inter": pa.array(self.d_inter, pa.float64()),
            "complexity": pa.array(self.complexity, pa.float64()),
            "probability": pa.array(self.probability, pa.float64()),
            "quota": pa.array(self.quota, pa.int64()),
            "kept": pa.array(self.quota, pa.int64()),
            "keep_rate": pa.array(keep_rate, pa.float64()),
        })


def target_count(valid_rows: int, survivors: int, keep_fraction: float) -> int:
    """N = floor(keep_fraction x usable input rows), at most what SemDeDup left."""
    wanted = math.floor(keep_fraction * valid_rows + 1e-9)
    if wanted > survivors:
        counter(STAGE, "target_above_deduplicated").inc()
    return min(wanted, survivors)


def cluster_table(stats: dict[int, ClusterStats], centroids: np.ndarray, valid_rows: int,
                  settings: PruneSettings) -> ClusterTable:
    """Complexity and quota of every DBP cluster, from the merged per-cluster statistics."""
    k = len(centroids)
    sizes = np.array([stats[j].count if j in stats else 0 for j in range(k)], dtype=np.int64)
    d_intra = np.array([stats[j].mean if j in stats else np.nan for j in range(k)])
    d_inter = inter_cluster_distances(centroids, settings.neighbours)
    complexity = complexities(sizes, d_intra, d_inter)
    target = target_count(valid_rows, int(sizes.sum()), settings.keep_fraction)
    probability, quota = cluster_quotas(sizes, complexity, target, settings.temperature, settings.balance)
    return ClusterTable(sizes, d_intra, d_inter, complexity, probability, quota, valid_rows, target)


def select_cluster(cluster: int, members: list[Arrays], table: ClusterTable, settings: PruneSettings) -> Arrays:
    """(kept global indices, their cluster, their distances) of one DBP cluster."""
    indices = np.concatenate([m[0] for m in members])
    distances = np.concatenate([m[1] for m in members])
    chosen = select_members(indices, distances, int(table.quota[cluster]), settings.keep, settings.seed, cluster)
    counter(STAGE, "kept").inc(len(chosen))
    counter(STAGE, "pruned").inc(len(indices) - len(chosen))
    return indices[chosen], np.full(len(chosen), cluster, dtype=np.int32), distances[chosen]
