"""The whole LAION process (`crawl2clip run`), one Beam pipeline per stage, run in turn:

    extract + language -> download -> CLIP score + content tags -> [SemDeDup + DBP prune]

Stage boundaries are files, as they were for LAION: every stage writes its own folder under DIR
(extract/, download/, score/, prune/), exactly what the stage commands write, and the next stage
lists and reads that folder when it starts. Every pipeline is built before the first one runs, so
what would fail in a later stage (an unknown model, a score folder of other settings) fails before
any work; but the prune's is built when its turn comes (on a cluster's runner the Beam prune plans
the parts the score stage wrote), and its settings are checked up front instead. On DirectRunner
the prune is the single-machine step, on any other runner the Beam prune. Each stage being its
own job, its counters are known when it ends: they are written with its output
(DIR/<stage>/metrics.json, then `_SUCCESS`).

A rerun into the same DIR resumes: a finished stage is not redone and its metrics.json stands;
finished download shards and scoring parts are skipped by the stages themselves, and their
counters are read back from their files (pipelines/resume.py). So DIR/metrics.json and every
stage's metrics.json cover the whole data, however many runs it took.

Every stage, the hand-offs, markers and metrics go through transforms/files.py, so DIR (and the
input) may be on any Beam filesystem: hdfs://, s3://, gs://. `--stop-after` ends the run early.
"""

import os
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from crawl2clip.pipelines.extract import build_extract
from crawl2clip.pipelines.options import RUN_STAGES, Crawl2ClipOptions
from crawl2clip.pipelines.prune import prune_builder
from crawl2clip.pipelines.resume import finished_work
from crawl2clip.pipelines.run import METRICS_FILE, run_built, write_metrics
from crawl2clip.pipelines.score import score_shards
from crawl2clip.transforms import files
from crawl2clip.transforms.download.transform import CountShards, DownloadImages
from crawl2clip.transforms.schema import CANDIDATE_SCHEMA
from crawl2clip.transforms.score.shards import download_shards

STAGES = RUN_STAGES
SUCCESS_FILE = "_SUCCESS"


def stage_dir(run_dir: str, stage: str) -> str:
    return files.join(run_dir, stage)


def stage_options(options: Crawl2ClipOptions, **overrides) -> Crawl2ClipOptions:
    """A copy of the options with some values changed (a stage's own input and output folder)."""
    return Crawl2ClipOptions(flags=[], **{**options.get_all_options(drop_default=True), **overrides})


def stage_job_options(pipeline_options: PipelineOptions, stage: str) -> PipelineOptions:
    """The pipeline options of one stage's job: the same, with the job named after the stage
    (`--job_name NAME` gives NAME-download, NAME-score, ...), so a cluster's web UI and REST API
    tell the run's jobs apart."""
    values = pipeline_options.get_all_options(drop_default=True, retain_unknown_options=True)
    return PipelineOptions.from_dictionary({**values, "job_name": f"{values.get('job_name') or 'crawl2clip-run'}-{stage}"})


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
    shard_count = rows | "CountShards" >> CountShards(options.shard_size)
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
    """What `crawl2clip prune` builds, on the score stage's folder: on DirectRunner the
    single-machine prune as one step, on a cluster's runner the Beam prune (pipelines/prune.py
    prune_builder). Built when its turn comes: the Beam prune plans the parts the score stage wrote."""
    prune_builder(pipeline.runner)(pipeline, stage_options(options, input=[stage_dir(run_dir, "score")],
                                                            output_dir=stage_dir(run_dir, "prune")))


_BUILDERS = {"extract": _extract, "download": _download, "score": _score, "prune": _prune}
BUILT_IN_TURN = ("prune",)  # built once the stage before it has finished


def run_end_to_end(pipeline_options: PipelineOptions, options: Crawl2ClipOptions) -> dict:
    """Runs the stages not finished yet into `options.output_dir`; writes DIR/metrics.json (every
    stage's counters) and returns it, with each stage's seconds and whether this run did it."""
    files.configure(pipeline_options)  # is_done reads DIR before any pipeline is built
    run_dir = options.output_dir
    started = time.time()
    runner = pipeline_options.view_as(StandardOptions).runner  # portable runners clear it when a job starts
    stages = options.run_stages()
    todo = [stage for stage in stages if not is_done(run_dir, stage)]
    if "prune" in todo and (problems := options.prune_settings().problems()):
        raise ValueError("; ".join(problems))  # built in its turn: its settings are checked now

    def build(stage: str) -> beam.Pipeline:
        pipeline = beam.Pipeline(runner=runner, options=stage_job_options(pipeline_options, stage))
        _BUILDERS[stage](pipeline, options, run_dir)
        return pipeline

    pipelines = {stage: build(stage) for stage in todo if stage not in BUILT_IN_TURN}
    reports = {}
    for stage in stages:
        directory = stage_dir(run_dir, stage)
        if stage not in todo:
            reports[stage] = {**_stage_metrics(directory), "ran": False}
            continue
        if stage in ("extract", "prune"):  # done whole or not at all: a killed run's files are leftovers
            files.delete(directory)
        pipeline = pipelines.pop(stage) if stage in pipelines else build(stage)
        reports[stage] = {**run_built(pipeline, directory, finished_work(stage, directory)), "ran": True}
        _mark_done(directory, stage)
    report = {
        "runner": runner,
        "seconds": round(time.time() - started, 3),
        "counters": dict(sorted((name, n) for r in reports.values() for name, n in r["counters"].items())),
        "stages": {stage: {"seconds": r.get("seconds"), "ran": r["ran"]} for stage, r in reports.items()},
    }
    write_metrics(run_dir, report)
    return report
