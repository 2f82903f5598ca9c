"""The download stage and `crawl2clip run` (extract + download) with input and output on a real HDFS
(deploy/cluster.sh hdfs start), on DirectRunner: the shards equal those of a run on local files
byte for byte, a resumed download redoes only unfinished shards, `--retry-failed` reads its rows
from the HDFS, and `run --stop-after download` does extract and download on HDFS and no more.

The images are the real covers of the books-toscrape capture, served at their original URLs by the
replay proxy."""

import io
import os
import tarfile
from collections import Counter

import pyarrow.parquet as pq
import pytest

from crawl2clip.pipelines.cli import main
from crawl2clip.pipelines.replay import replay_proxy
from crawl2clip.transforms import files
from crawl2clip.transforms.download.shards import (
    TAR,
    finished_shards,
    read_shard_table,
    read_stats,
    shard_file,
    stats_path,
)
from crawl2clip.transforms.download.transform import RETRYABLE_STATUSES

pytest_plugins = ["tests.cluster_fixtures"]
pytestmark = pytest.mark.cluster

SHARDS = ["--shard-size", "8"]  # 19 pairs: 3 shards
TIMINGS = ("start_time", "end_time", "seconds")


def images(requested: list[str]) -> Counter:
    """The image URLs asked for (the rest: robots.txt and TDMRep's well-known file)."""
    return Counter(url for url in requested if "/media/" in url)


@pytest.fixture(scope="module")
def local_pairs(books, tmp_path_factory) -> str:
    output = str(tmp_path_factory.mktemp("extract"))
    assert main(["extract", "--input", books, "--output", output]) == 0
    return output


@pytest.fixture(scope="module")
def local_download(books, local_pairs, tmp_path_factory) -> str:
    output = str(tmp_path_factory.mktemp("download"))
    with replay_proxy(books) as (proxy, _):
        assert main(["download", "--input", os.path.join(local_pairs, "pairs", "*.parquet"), "--output", output,
                     "--proxy", proxy, *SHARDS]) == 0
    return output


@pytest.fixture
def hdfs_pairs(hdfs_dir, local_pairs) -> str:
    """The candidate pairs, copied into the HDFS through the file layer."""
    for path in files.match(os.path.join(local_pairs, "pairs", "*.parquet")):
        files.write_atomic(files.join(hdfs_dir, "pairs", os.path.basename(path)), files.read_bytes(path))
    return files.join(hdfs_dir, "pairs", "*.parquet")


def shards(folder: str) -> dict[int, dict]:
    """Every finished shard, read back through the download layout: its parquet rows, its tar's
    bytes and members (read with tarfile), its stats without the timings."""
    found = {}
    for shard in sorted(finished_shards(folder)):
        tar = files.read_bytes(shard_file(folder, shard, TAR))
        with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as archive:
            members = {member.name: archive.extractfile(member).read() for member in archive}
        stats = {k: v for k, v in read_stats(folder, shard).items() if k not in TIMINGS}
        found[shard] = {"rows": read_shard_table(folder, shard).to_pylist(), "tar": tar, "members": members,
                        "stats": stats}
    return found


def assert_same_shards(output: str, local_download: str, archive: tuple[str, str] | None = None) -> None:
    """The shards in `output` equal the local run's. `archive`: (its path here, the local run's),
    where the pairs name the archive they came from (their `source`, in the parquet and in each
    sample's JSON member): then the tars are compared member by member."""
    got, expected = shards(output), shards(local_download)
    assert sorted(got) == [0, 1, 2]
    if archive:
        for shard in got.values():
            shard["rows"] = [{**row, "source": row["source"].replace(*archive)} for row in shard["rows"]]
            shard["members"] = {name: data.replace(*(path.encode() for path in archive))
                                for name, data in shard["members"].items()}
        for shard in (*got.values(), *expected.values()):
            del shard["tar"], shard["stats"]["tar_bytes"]  # the JSON members' sizes differ
    assert got == expected
    rows = [row for shard in got.values() for row in shard["rows"]]
    successes = [row for row in rows if row["status"] == "success"]
    assert len(rows) == 19 and len(successes) == 17 and all(row["sha256"] for row in successes)
    members = {name: data for shard in got.values() for name, data in shard["members"].items()}
    for row in successes:
        assert members[f"{row['key']}.txt"].decode() == row["TEXT"]
        assert members[f"{row['key']}.jpg"][:3] == b"\xff\xd8\xff"  # a JPEG
    assert files.match(files.join(output, ".*")) == []  # no temporary file left behind


