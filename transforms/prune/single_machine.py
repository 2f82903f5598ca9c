"""The whole prune in one process, in plain loops: the same steps (`steps.py`) on the same blocks
and clusters as the Beam transforms (`transform.py`), so the same output, bit for bit. The fast
path when the data fits one machine, and the reference the Beam path equals. Memory stays
bounded: vectors are read a block or a cluster at a time from the memory-mapped parts.
"""

import time
from collections import defaultdict

import numpy as np

from crawl2clip.transforms.embeddings import list_parts
from crawl2clip.transforms.prune.complexity import ClusterStats
from crawl2clip.transforms.prune.kmeans import SmallestPriorities, sample_size
from crawl2clip.transforms.prune.outputs import (
    write_clusters,
    write_duplicates,
    write_errors,
    write_kept,
    write_nothing_to_prune,
)
from crawl2clip.transforms.prune.settings import PruneSettings
from crawl2clip.transforms.prune.steps import (
    assign_block,
    assign_rows,
    block_candidates,
    by_block,
    candidates_of,
    cluster_table,
    dedup_cluster,
    dedup_clusters,
    fit_on_sample,
    select_cluster,
)
from crawl2clip.transforms.prune.vectors import plan_parts


class _Clock:
    """Seconds of each phase, as `seconds_<phase>` entries of the totals."""

    def __init__(self):
        self.laps, self._last = {}, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[f"seconds_{name}"] = round(now - self._last, 2)
        self._last = now


def prune_single_machine(input_dir: str, output_dir: str, settings: PruneSettings) -> dict:
    """Runs the whole prune in this process and writes the outputs; returns the totals and the
    seconds each phase took. A scoring output with no usable row (nothing kept, or no part at
    all) gives empty outputs."""
    clock = _Clock()
    if not list_parts(input_dir):
        return write_nothing_to_prune(output_dir, settings, [])
    plan = plan_parts(input_dir)
    blocks = plan.blocks(settings.block_rows)
    errors = list(plan.errors)

    # SemDeDup
    k_dedup = dedup_clusters(plan, settings)
    sample = SmallestPriorities(sample_size(k_dedup, settings.points_per_centroid))
    valid_rows = 0
    for block in blocks:
        candidates, valid, block_errors = block_candidates(block, settings.seed, sample.size)
        sample.merge(candidates)
        valid_rows += valid
        errors.extend(block_errors)
    if valid_rows == 0:
        return write_nothing_to_prune(output_dir, settings, errors)
    centroids = fit_on_sample(plan, sample.sample(), k_dedup, settings, settings.seed)
    clock.lap("dedup_fit")
    members = defaultdict(list)
    for block in blocks:
        for cluster, arrays in assign_block(block, centroids):
            members[cluster].append(arrays)
    clock.lap("dedup_assign")
    survivors, duplicates = [], []
    for cluster in sorted(members):
        kept, removed = dedup_cluster(plan, members.pop(cluster), settings.dedup_eps)
        survivors.append(kept)
        duplicates.append(removed)
    clock.lap("dedup")

    # DBP
    sample = SmallestPriorities(sample_size(settings.clusters, settings.points_per_centroid))
    for kept in survivors:
        sample.merge(candidates_of(kept, settings.seed + 1, sample.size))
    centroids = fit_on_sample(plan, sample.sample(), settings.clusters, settings, settings.seed + 1)
    clock.lap("dbp_fit")
    stats = defaultdict(ClusterStats)
    members = defaultdict(list)
    for _, indices in by_block(plan, np.concatenate(survivors), settings.block_rows):
        for cluster, arrays in assign_rows(plan, indices, centroids):
            stats[cluster].add(arrays[1])
            members[cluster].append(arrays)
    clock.lap("dbp_assign")
    table = cluster_table(dict(stats), centroids, valid_rows, settings)
    kept = [select_cluster(cluster, members[cluster], table, settings) for cluster in sorted(members)]
    clock.lap("quotas_select")

    write_kept(output_dir, plan, kept)
    write_duplicates(output_dir, plan, duplicates)
    write_clusters(output_dir, table, settings, k_dedup)
    write_errors(output_dir, errors)
    clock.lap("write")
    return {"valid_rows": valid_rows, "after_dedup": int(table.size.sum()), "kept": int(table.quota.sum()),
            "errors": len(errors), **clock.laps}
