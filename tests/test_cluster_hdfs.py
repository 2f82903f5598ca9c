"""`crawl2clip extract` with its input and output on a real HDFS (deploy/cluster.sh hdfs start) gives
the rows of a run on local files: on DirectRunner, and on Flink (2 TaskManagers, EXTERNAL workers),
whose workers reach the HDFS through the pipeline's --hdfs_* options."""

import os
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crawl2clip.pipelines.cli import main
from crawl2clip.transforms import files

pytest_plugins = ["tests.cluster_fixtures"]
pytestmark = pytest.mark.cluster


def extract(inputs: str, output: str, *extra: str) -> None:
    assert main(["extract", "--input", inputs, "--output", output, *extra]) == 0


def rows(output: str, folder: str, archives: str) -> set[tuple]:
    """The rows of OUTPUT/FOLDER/*.parquet, read through the file layer; archive paths (the
    `source` column, some error details) name their folder ARCHIVES."""
    parts = files.match(files.join(output, folder, "*.parquet"))
    assert parts, f"no parquet files in {files.join(output, folder)}"
    tables = []
    for part in parts:
        with files.open_read(part) as f:
            tables.append(pq.read_table(f))
    return {
        tuple(sorted((k, v.replace(archives, "ARCHIVES") if isinstance(v, str) else v) for k, v in row.items()))
        for row in pa.concat_tables(tables).to_pylist()
    }


@pytest.fixture(scope="module")
def local_output(warc_dir, tmp_path_factory) -> str:
    output = str(tmp_path_factory.mktemp("local"))
    extract(os.path.join(warc_dir, "*"), output)
    return output


@pytest.fixture
def hdfs_archives(hdfs_dir, warc_dir) -> str:
    """The shared real archives, copied into the HDFS through the file layer."""
    folder = files.join(hdfs_dir, "warc")
    for name in sorted(os.listdir(warc_dir)):
        with open(os.path.join(warc_dir, name), "rb") as f:
            files.write_atomic(files.join(folder, name), f.read())
    return folder


def assert_same_rows(output: str, archives: str, local_output: str, warc_dir: str) -> None:
    for folder in ("pairs", "errors"):
        assert rows(output, folder, archives) == rows(local_output, folder, warc_dir), folder
    assert len(rows(output, "pairs", archives)) == 63


def test_direct_runner_reads_and_writes_hdfs(hdfs_cluster, hdfs_dir, hdfs_archives, local_output, warc_dir):
    output = files.join(hdfs_dir, "extract")
    extract(files.join(hdfs_archives, "*"), output, *hdfs_cluster.pipeline_args)
    assert_same_rows(output, hdfs_archives, local_output, warc_dir)
    assert files.exists(files.join(output, "metrics.json"))


def test_flink_workers_read_and_write_hdfs(flink_cluster, hdfs_cluster, hdfs_dir, hdfs_archives, local_output,
                                           warc_dir):
    output = files.join(hdfs_dir, "extract")
    job_name = f"extract-hdfs-{uuid.uuid4().hex[:8]}"
    extract(files.join(hdfs_archives, "*"), output, *hdfs_cluster.pipeline_args, *flink_cluster.pipeline_args,
            "--parallelism", "2", "--job_name", job_name)
    assert_same_rows(output, hdfs_archives, local_output, warc_dir)
    job = flink_cluster.flink_job_records(name_contains=job_name)
    assert job.state == "FINISHED"
    assert job.max_active_subtasks() == 2, job.summary()