def test_download_from_and_to_hdfs_equals_the_local_run(hdfs_cluster, hdfs_dir, hdfs_pairs, books, local_download,
                                                       tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an hdfs:// path taken for a local one would show up here
    output = files.join(hdfs_dir, "download")
    with replay_proxy(books) as (proxy, requested):
        assert main(["download", "--input", hdfs_pairs, "--output", output, "--proxy", proxy, *SHARDS,
                     *hdfs_cluster.pipeline_args]) == 0
    assert sum(images(requested).values()) == len(images(requested)) == 19  # every image once
    assert_same_shards(output, local_download)
    assert files.read_marker(files.join(output, "metrics.json"))["counters"]["download:images"] == 17
    assert os.listdir(tmp_path) == []

    # Resume: shard 1 as a crash leaves it (stale tar, no stats, a killed attempt's temporary).
    shard_urls = [row["URL"] for row in read_shard_table(output, 1).to_pylist()]
    files.delete(stats_path(output, 1))
    files.write_atomic(shard_file(output, 1, TAR), b"stale bytes of an attempt that died")
    files.write_atomic(files.join(output, f".{os.path.basename(shard_file(output, 1, TAR))}.tmp-killed"), b"half")
    with replay_proxy(books) as (proxy, requested):
        assert main(["download", "--input", hdfs_pairs, "--output", output, "--proxy", proxy, *SHARDS,
                     *hdfs_cluster.pipeline_args]) == 0
    assert images(requested) == Counter(shard_urls)  # only shard 1 again
    assert_same_shards(output, local_download)
    metrics = files.read_marker(files.join(output, "metrics.json"))
    assert metrics["this_run"]["download:shards_already_done"] == 2
    assert metrics["counters"]["download:images"] == 17 and metrics["counters"]["download:shards"] == 3


def test_retry_failed_reads_its_rows_from_hdfs(hdfs_cluster, hdfs_dir, hdfs_pairs, books, local_download):
    """A server that answers 503 to every image, then `--retry-failed` of that HDFS folder."""
    busy = files.join(hdfs_dir, "busy")
    with replay_proxy(books, max_requests=2) as (proxy, _):  # robots.txt and tdmrep.json, then 503s
        assert main(["download", "--input", hdfs_pairs, "--output", busy, "--proxy", proxy, "--download-retries", "0",
                     *SHARDS, *hdfs_cluster.pipeline_args]) == 0
    failed = [row for shard in shards(busy).values() for row in shard["rows"]]
    assert len(failed) == 19 and {row["status"] for row in failed} == {"http_503"} <= set(RETRYABLE_STATUSES)

    retried = files.join(hdfs_dir, "retried")
    with replay_proxy(books) as (proxy, _):
        assert main(["download", "--retry-failed", busy, "--output", retried, "--proxy", proxy, *SHARDS,
                     *hdfs_cluster.pipeline_args]) == 0
    columns = ("key", "uid", "URL", "TEXT", "status", "sha256", "width", "height")
    got, expected = shards(retried), shards(local_download)
    assert {n: [tuple(r[c] for c in columns) for r in s["rows"]] for n, s in got.items()} == \
        {n: [tuple(r[c] for c in columns) for r in s["rows"]] for n, s in expected.items()}
    assert {n: s["tar"] for n, s in got.items()} == {n: s["tar"] for n, s in expected.items()}


def test_run_extract_and_download_on_hdfs(hdfs_cluster, hdfs_dir, books, local_pairs, local_download):
    warc = files.join(hdfs_dir, "crawl", "books-toscrape.warc")
    with open(books, "rb") as f:
        files.write_atomic(warc, f.read())
    run_dir = files.join(hdfs_dir, "run")
    argv = ["run", "--input", warc, "--output", run_dir, *SHARDS, *hdfs_cluster.pipeline_args]

    with replay_proxy(books) as (proxy, requested):
        assert main([*argv, "--proxy", proxy, "--stop-after", "download"]) == 0
    assert len(images(requested)) == 19
    assert_same_shards(files.join(run_dir, "download"), local_download, (warc, books))

    def pairs(folder: str) -> list[dict]:
        rows = []
        for path in files.match(files.join(folder, "pairs", "*.parquet")):
            with files.open_read(path) as f:
                rows.extend({**row, "source": row["source"].replace(warc, books)} for row in pq.read_table(f).to_pylist())
        return sorted(rows, key=lambda row: row["uid"])

    assert pairs(files.join(run_dir, "extract")) == pairs(local_pairs)
    for stage in ("extract", "download"):
        assert files.read_marker(files.join(run_dir, stage, "_SUCCESS"))["stage"] == stage
    metrics = files.read_marker(files.join(run_dir, "metrics.json"))
    assert metrics["counters"]["extract:unique_pairs"] == 19 and metrics["counters"]["download:images"] == 17
    assert list(metrics["stages"]) == ["extract", "download"]
    report = files.read_marker(files.join(run_dir, "report.json"))
    assert {step["step"]: step["count"] for step in report["funnel"]}["downloaded"] == 17
    assert b"<html" in files.read_bytes(files.join(run_dir, "report.html"))

    # A rerun finds both stages finished: nothing is redone, nothing fetched.
    with replay_proxy(books) as (proxy, requested):
        assert main([*argv, "--proxy", proxy, "--stop-after", "download"]) == 0
    assert requested == []
    assert files.read_marker(files.join(run_dir, "metrics.json"))["stages"]["download"]["ran"] is False
