"""The whole LAION process as one Beam pipeline (`crawl2clip run`):

    extract + language -> download -> CLIP score + content tags -> [SemDeDup + DBP prune]

Stage boundaries are files, as they were for LAION: every stage writes its own folder under
DIR (extract/, download/, score/, prune/), and the next stage starts when that output is complete
(a one-element "done" signal: a global count over what the stage wrote), then reads it back. So
the combined run writes exactly what the stages run one by one write, and a rerun into the same
DIR resumes: a finished extract is not redone (its `_SUCCESS` file), finished download shards and
scoring parts are skipped by the stages themselves, and a finished prune is kept.
"""

import glob
import json
import math
import os
import time

import apache_beam as beam

from crawl2clip.pipelines.extract import build_extract
from crawl2clip.pipelines.options import Crawl2ClipOptions
from crawl2clip.pipelines.prune import prune_single_machine
from crawl2clip.pipelines.score import score_shards
from crawl2clip.transforms.download.transform import DownloadImages
from crawl2clip.transforms.schema import CANDIDATE_SCHEMA
from crawl2clip.transforms.score.shards import download_shards

STAGES = ("extract", "download", "score", "prune")
SUCCESS_FILE = "_SUCCESS"


def stage_dir(run_dir: str, stage: str) -> str:
    return os.path.join(run_dir, stage)


def stage_options(options: Crawl2ClipOptions, **overrides) -> Crawl2ClipOptions:
    """A copy of the options with some values changed (a stage's own input and output folder)."""
    return Crawl2ClipOptions(flags=[], **{**options.get_all_options(drop_default=True), **overrides})


def is_done(run_dir: str, stage: str) -> bool:
    return os.path.exists(os.path.join(stage_dir(run_dir, stage), SUCCESS_FILE))


def _mark_done(_count: int, directory: str, stage: str) -> str:
    """Writes DIR/<stage>/_SUCCESS with the time the stage finished (the report's stage timings)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, SUCCESS_FILE)
    with open(path, "w") as f:
        json.dump({"stage": stage, "finished": time.time()}, f)
    return path


def when_complete(outputs, label: str, run_dir: str, stage: str):
    """One element once every element of `outputs` exists, after marking the stage done."""
    return (outputs
            | f"{label}Complete" >> beam.combiners.Count.Globally()
            | f"Mark{label}Done" >> beam.Map(_mark_done, stage_dir(run_dir, stage), stage))


def already_done(pipeline: beam.Pipeline, label: str):
    return pipeline | f"{label}AlreadyDone" >> beam.Create([None])


def build_end_to_end(pipeline: beam.Pipeline, options: Crawl2ClipOptions) -> None:
    run_dir = options.output_dir
    extract_dir, download_dir, score_dir, prune_dir = (stage_dir(run_dir, stage) for stage in STAGES)

    # 1. extract + language (skipped when an earlier run into DIR finished it)
    if is_done(run_dir, "extract"):
        extracted = already_done(pipeline, "Extract")
    else:
        written = build_extract(pipeline, stage_options(options, output_dir=extract_dir))
        extracted = when_complete(written, "Extract", run_dir, "extract")

    # 2. download: the candidate files once they are all written; shards finished earlier are skipped
    pair_files = extracted | "ListPairFiles" >> beam.FlatMap(
        lambda _: sorted(glob.glob(os.path.join(extract_dir, "pairs", "*.parquet"))))
    rows = pair_files | "ReadPairs" >> beam.io.ReadAllFromParquet()
    shard_size = options.shard_size
    shard_count = (rows
                   | "CountPairs" >> beam.combiners.Count.Globally()
                   | "ShardCount" >> beam.Map(lambda n: max(1, math.ceil(n / shard_size))))
    shards = rows | "DownloadImages" >> DownloadImages(
        download_dir, beam.pvalue.AsSingleton(shard_count), options.fetch_options(), options.resize_spec(),
        CANDIDATE_SCHEMA)
    downloaded = when_complete(shards, "Download", run_dir, "download")

    # 3. CLIP scores, embeddings and content tags, shard by shard; parts scored earlier are skipped
    shard_numbers = downloaded | "ListDownloadShards" >> beam.FlatMap(lambda _: download_shards(download_dir))
    parts = score_shards(shard_numbers, options, os.path.abspath(download_dir), score_dir)
    scored = when_complete(parts, "Score", run_dir, "score")

    # 4. SemDeDup + DBP on every kept pair: one global step, on one worker
    if options.prune and not is_done(run_dir, "prune"):
        settings = options.prune_settings()
        pruned = scored | "SemDeDupAndPrune" >> beam.Map(lambda _: _prune(score_dir, prune_dir, settings))
        when_complete(pruned, "Prune", run_dir, "prune")


def _prune(score_dir: str, prune_dir: str, settings) -> dict:
    """The single-machine prune: memory-bounded (it streams the memory-mapped parts) and
    counted by the same steps, with the same output, as `crawl2clip prune`'s Beam path."""
    return prune_single_machine(score_dir, prune_dir, settings)


def _stage_of(namespace: str) -> str:
    """The stage a counter belongs to: `language` counts inside extract, `score_clip` in score."""
    name = namespace.split("_")[0]
    return "extract" if name == "language" else name


def split_metrics_by_stage(run_dir: str, report: dict) -> None:
    """DIR/<stage>/metrics.json for every stage that ran, as a stage run alone writes it: its
    counters, and its seconds from the moment the previous stage finished to its own `_SUCCESS`.
    (On a resumed run a stage's counters hold only what this run did.)"""
    run_started = started = time.time() - report["seconds"]
    for stage in STAGES:
        marker = os.path.join(stage_dir(run_dir, stage), SUCCESS_FILE)
        if not os.path.exists(marker):
            continue
        with open(marker) as f:
            finished = json.load(f)["finished"]
        if finished < run_started:  # finished by an earlier run: its metrics.json stays
            continue
        counters = {k: v for k, v in report["counters"].items() if _stage_of(k.split(":")[0]) == stage}
        metrics = {"runner": report["runner"], "seconds": round(max(0.0, finished - started), 3),
                   "counters": counters}
        with open(os.path.join(stage_dir(run_dir, stage), "metrics.json"), "w") as f:
            json.dump(metrics, f, indent=2)
        started = max(started, finished)
