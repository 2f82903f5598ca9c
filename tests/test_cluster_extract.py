"""`crawl2clip extract` on real local Flink and Spark clusters (deploy/cluster.sh) gives exactly
the DirectRunner output, row for row. Workers run in a separate worker pool (EXTERNAL)."""

import glob
import os
import uuid

import pyarrow.parquet as pq
import pytest

from crawl2clip.pipelines.cli import main
from tests import cluster_fixtures

pytest_plugins = ["tests.cluster_fixtures"]
pytestmark = pytest.mark.cluster


def table_rows(output: str, folder: str) -> set[tuple]:
    return {tuple(sorted(r.items())) for r in pq.read_table(os.path.join(output, folder)).to_pylist()}


def extract(warc_dir: str, output: str, *extra: str) -> None:
    assert main(["extract", "--input", os.path.join(warc_dir, "*"), "--output", output, *extra]) == 0


@pytest.fixture(scope="module")
def direct_output(warc_dir, tmp_path_factory) -> str:
    output = str(tmp_path_factory.mktemp("direct"))
    extract(warc_dir, output)
    return output


def assert_same_output(output: str, direct_output: str) -> None:
    for folder in ("pairs", "errors"):
        assert table_rows(output, folder) == table_rows(direct_output, folder), folder
    assert len(table_rows(output, "pairs")) == 63


def test_flink_equals_direct_runner_and_spreads_work(flink_cluster, warc_dir, direct_output, tmp_path):
    job_name = f"extract-{uuid.uuid4().hex[:8]}"
    output = str(tmp_path / "flink")
    extract(warc_dir, output, *flink_cluster.pipeline_args, "--parallelism", "2", "--job_name", job_name)
    assert_same_output(output, direct_output)
    job = cluster_fixtures.flink_job_subtask_records(flink_cluster.rest_url, name_contains=job_name)
    assert job.state == "FINISHED"
    # The fused stage after the reshuffle reads the archives: its inputs are the file paths.
    files = len(glob.glob(os.path.join(warc_dir, "*")))
    readers = [v for v in job.vertices
               if "Extract" in v.name and sum(s["read_records"] for s in v.subtasks) == files]
    assert readers, job.summary()
    assert all(v.parallelism == 2 for v in readers)
    assert max(v.active_subtasks() for v in readers) == 2, job.summary()


def test_spark_equals_direct_runner(spark_cluster, warc_dir, direct_output, tmp_path):
    output = str(tmp_path / "spark")
    extract(warc_dir, output, *spark_cluster.pipeline_args)
    assert_same_output(output, direct_output)
    finished = [app for app in cluster_fixtures.spark_applications(spark_cluster.rest_url)["completed"]
                if app.get("state") == "FINISHED"]
    assert finished
