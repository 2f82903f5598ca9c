"""Smoke tests on real local Flink and Spark clusters (deploy/cluster.sh), EXTERNAL workers.

Slow (a cluster start is ~15-30 s, a pipeline ~30-45 s on 2 cores): marked ``cluster``; deselect
with ``-m "not cluster"``.  The pipeline's functions live at module level here: the worker pool's
SDK workers unpickle them by reference, so they import ``tests.test_cluster_smoke`` (cluster.sh
puts the repo root on the pool's PYTHONPATH).
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import pytest

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:  # `tests.cluster_fixtures` must import however pytest was started
    sys.path.insert(0, _REPO)

# Registers the flink_cluster / spark_cluster fixtures (a no-op when tests/conftest.py already
# lists the same plugin).
pytest_plugins = ["tests.cluster_fixtures"]

N = 10_000


def _square_mod(x: int) -> int:
    return (x * x) % 1009


class CountAndSum(beam.CombineFn):
    def create_accumulator(self):
        return 0, 0

    def add_input(self, acc, x):
        return acc[0] + 1, acc[1] + x

    def merge_accumulators(self, accs):
        accs = list(accs)
        return sum(a[0] for a in accs), sum(a[1] for a in accs)

    def extract_output(self, acc):
        return f"{acc[0]},{acc[1]}"


def _expected() -> str:
    return f"{N},{sum(_square_mod(x) for x in range(N))}"


def _run_count_pipeline(pipeline_args: list[str], out_dir: Path, job_name: str) -> str:
    options = PipelineOptions([*pipeline_args, f"--job_name={job_name}"])
    prefix = str(out_dir / "result")
    with beam.Pipeline(options=options) as p:
        _ = (
            p
            | "Create" >> beam.Create(list(range(N)))
            | "Reshuffle" >> beam.Reshuffle()
            | "SquareMod" >> beam.Map(_square_mod)
            | "CountAndSum" >> beam.CombineGlobally(CountAndSum())
            | "Write" >> beam.io.WriteToText(prefix, shard_name_template="")
        )
    return Path(prefix).read_text().strip()


@pytest.mark.cluster
def test_flink_cluster_runs_pipeline_in_parallel(flink_cluster, tmp_path):
    job_name = f"smoke-flink-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    result = _run_count_pipeline(
        [*flink_cluster.pipeline_args, "--parallelism=2"], tmp_path, job_name
    )
    elapsed = time.monotonic() - t0
    assert result == _expected()

    stats = flink_cluster.flink_job_records(name_contains=job_name)
    print(f"pipeline took {elapsed:.1f}s on Flink\n{stats.summary()}")
    assert stats.state == "FINISHED", stats.summary()
    assert max(v.parallelism for v in stats.vertices) == 2, stats.summary()
    assert stats.max_active_subtasks() >= 2, (
        "records were processed by a single subtask only:\n" + stats.summary()
    )
    if int(flink_cluster.info.get("taskmanagers", "1")) >= 2 and flink_cluster.info.get("slots") == "1":
        assert stats.max_active_taskmanagers() >= 2, (
            "records were processed in one TaskManager only:\n" + stats.summary()
        )


@pytest.mark.cluster
def test_spark_cluster_runs_pipeline(spark_cluster, tmp_path):
    before = {a["id"] for a in spark_cluster.spark_applications()["completed"]}
    job_name = f"smoke-spark-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    result = _run_count_pipeline(spark_cluster.pipeline_args, tmp_path, job_name)
    elapsed = time.monotonic() - t0
    assert result == _expected()

    # The job server stops its SparkContext when the job is done; the master then lists the
    # application as completed (this can lag the Beam job by a moment).
    deadline = time.monotonic() + 30
    while True:
        apps = spark_cluster.spark_applications()
        new = [a for a in apps["completed"] if a["id"] not in before]
        if new or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    print(f"pipeline took {elapsed:.1f}s on Spark; new applications: {new}")
    assert new, f"no completed Spark application appeared; master reports {apps}"
    assert all(a["state"] == "FINISHED" for a in new), new
