"""SemDeDup and DBP as Beam transforms, for runs too big for one machine.

    blocks ─► SemDeDup: sample ─► fit k-means (one worker) ─► assign (centroids as side input)
                 ─► group by cluster ─► deduplicate          ─► survivors (+ duplicates)
    survivors ─► DensityBasedPrune: sample ─► fit k-means ─► assign by block ─► stats (combiner)
                 ─► cluster table (one worker: complexity, quotas) ─► group by cluster ─► select ─► kept
    Prune: the two, then kept, duplicates, clusters (+ plot, summary) and errors written (`outputs.py`)

Elements are numpy arrays of global row indices, never vectors: every step reads the vectors it
needs from the memory-mapped parts (`vectors.py`; a worker copies a remote part to its local disk
once). Each step calls the same function as the single-machine path (`steps.py`), on the same
blocks and clusters, so both give the same rows.
"""

import apache_beam as beam
import numpy as np

from crawl2clip.transforms.errors import ERRORS, WriteErrors, count_error
from crawl2clip.transforms.prune.complexity import ClusterStats
from crawl2clip.transforms.prune.kmeans import SmallestPriorities, sample_size
from crawl2clip.transforms.prune.outputs import write_clusters, write_duplicates, write_kept
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
from crawl2clip.transforms.prune.vectors import Plan

DUPLICATES = "duplicates"


class _MergeSamples(beam.CombineFn):
    def __init__(self, size: int):
        self.size = size

    def create_accumulator(self):
        return SmallestPriorities(self.size)

    def add_input(self, accumulator, candidates):
        return accumulator.merge(candidates)

    def merge_accumulators(self, accumulators):
        merged = SmallestPriorities(self.size)
        for accumulator in accumulators:
            merged.merge(accumulator)
        return merged

    def extract_output(self, accumulator):
        return accumulator.sample()


class _MergeStats(beam.CombineFn):
    def create_accumulator(self):
        return ClusterStats()

    def add_input(self, accumulator, members):
        return accumulator.add(members[1])

    def merge_accumulators(self, accumulators):
        merged = ClusterStats()
        for accumulator in accumulators:
            merged = merged.merge(accumulator)
        return merged

    def extract_output(self, accumulator):
        return accumulator


class _SampleCandidates(beam.DoFn):
    def __init__(self, seed: int, size: int):
        self.seed, self.size = seed, size

    def process(self, block):
        candidates, valid, errors = block_candidates(block, self.seed, self.size)
        yield candidates, valid
        for error in errors:
            yield beam.pvalue.TaggedOutput(ERRORS, error)


class _DedupCluster(beam.DoFn):
    def __init__(self, plan: Plan, eps: float):
        self.plan, self.eps = plan, eps

    def process(self, cluster):
        survivors, duplicates = dedup_cluster(self.plan, cluster[1], self.eps)
        yield survivors
        if len(duplicates[0]):
            yield beam.pvalue.TaggedOutput(DUPLICATES, duplicates)


class SemDeDup(beam.PTransform):
    """Blocks of rows -> {"survivors": index arrays, "duplicates": (removed, duplicate of,
    similarity) arrays, "valid_rows": one count, "errors": error records}."""

    def __init__(self, plan: Plan, settings: PruneSettings):
        super().__init__()
        self.plan, self.settings = plan, settings

    def expand(self, blocks):
        plan, settings = self.plan, self.settings
        clusters = dedup_clusters(plan, settings)
        size = sample_size(clusters, settings.points_per_centroid)
        read = blocks | "SampleCandidates" >> beam.ParDo(_SampleCandidates(settings.seed, size)).with_outputs(
            ERRORS, main="candidates")
        centroids = (
            read.candidates
            | "Candidates" >> beam.Map(lambda c: c[0])
            | "MergeSample" >> beam.CombineGlobally(_MergeSamples(size))
            | "FitKMeans" >> beam.Map(lambda sample: fit_on_sample(plan, sample, clusters, settings, settings.seed))
        )
        valid_rows = read.candidates | "Valid" >> beam.Map(lambda c: c[1]) | "CountValid" >> beam.CombineGlobally(sum)
        deduped = (
            blocks
            | "AssignToClusters" >> beam.FlatMap(assign_block, beam.pvalue.AsSingleton(centroids))
            | "GroupClusters" >> beam.GroupByKey()
            | "Deduplicate" >> beam.ParDo(_DedupCluster(plan, settings.dedup_eps)).with_outputs(
                DUPLICATES, main="survivors")
        )
        return {"survivors": deduped.survivors, "duplicates": deduped[DUPLICATES], "valid_rows": valid_rows,
                "errors": read[ERRORS]}


