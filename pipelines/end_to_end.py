"""The whole LAION process (`crawl2clip run`), one Beam pipeline per stage, run in turn:

    extract + language -> download -> CLIP score + content tags -> [SemDeDup + DBP prune]

Stage boundaries are files, as they were for LAION: every stage writes its own folder under DIR
(extract/, download/, score/, prune/), exactly what the stage commands write, and the next stage
lists and reads that folder when it starts. Every pipeline is built before the first one runs, so
what would fail in a later stage (an unknown model, a score folder of other settings) fails before
any work. Each stage being its own job, its counters are known when it ends: they are written with
its output (DIR/<stage>/metrics.json, then `_SUCCESS`).

A rerun into the same DIR resumes: a finished stage is not redone and its metrics.json stands;
finished download shards and scoring parts are skipped by the stages themselves, and their
counters are read back from their files (pipelines/resume.py). So DIR/metrics.json and every
stage's metrics.json cover the whole data, however many runs it took.

Hand-offs, markers and metrics go through transforms/files.py, so DIR may be on any Beam
filesystem for the stages that write through it (options.ANY_FILESYSTEM_STAGES: extract and
download); `--stop-after` ends the run early.
"""

import math
import os
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from crawl2clip.pipelines.extract import build_extract
from crawl2clip.pipelines.options import RUN_STAGES, Crawl2ClipOptions
from crawl2clip.pipelines.prune import prune_single_machine
from crawl2clip.pipelines.resume import finished_work
from crawl2clip.pipelines.run import METRICS_FILE, run_built, write_metrics
from crawl2clip.pipelines.score import score_shards
from crawl2clip.transforms import files
from crawl2clip.transforms.download.transform import DownloadImages
from crawl2clip.transforms.schema import CANDIDATE_SCHEMA
from crawl2clip.transforms.score.shards import download_shards

STAGES = RUN_STAGES
SUCCESS_FILE = "_SUCCESS"


def stage_dir(run_dir: str, stage: str) -> str:
    return files.join(run_dir, stage)


def stage_options(options: Crawl2ClipOptions, **overrides) -> Crawl2ClipOptions:
    """A copy of the options with some values changed (a stage's own input and output folder)."""
    return Crawl2ClipOptions(flags=[], **{**options.get_all_options(drop_default=True), **overrides})


def is_done(run_dir: str, stage: str) -> bool:
    return files.marker_exists(files.join(stage_dir(run_dir, stage), SUCCESS_FILE))


def _mark_done(directory: str, stage: str) -> None:
    files.write_marker(files.join(directory, SUCCESS_FILE), {"stage": stage, "finished": time.time()})


def _stage_metrics(directory: str) -> dict:
    path = files.join(directory, METRICS_FILE)
    return files.read_marker(path) if files.exists(path) else {"counters": {}}


def _pair_files(extract_dir: str) -> list[str]:
    return files.match(files.join(extract_dir, "pairs", "*.parquet"))


def _extract(pipeline: beam.Pipeline, options: Crawl2ClipOptions, run_dir: str) -> None:
    build_extract(pipeline, stage_options(options, output_dir=stage_dir(run_dir, "extract")))


def _download(pipeline: beam.Pipeline, options: Crawl2ClipOptions, run_dir: str) -> None:
    """The candidate files, listed when the job starts; shards finished earlier are skipped."""
    extract_dir = stage_dir(run_dir, "extract")
    seed = pipeline | "Start" >> beam.Create([None])
    rows = (seed
            | "ListPairFiles" >> beam.FlatMap(lambda _: _pair_files(extract_dir))
            | "ReadPairs" >> beam.io.ReadAllFromParquet())
    shard_size = options.shard_size
    shard_count = (rows
                   | "CountPairs" >> beam.combiners.Count.Globally()
                   | "ShardCount" >> beam.Map(lambda n: max(1, math.ceil(n / shard_size))))
    rows | "DownloadImages" >> DownloadImages(
        stage_dir(run_dir, "download"), beam.pvalue.AsSingleton(shard_count), options.fetch_options(),
        options.resize_spec(), CANDIDATE_SCHEMA, options.blocklist_settings())


def _score(pipeline: beam.Pipeline, options: Crawl2ClipOptions, run_dir: str) -> None:
    """The finished download shards, listed when the job starts; parts scored earlier are skipped.
    Building it checks the models and records (or compares) the settings."""
    download_dir = stage_dir(run_dir, "download")
    download_dir = os.path.abspath(download_dir) if files.is_local(download_dir) else download_dir
    numbers = (pipeline | "Start" >> beam.Create([None])
               | "ListDownloadShards" >> beam.FlatMap(lambda _: download_shards(download_dir)))
    score_shards(numbers, options, download_dir, stage_dir(run_dir, "score"))


def _prune(pipeline: beam.Pipeline, options: Crawl2ClipOptions, run_dir: str) -> None:
    """The single-machine prune as one step on one worker: memory-bounded (it streams the
    memory-mapped parts), counted by the same steps, with the same output, as `crawl2clip prune`."""
    score_dir, prune_dir, settings = stage_dir(run_dir, "score"), stage_dir(run_dir, "prune"), options.prune_settings()
    (pipeline | "Start" >> beam.Create([None])
     | "SemDeDupAndPrune" >> beam.Map(lambda _: prune_single_machine(score_dir, prune_dir, settings)))


_BUILDERS = {"extract": _extract, "download": _download, "score": _score, "prune": _prune}


def run_end_to_end(pipeline_options: PipelineOptions, options: Crawl2ClipOptions) -> dict:
    """Runs the stages not finished yet into `options.output_dir`; writes DIR/metrics.json (every
    stage's counters) and returns it, with each stage's seconds and whether this run did it."""
    files.configure(pipeline_options)  # is_done reads DIR before any pipeline is built
    run_dir = options.output_dir
    started = time.time()
    stages = options.run_stages()
    pipelines = {}
    for stage in stages:
        if not is_done(run_dir, stage):
            pipelines[stage] = beam.Pipeline(options=pipeline_options)
            _BUILDERS[stage](pipelines[stage], options, run_dir)
    reports = {}
    for stage in stages:
        directory = stage_dir(run_dir, stage)
        if stage not in pipelines:
            reports[stage] = {**_stage_metrics(directory), "ran": False}
            continue
        if stage in ("extract", "prune"):  # done whole or not at all: a killed run's files are leftovers
            files.delete(directory)
        reports[stage] = {**run_built(pipelines[stage], directory, finished_work(stage, directory)), "ran": True}
        _mark_done(directory, stage)
    report = {
        "runner": pipeline_options.view_as(StandardOptions).runner,
        "seconds": round(time.time() - started, 3),
        "counters": dict(sorted((name, n) for r in reports.values() for name, n in r["counters"].items())),
        "stages": {stage: {"seconds": r.get("seconds"), "ran": r["ran"]} for stage, r in reports.items()},
    }
    write_metrics(run_dir, report)
    return report
