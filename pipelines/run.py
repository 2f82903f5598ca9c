"""Runs a built pipeline and collects what it counted, on any runner."""

import json
import logging
import os
import time
from collections.abc import Callable

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.runners.runner import PipelineState

_LOG = logging.getLogger(__name__)


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
    where the runner has them, attempted ones otherwise (portable runners report only those)."""
    totals: dict[str, int] = {}
    for metric in result.metrics().query(MetricsFilter())["counters"]:
        value = metric.committed if metric.committed is not None else metric.attempted
        key = f"{metric.key.metric.namespace}:{metric.key.metric.name}"
        totals[key] = totals.get(key, 0) + int(value or 0)
    return dict(sorted(totals.items()))


def run_pipeline(options: PipelineOptions, build: Callable[[beam.Pipeline], None], report_dir: str) -> dict:
    """Builds, runs and waits; writes `report_dir/metrics.json` and returns it as a dict."""
    started = time.time()
    pipeline = beam.Pipeline(options=options)
    build(pipeline)
    result = pipeline.run()
    state = result.wait_until_finish()
    if state != PipelineState.DONE:
        raise PipelineFailed(f"the pipeline ended in state {state}")
    report = {
        "runner": options.view_as(StandardOptions).runner,
        "seconds": round(time.time() - started, 3),
        "counters": counters(result),
    }
    with FileSystems.create(os.path.join(report_dir, "metrics.json")) as out:
        out.write(json.dumps(report, indent=2).encode())
    return report