class DensityBasedPrune(beam.PTransform):
    """{"survivors": index arrays, "valid_rows": one count} -> {"kept": (indices, cluster,
    distance) arrays, "table": the one ClusterTable}."""

    def __init__(self, plan: Plan, settings: PruneSettings):
        super().__init__()
        self.plan, self.settings = plan, settings

    def expand(self, inputs):
        plan, settings = self.plan, self.settings
        survivors, valid_rows = inputs["survivors"], inputs["valid_rows"]
        size = sample_size(settings.clusters, settings.points_per_centroid)
        centroids = (
            survivors
            | "Candidates" >> beam.Map(candidates_of, settings.seed + 1, size)
            | "MergeSample" >> beam.CombineGlobally(_MergeSamples(size))
            | "FitKMeans" >> beam.Map(
                lambda sample: fit_on_sample(plan, sample, settings.clusters, settings, settings.seed + 1))
        )
        assigned = (
            survivors
            | "ByBlock" >> beam.FlatMap(lambda indices: by_block(plan, indices, settings.block_rows))
            | "GroupBlocks" >> beam.GroupByKey()
            | "AssignToClusters" >> beam.FlatMap(
                lambda block, c: assign_rows(plan, np.concatenate(list(block[1])), c),
                beam.pvalue.AsSingleton(centroids))
        )
        table = (
            assigned
            | "ClusterStats" >> beam.CombinePerKey(_MergeStats())
            | "AllStats" >> beam.combiners.ToDict()
            | "ClusterTable" >> beam.Map(
                lambda stats, c, valid: cluster_table(stats, c, valid, settings),
                beam.pvalue.AsSingleton(centroids), beam.pvalue.AsSingleton(valid_rows))
        )
        kept = (
            assigned
            | "GroupClusters" >> beam.GroupByKey()
            | "Select" >> beam.Map(lambda cluster, t: select_cluster(cluster[0], list(cluster[1]), t, settings),
                                   beam.pvalue.AsSingleton(table))
        )
        return {"kept": kept, "table": table}


class Prune(beam.PTransform):
    """The prune of a planned scoring output, from the pipeline's start to its files in
    `output_dir`: SemDeDup, then DBP, then the outputs written, each by one worker (they hold
    row numbers only)."""

    def __init__(self, plan: Plan, settings: PruneSettings, output_dir: str):
        super().__init__()
        self.plan, self.settings, self.output_dir = plan, settings, output_dir

    def expand(self, pipeline_start):
        plan, settings, out = self.plan, self.settings, self.output_dir
        k_dedup = dedup_clusters(plan, settings)
        blocks = pipeline_start | "Blocks" >> beam.Create(plan.blocks(settings.block_rows))
        deduped = blocks | "SemDeDup" >> SemDeDup(plan, settings)
        pruned = deduped | "DensityBasedPrune" >> DensityBasedPrune(plan, settings)
        (pruned["kept"] | "AllKept" >> beam.combiners.ToList()
         | "WriteKept" >> beam.Map(lambda kept: write_kept(out, plan, kept)))
        (deduped["duplicates"] | "AllDuplicates" >> beam.combiners.ToList()
         | "WriteDuplicates" >> beam.Map(lambda found: write_duplicates(out, plan, found)))
        pruned["table"] | "WriteClusters" >> beam.Map(lambda table: write_clusters(out, table, settings, k_dedup))
        part_errors = (pipeline_start | "PartErrors" >> beam.Create(list(plan.errors))
                       | "CountPartErrors" >> beam.Map(count_error))
        return (deduped["errors"], part_errors) | "AllErrors" >> beam.Flatten() | "WriteErrors" >> WriteErrors(out)
