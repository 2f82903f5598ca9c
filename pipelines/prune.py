"""The prune job: a scoring output -> SemDeDup -> DBP -> kept.parquet (+ clusters, duplicates,
plot); and prune-apply: a kept list -> the pruned embeddings layout (and webdataset shards).

`prune_single_machine` runs the same steps as the Beam pipeline in plain loops, in one process:
the fast path when the data fits one machine's disk, and the reference the Beam path equals.
"""

import json
import os
import time
from collections import defaultdict
from dataclasses import asdict

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crawl2clip.pipelines.options import Crawl2ClipOptions
from crawl2clip.transforms.embeddings import list_parts
from crawl2clip.transforms.errors import ERRORS, WriteErrors, count_error, error_record
from crawl2clip.transforms.prune.apply import STAGE as APPLY_STAGE
from crawl2clip.transforms.prune.apply import apply_part, kept_rows_by_part
from crawl2clip.transforms.prune.complexity import ClusterStats
from crawl2clip.transforms.prune.kmeans import SmallestPriorities, sample_size
from crawl2clip.transforms.prune.outputs import (
    CLUSTERS,
    DUPLICATES,
    KEPT,
    SUMMARY,
    write_clusters,
    write_duplicates,
    write_kept,
)
from crawl2clip.transforms.prune.settings import PruneSettings
from crawl2clip.transforms.prune.steps import (
    ClusterTable,
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
from crawl2clip.transforms.prune.transform import DensityBasedPrune, SemDeDup
from crawl2clip.transforms.prune.vectors import plan_parts
from crawl2clip.transforms.schema import ERROR_SCHEMA


def _concat(arrays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Triples of arrays (indices, and two columns) joined column by column."""
    arrays = list(arrays)
    if not arrays:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    return tuple(np.concatenate([a[i] for a in arrays]) for i in range(3))


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

    os.makedirs(output_dir, exist_ok=True)
    write_kept(output_dir, plan, _concat(kept))
    write_duplicates(output_dir, plan, _concat(duplicates))
    write_clusters(output_dir, table, settings, k_dedup)
    _write_errors(output_dir, errors)
    clock.lap("write")
    return {"valid_rows": valid_rows, "after_dedup": int(table.size.sum()), "kept": int(table.quota.sum()),
            "errors": len(errors), **clock.laps}


_EMPTY_KEPT = pa.schema([("part", pa.int64()), ("row", pa.int64()), ("uid", pa.string()), ("hash", pa.int64()),
                         ("key", pa.string()), ("cluster", pa.int32()), ("distance", pa.float32())])
_EMPTY_DUPLICATES = pa.schema([*list(_EMPTY_KEPT)[:5], ("duplicate_of_uid", pa.string()),
                               ("duplicate_of_part", pa.int64()), ("duplicate_of_row", pa.int64()),
                               ("similarity", pa.float32())])


def write_nothing_to_prune(output_dir: str, settings: PruneSettings, errors: list[dict]) -> dict:
    """The outputs of a prune over no usable row (every pair dropped before, or none downloaded):
    empty tables and a summary that says so; the totals, all zero."""
    os.makedirs(output_dir, exist_ok=True)
    pq.write_table(_EMPTY_KEPT.empty_table(), os.path.join(output_dir, KEPT))
    pq.write_table(_EMPTY_DUPLICATES.empty_table(), os.path.join(output_dir, DUPLICATES))
    empty = np.zeros(0)
    table = ClusterTable(empty.astype(np.int64), empty, empty, empty, empty, empty.astype(np.int64), 0, 0)
    pq.write_table(table.to_arrow(), os.path.join(output_dir, CLUSTERS))
    with open(os.path.join(output_dir, SUMMARY), "w") as f:
        json.dump({"settings": asdict(settings), "dedup_clusters": 0, "clusters": 0, "valid_rows": 0,
                   "duplicates_removed": 0, "after_dedup": 0, "target": 0, "kept": 0,
                   "note": "no usable row to prune: the scoring output holds no pair with a usable embedding"}, f, indent=2)
    _write_errors(output_dir, errors)
    return {"valid_rows": 0, "after_dedup": 0, "kept": 0, "errors": len(errors)}


class _Clock:
    def __init__(self):
        self.laps, self._last = {}, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[f"seconds_{name}"] = round(now - self._last, 2)
        self._last = now


def _write_errors(output_dir: str, errors: list[dict]) -> None:
    folder = os.path.join(output_dir, "errors")
    os.makedirs(folder, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(errors, schema=ERROR_SCHEMA),
                   os.path.join(folder, "errors-00000-of-00001.parquet"))


def build_prune(pipeline: beam.Pipeline, options: Crawl2ClipOptions) -> None:
    settings = options.prune_settings()
    out = options.output_dir
    plan = plan_parts(options.input[0]) if list_parts(options.input[0]) else None
    if plan is None or plan.rows == 0:
        pipeline | "NoRows" >> beam.Create([None]) | "WriteEmpty" >> beam.Map(
            lambda _: write_nothing_to_prune(out, settings, []))
        return
    k_dedup = dedup_clusters(plan, settings)
    blocks = pipeline | "Blocks" >> beam.Create(plan.blocks(settings.block_rows))
    deduped = blocks | "SemDeDup" >> SemDeDup(plan, settings)
    pruned = deduped | "DensityBasedPrune" >> DensityBasedPrune(plan, settings)
    (pruned["kept"] | "AllKept" >> beam.combiners.ToList()
     | "WriteKept" >> beam.Map(lambda kept: write_kept(out, plan, _concat(kept))))
    (deduped["duplicates"] | "AllDuplicates" >> beam.combiners.ToList()
     | "WriteDuplicates" >> beam.Map(lambda found: write_duplicates(out, plan, _concat(found))))
    pruned["table"] | "WriteClusters" >> beam.Map(lambda table: write_clusters(out, table, settings, k_dedup))
    part_errors = (pipeline | "PartErrors" >> beam.Create(list(plan.errors))
                   | "CountPartErrors" >> beam.Map(count_error))
    ((deduped["errors"], part_errors) | "AllErrors" >> beam.Flatten() | "WriteErrors" >> WriteErrors(out))


class _ApplyPart(beam.DoFn):
    def __init__(self, output_dir: str, shards_dir: str | None):
        self.output_dir, self.shards_dir = output_dir, shards_dir

    def process(self, item):
        part, (rows, uids) = item
        for error in apply_part(part, rows, uids, self.output_dir, self.shards_dir):
            yield beam.pvalue.TaggedOutput(ERRORS, error)


def build_prune_apply(pipeline: beam.Pipeline, options: Crawl2ClipOptions) -> None:
    parts = {part.number: part for part in list_parts(options.input[0])}
    if not parts:
        raise ValueError(f"{options.input[0]}: no metadata/metadata_N.parquet (not a scoring output)")
    kept = kept_rows_by_part(options.kept)
    work = [(parts[number], rows) for number, rows in sorted(kept.items()) if number in parts]
    missing = [error_record(APPLY_STAGE, "missing_part", source=options.input[0],
                            detail=f"part {number}: {len(rows[0])} kept rows") for number, rows in sorted(kept.items())
               if number not in parts]
    applied = (pipeline | "KeptParts" >> beam.Create(work) | "ApplyKept" >> beam.Reshuffle()
               | "WriteParts" >> beam.ParDo(_ApplyPart(options.output_dir, options.shards)).with_outputs(ERRORS))
    missing = pipeline | "MissingParts" >> beam.Create(missing) | "CountMissing" >> beam.Map(count_error)
    ((applied[ERRORS], missing)
     | "AllErrors" >> beam.Flatten() | "WriteErrors" >> WriteErrors(options.output_dir))
