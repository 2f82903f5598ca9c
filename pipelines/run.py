"""Runs a built pipeline and collects what it counted, on any runner."""

import json
import logging
import time
from collections.abc import Callable

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineState

from crawl2clip.pipelines.resume import merge
from crawl2clip.transforms import files

_LOG = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"
_SYSTEM_METRICS = ("beam:metric:", ":beam:metric:")  # Beam's own, with or without a namespace


class PipelineFailed(RuntimeError):
    pass


def with_default_runner(argv: list[str]) -> list[str]:
    """DirectRunner unless the user chose a runner: an unset runner lets Beam try to download
    its Prism runner, which a machine without internet cannot do."""
    if any(arg == "--runner" or arg.startswith("--runner=") for arg in argv):
        return argv
    return ["--runner=DirectRunner", *argv]


def counters(result) -> dict[str, int]:
    """'namespace:name' -> value, summed over the steps that share a counter. Committed values
    where the runner has them, attempted ones otherwise (portable runners report only those).
    The runner's own system metrics (Flink reports element counts, bundle times) are left out:
    the same run counts the same on every runner."""
    totals: dict[str, int] = {}
    for metric in result.metrics().query(MetricsFilter())["counters"]:
        value = metric.committed if metric.committed is not None else metric.attempted
        key = f"{metric.key.metric.namespace}:{metric.key.metric.name}"
        if key.startswith(_SYSTEM_METRICS):
            continue
        totals[key] = totals.get(key, 0) + int(value or 0)
    return dict(sorted(totals.items()))


def run_pipeline(options: PipelineOptions, build: Callable[[beam.Pipeline], None], report_dir: str,
                 carried: dict[str, int] | None = None) -> dict:
    """Builds, runs and waits; writes `report_dir/metrics.json` and returns it as a dict.
    `carried`: the counters of work an earlier run finished into `report_dir` (pipelines/resume.py),
    merged into the report's counters; this run's own are kept as `this_run`."""
    pipeline = beam.Pipeline(options=options)
    build(pipeline)
    return run_built(pipeline, report_dir, carried)


def run_built(pipeline: beam.Pipeline, report_dir: str, carried: dict[str, int] | None = None) -> dict:
    """Runs a pipeline built earlier, as `run_pipeline` does."""
    started = time.time()
    runner = pipeline.options.view_as(StandardOptions).runner  # portable runners clear it when the job starts
    result = pipeline.run()
    state = result.wait_until_finish()
    if state != PipelineState.DONE:
        raise PipelineFailed(f"the pipeline ended in state {state}")
    report = {
        "runner": runner,
        "seconds": round(time.time() - started, 3),
        "counters": counters(result),
    }
    if carried:
        report.update(counters=merge(report["counters"], carried), this_run=report["counters"], carried=carried)
    write_metrics(report_dir, report)
    return report


def write_metrics(report_dir: str, report: dict) -> None:
    """`report_dir/metrics.json`, local or on any Beam filesystem, replacing an earlier one."""
    files.write_atomic(files.join(report_dir, METRICS_FILE), json.dumps(report, indent=2).encode())
