"""`crawl2clip run`, every stage (extract, download, score, prune), on real Flink and Spark clusters
(deploy/cluster.sh), reading its input from and writing its output to a real HDFS: the output equals
a DirectRunner run of the same input on local files, row for row. Flink (2 TaskManagers x 1 slot,
EXTERNAL worker pool) must have used both subtasks of the download and the scoring steps, and a
download whose TaskManager is SIGKILLed half-way must finish, with the project's restart settings,
as if nothing had happened.

The pages and images are the books-toscrape capture, served at their original URLs by the replay
proxy; the CLIP is the project's tiny model."""

import json
import os
import signal
import subprocess
import tarfile
import threading
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crawl2clip.pipelines.cli import main
from crawl2clip.pipelines.replay import replay_proxy
from crawl2clip.transforms import files
from crawl2clip.transforms.download.shards import PARQUET, STATS, TAR
from crawl2clip.transforms.embeddings import list_parts, load_embeddings, read_metadata
from crawl2clip.transforms.prune.outputs import KEPT
from tests import cluster_fixtures
from tests.test_run_end_to_end import PRUNE_FLAGS, STAGE_FLAGS

pytest_plugins = ["tests.cluster_fixtures"]
pytestmark = pytest.mark.cluster

# Shards of 2 pairs: 10 download shards and scoring parts, so that both subtasks get some (shards
# go to subtasks by the hash of their number).
RUN_FLAGS = ["--prune", *[("2" if flag == "8" and STAGE_FLAGS[i - 1] == "--shard-size" else flag)
                          for i, flag in enumerate(STAGE_FLAGS)], *PRUNE_FLAGS]
EXTRACT_COLUMNS = ["uid", "URL", "TEXT", "LANGUAGE", "split"]
DOWNLOAD_COLUMNS = ["key", "uid", "status", "sha256", "width", "height"]
SCORE_SKIPPED = {"shard", "source"}  # the tar's and the archive's full paths: another filesystem


def _table(paths: list[str]) -> pa.Table:
    tables = []
    for path in paths:
        with files.open_read(path) as f:
            tables.append(pq.read_table(f))
    return pa.concat_tables(tables, promote_options="default")


def _rows(table: pa.Table, columns: list[str]) -> list[tuple]:
    return sorted(zip(*(table.column(c).to_pylist() for c in columns)))


def _member(name: str, data: bytes):
    """A sample's bytes; its JSON with `source` (the archive's path: here on HDFS, there local)
    cut to the archive's name."""
    if not name.endswith(".json"):
        return data
    record = json.loads(data)
    return {**record, "source": record["source"].rsplit("/", 1)[-1]}


