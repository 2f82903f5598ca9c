"""The prune job: a scoring output -> SemDeDup -> DBP -> kept.parquet (+ clusters, duplicates,
plot); and prune-apply: a kept list -> the pruned embeddings layout (and webdataset shards).
Composition only: the steps live in transforms/prune/. Every builder takes (pipeline, options),
the stage's own --input and --output, local or on any Beam filesystem.
"""

import os
from collections.abc import Callable

import apache_beam as beam
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner, SwitchingDirectRunner
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.runner import PipelineRunner

from crawl2clip.pipelines.options import Crawl2ClipOptions
from crawl2clip.transforms import files
from crawl2clip.transforms.embeddings import list_parts
from crawl2clip.transforms.errors import WriteErrors, count_error, error_record
from crawl2clip.transforms.prune.apply import STAGE as APPLY_STAGE
from crawl2clip.transforms.prune.apply import WritePrunedParts, kept_rows_by_part
from crawl2clip.transforms.prune.outputs import write_nothing_to_prune
from crawl2clip.transforms.prune.single_machine import prune_single_machine
from crawl2clip.transforms.prune.transform import Prune
from crawl2clip.transforms.prune.vectors import plan_parts

# Runners whose workers are all on this machine: there the single-machine prune (one step,
# memory-bounded) is faster than the Beam one; any other runner gets the Beam prune.
_ONE_MACHINE_RUNNERS = (SwitchingDirectRunner, BundleBasedDirectRunner, FnApiRunner)


def _absolute(path: str) -> str:
    """A local path as workers with another working folder must see it."""
    return os.path.abspath(path) if files.is_local(path) else path


def build_prune(pipeline: beam.Pipeline, options: Crawl2ClipOptions) -> None:
    """The Beam prune (SemDeDup + DBP spread over the workers). It plans the parts of --input
    as it is built, so build it once that folder is finished."""
    input_dir, out, settings = _absolute(options.input[0]), _absolute(options.output_dir), options.prune_settings()
    plan = plan_parts(input_dir) if list_parts(input_dir) else None
    if plan is None or plan.rows == 0:
        pipeline | "NoRows" >> beam.Create([None]) | "WriteEmpty" >> beam.Map(
            lambda _: write_nothing_to_prune(out, settings, []))
        return
    pipeline | "Prune" >> Prune(plan, settings, out)


def build_prune_single_machine(pipeline: beam.Pipeline, options: Crawl2ClipOptions) -> None:
    """The single-machine prune as one step on one worker: memory-bounded (it streams the
    memory-mapped parts), counted by the same steps, with the same output as `build_prune`.
    Plans nothing when built."""
    input_dir, out, settings = _absolute(options.input[0]), _absolute(options.output_dir), options.prune_settings()
    (pipeline | "Start" >> beam.Create([None])
     | "SemDeDupAndPrune" >> beam.Map(lambda _: prune_single_machine(input_dir, out, settings)))


def prune_builder(runner: PipelineRunner) -> Callable[[beam.Pipeline, Crawl2ClipOptions], None]:
    """What `crawl2clip run` prunes with: on DirectRunner the single-machine step, on any other
    runner (Flink, Spark, Portable, Dataflow) the Beam prune, spread over the cluster."""
    return build_prune_single_machine if isinstance(runner, _ONE_MACHINE_RUNNERS) else build_prune


def build_prune_apply(pipeline: beam.Pipeline, options: Crawl2ClipOptions) -> None:
    input_dir = _absolute(options.input[0])
    parts = {part.number: part for part in list_parts(input_dir)}
    if not parts:
        raise ValueError(f"{input_dir}: no metadata/metadata_N.parquet (not a scoring output)")
    kept = kept_rows_by_part(options.kept)
    work = [(parts[number], rows) for number, rows in sorted(kept.items()) if number in parts]
    missing = [error_record(APPLY_STAGE, "missing_part", source=input_dir,
                            detail=f"part {number}: {len(rows[0])} kept rows") for number, rows in sorted(kept.items())
               if number not in parts]
    out = _absolute(options.output_dir)
    shards = _absolute(options.shards) if options.shards else None
    applied = pipeline | "KeptParts" >> beam.Create(work) | "ApplyKept" >> WritePrunedParts(out, shards)
    missing = pipeline | "MissingParts" >> beam.Create(missing) | "CountMissing" >> beam.Map(count_error)
    (applied, missing) | "AllErrors" >> beam.Flatten() | "WriteErrors" >> WriteErrors(out)