def _tar_members(download_dir: str) -> dict[str, dict]:
    """Every shard's members (name -> bytes), by shard file name."""
    shards = {}
    for path in files.match(files.join(download_dir, f"*{TAR}")):
        with files.open_read(path) as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
            shards[files.split(path)[1]] = {m.name: _member(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()}
    return shards


def snapshot(run_dir: str) -> dict:
    """What a run wrote, read back through the file layer with each format's own reader."""
    extract = _table(files.match(files.join(run_dir, "extract", "pairs", f"*{PARQUET}")))
    download_dir = files.join(run_dir, "download")
    downloads = _table(files.match(files.join(download_dir, f"*{PARQUET}")))
    score_dir = files.join(run_dir, "score")
    metadata = read_metadata(score_dir)
    columns = [c for c in metadata.column_names if c not in SCORE_SKIPPED]
    embeddings = {}
    for part in list_parts(score_dir):
        uids = _table([part.metadata]).column("uid").to_pylist()
        for name, path in (("image", part.img_emb), ("text", part.text_emb)):
            for uid, vector in zip(uids, np.asarray(load_embeddings(path), dtype=np.float32)):
                embeddings[(name, uid)] = vector
    with files.open_read(files.join(run_dir, "prune", KEPT)) as f:
        kept = pq.read_table(f)
    return {
        "pairs": _rows(extract, EXTRACT_COLUMNS),
        "downloads": _rows(downloads, DOWNLOAD_COLUMNS),
        "tars": _tar_members(download_dir),
        "metadata": _rows(metadata, ["uid", *[c for c in columns if c != "uid"]]),
        "metadata_columns": ["uid", *[c for c in columns if c != "uid"]],
        "embeddings": embeddings,
        "kept": sorted(kept.column("uid").to_pylist()),
        "counters": files.read_marker(files.join(run_dir, "metrics.json"))["counters"],
        "funnel": {step["step"]: step["count"] for step in files.read_marker(files.join(run_dir, "report.json"))["funnel"]},
    }


def _same_value(x, y) -> bool:
    if isinstance(x, float) and isinstance(y, float):
        return (np.isnan(x) and np.isnan(y)) or abs(x - y) <= 1e-3
    return x == y


def assert_same_run(got: dict, expected: dict) -> None:
    assert got["pairs"] == expected["pairs"] and len(got["pairs"]) >= 19
    assert got["downloads"] == expected["downloads"]
    assert got["tars"] == expected["tars"]  # image and caption bytes, each sample's JSON
    assert len(got["metadata"]) == len(expected["metadata"]) == len(got["pairs"])
    for a, b in zip(got["metadata"], expected["metadata"]):  # floats: the same model in another process
        differ = [(got["metadata_columns"][i], x, y) for i, (x, y) in enumerate(zip(a, b)) if not _same_value(x, y)]
        assert not differ, (a[0], differ)
    assert got["embeddings"].keys() == expected["embeddings"].keys()
    for key, vector in expected["embeddings"].items():
        np.testing.assert_allclose(got["embeddings"][key], vector, atol=2e-3, err_msg=str(key))
    assert got["kept"] == expected["kept"] and 0 < len(got["kept"]) < len(got["pairs"])
    assert got["funnel"] == expected["funnel"]
    assert got["counters"] == expected["counters"]


@pytest.fixture(scope="module")
def direct_run(books, tmp_path_factory) -> dict:
    run_dir = str(tmp_path_factory.mktemp("direct") / "run")
    with replay_proxy(books) as (proxy, _):
        assert main(["run", "--input", books, "--output", run_dir, "--proxy", proxy, *RUN_FLAGS]) == 0
    return snapshot(run_dir)


@pytest.fixture
def hdfs_books(books, hdfs_dir) -> str:
    return files.upload(books, files.join(hdfs_dir, "input", "books-toscrape.warc"))


def run_on_cluster(books: str, hdfs_input: str, run_dir: str, cluster_args: list[str], *extra: str,
                   latency: float = 0.0, requested: list | None = None) -> int:
    with replay_proxy(books, latency=latency) as (proxy, asked):
        if requested is not None:
            requested.append(asked)
        return main(["run", "--input", hdfs_input, "--output", run_dir, "--proxy", proxy,
                     *RUN_FLAGS, *cluster_args, *extra])


def test_flink_run_on_hdfs_equals_direct_runner_and_both_subtasks_work(
        flink_cluster, hdfs_cluster, books, hdfs_books, hdfs_dir, direct_run):
    job_name = f"run-{uuid.uuid4().hex[:8]}"
    run_dir = files.join(hdfs_dir, "run")
    assert run_on_cluster(books, hdfs_books, run_dir, [*flink_cluster.pipeline_args, *hdfs_cluster.pipeline_args,
                                                       "--parallelism", "2", "--job_name", job_name]) == 0
    assert_same_run(snapshot(run_dir), direct_run)
    # The steps that fetch the images and run the CLIP: records went into both subtasks, on both
    # TaskManagers.
    for stage, step in (("download", "DownloadShard"), ("score", "ScoreWithClip")):
        job = flink_cluster.flink_job_records(name_contains=f"{job_name}-{stage}")
        assert job.state == "FINISHED", job.summary()
        working = [v for v in job.vertices if step in v.name]
        assert working and all(v.parallelism == 2 for v in working), job.summary()
        assert max(sum(s["read_records"] > 0 for s in v.subtasks) for v in working) == 2, job.summary()
        assert max(len(v.active_taskmanagers()) for v in working) == 2, job.summary()


def test_spark_run_on_hdfs_equals_direct_runner(spark_cluster, hdfs_cluster, books, hdfs_books, hdfs_dir, direct_run):
    run_dir = files.join(hdfs_dir, "run")
    assert run_on_cluster(books, hdfs_books, run_dir, [*spark_cluster.pipeline_args, *hdfs_cluster.pipeline_args]) == 0
    assert_same_run(snapshot(run_dir), direct_run)
    finished = [app for app in spark_cluster.spark_applications()["completed"] if app.get("state") == "FINISHED"]
    assert len(finished) >= 4  # one application per stage


def _taskmanager_jvm(name: str) -> int:
    """The pid of a TaskManager's JVM (deploy/cluster.sh records its process group's leader)."""
    with open(os.path.join(cluster_fixtures.RUN_DIR, f"{name}.pid")) as f:
        leader = int(f.read().split()[0])
    for pid in cluster_fixtures._group_members(leader, 0):
        if "TaskManagerRunner" in cluster_fixtures._cmdline(pid):
            return pid
    raise LookupError(f"no TaskManager JVM in process group {leader}")


def test_a_download_survives_a_killed_taskmanager(flink_cluster, hdfs_cluster, books, hdfs_books, hdfs_dir,
                                                 direct_run):
    """SIGKILL a TaskManager's JVM while images are being fetched (each held back 3 s by the
    proxy); Flink restarts the job (deploy/cluster.sh's restart strategy) once `flink revive` has
    brought a TaskManager back, as Kubernetes would; the shards equal an undisturbed run's."""
    job_name = f"kill-{uuid.uuid4().hex[:8]}"
    run_dir = files.join(hdfs_dir, "run")
    requested: list = []
    outcome: dict = {}

    def run() -> None:
        outcome["rc"] = run_on_cluster(books, hdfs_books, run_dir,
                                       [*flink_cluster.pipeline_args, *hdfs_cluster.pipeline_args,
                                        "--parallelism", "2", "--job_name", job_name],
                                       "--stop-after", "download", latency=3.0, requested=requested)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 300
        while not (requested and any("/media/" in url for url in requested[0])):
            assert runner.is_alive() and time.monotonic() < deadline, f"no image was requested: {outcome}"
            time.sleep(0.2)
        killed = _taskmanager_jvm("flink-taskmanager-1")
        os.kill(killed, signal.SIGKILL)
        # A supervisor restarts a container once it has exited; a SIGKILLed JVM takes a moment to.
        deadline = time.monotonic() + 60
        while cluster_fixtures._proc_stat(killed) is not None:
            assert time.monotonic() < deadline, f"the TaskManager JVM {killed} outlived SIGKILL for 60 s"
            time.sleep(0.1)
        revived = subprocess.run(["bash", str(cluster_fixtures.CLUSTER_SH), "flink", "revive"],
                                 capture_output=True, text=True, timeout=600)
        assert revived.returncode == 0, revived.stderr
        assert "1 TaskManager(s) started again and registered: flink-taskmanager-1" in revived.stderr, revived.stderr
        runner.join(600)
        assert not runner.is_alive(), "the run did not end within 10 minutes of the TaskManager's revival"
    finally:
        cluster_fixtures.flink_cancel_jobs(flink_cluster.rest_url, job_name)
    assert outcome.get("rc") == 0, outcome

    job = cluster_fixtures.flink_find_job(flink_cluster.rest_url, f"{job_name}-download")
    detail = flink_cluster.rest(f"/jobs/{job['jid']}")
    assert detail["state"] == "FINISHED"
    exceptions = flink_cluster.rest(f"/jobs/{job['jid']}/exceptions")
    assert exceptions.get("exceptionHistory", {}).get("entries"), "the job never saw the TaskManager die"

    download_dir = files.join(run_dir, "download")
    shards = _table(files.match(files.join(download_dir, f"*{PARQUET}")))
    assert _rows(shards, DOWNLOAD_COLUMNS) == direct_run["downloads"]  # no duplicate, no missing row
    assert _tar_members(download_dir) == direct_run["tars"]
    # Each shard finished once: a killed attempt's temporary files are never taken for shards.
    assert len(files.match(files.join(download_dir, f"*{STATS}"))) == len(direct_run["tars"])
