"""Fail fast on a remote filesystem that cannot be used: an hdfs:// or s3:// input or output whose
options are missing or whose server does not answer stops the command before any job is built,
with a message naming the options (transforms/files.py `unreachable`, options.filesystem_problems),
for every stage: each one reads and writes any Beam filesystem."""

import socket
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crawl2clip.pipelines.cli import main
from crawl2clip.pipelines.options import Crawl2ClipOptions
from crawl2clip.transforms import files


@pytest.fixture
def pairs(tmp_path) -> str:
    path = str(tmp_path / "pairs.parquet")
    pq.write_table(pa.Table.from_pylist([{"URL": "http://127.0.0.1:9/a.jpg", "TEXT": "a caption"}]), path)
    return path


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refused(argv: list[str], capsys) -> str:
    started = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - started < 15
    return capsys.readouterr().err


def test_hdfs_output_without_its_options_names_them(pairs, tmp_path, capsys):
    err = refused(["download", "--input", pairs, "--output", "hdfs://data/shards"], capsys)
    assert "--output hdfs://data/shards: give --hdfs_host, --hdfs_port, --hdfs_user" in err
    err = refused(["download", "--input", pairs, "--output", "hdfs://data/shards", "--hdfs_host", "127.0.0.1"], capsys)
    assert "give --hdfs_port, --hdfs_user" in err and "--hdfs_host," not in err


def test_hdfs_input_that_refuses_connections_fails_before_any_work(tmp_path, capsys):
    output = tmp_path / "out"
    err = refused(["download", "--input", "hdfs://data/pairs/*.parquet", "--output", str(output),
                   "--hdfs_host", "127.0.0.1", "--hdfs_port", str(closed_port()), "--hdfs_user", "someone"], capsys)
    assert "--input hdfs://data/pairs/*.parquet: cannot reach the hdfs:// filesystem (ConnectionError" in err
    assert "check --hdfs_host, --hdfs_port, --hdfs_user" in err
    assert not output.exists()  # nothing was started: not even the local output folder


def test_a_server_that_never_answers_is_given_up_on(tmp_path, capsys, monkeypatch):
    """A port that accepts connections and then says nothing (a firewall that drops, a hung
    NameNode): Beam's WebHDFS client has no timeout; the check has."""
    monkeypatch.setattr(files, "REACH_TIMEOUT", 1.0)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
        port = silent.getsockname()[1]
        err = refused(["run", "--input", "hdfs://data/crawl/*.warc.gz", "--output", str(tmp_path / "run"),
                       "--hdfs_host", "127.0.0.1", "--hdfs_port", str(port), "--hdfs_user", "someone"], capsys)
    assert "--input hdfs://data/crawl/*.warc.gz: the hdfs:// filesystem gave no answer in 1 s" in err
    assert "check --hdfs_host, --hdfs_port, --hdfs_user" in err


def test_s3_output_that_cannot_be_reached_names_the_endpoint_option(pairs, capsys):
    err = refused(["download", "--input", pairs, "--output", "s3://bucket/shards",
                   "--s3_endpoint_url", f"http://127.0.0.1:{closed_port()}"], capsys)
    assert "--output s3://bucket/shards: cannot reach the s3:// filesystem" in err
    assert "check --s3_endpoint_url, --s3_access_key_id, --s3_secret_access_key" in err


def test_a_filesystem_beam_does_not_have_is_named(pairs, capsys):
    err = refused(["download", "--input", pairs, "--output", "nosuchfs://bucket/shards"], capsys)
    assert "--output nosuchfs://bucket/shards: cannot reach the nosuchfs:// filesystem" in err
    assert "Unable to get filesystem" in err


def test_local_paths_are_not_probed():
    assert files.unreachable("/no/such/folder") is None
    assert files.unreachable("file:///no/such/folder") is None


def test_run_takes_a_remote_output_for_every_stage():
    options = Crawl2ClipOptions(["--input", "crawl.warc.gz", "--output-dir", "hdfs://data/run", "--prune",
                                 "--keep-fraction", "0.5"])
    assert options.run_stages() == ["extract", "download", "score", "prune"]
    assert options.validate_run() == []


@pytest.mark.parametrize("argv, expected", [
    (["score", "--input", "hdfs://data/download", "--output", "OUT"], "--input hdfs://data/download: give --hdfs_host"),
    (["prune", "--input", "hdfs://data/score", "--output", "OUT", "--keep-fraction", "0.5"],
     "--input hdfs://data/score: give --hdfs_host"),
    (["index", "--input", "hdfs://data/score", "--output", "OUT"], "--input hdfs://data/score: give --hdfs_host"),
    (["prune-apply", "--input", "hdfs://data/score", "--kept", "hdfs://data/prune/kept.parquet", "--output", "OUT"],
     "--input hdfs://data/score: give --hdfs_host"),
    (["run", "--input", "crawl.warc.gz", "--output", "hdfs://data/run", "--prune"],
     "--output hdfs://data/run: give --hdfs_host"),
])
def test_every_stage_names_the_missing_filesystem_options_before_any_work(argv, expected, tmp_path, capsys):
    output = tmp_path / "out"
    err = refused([str(output) if arg == "OUT" else arg for arg in argv], capsys)
    assert expected + ", --hdfs_port, --hdfs_user" in err
    assert not output.exists()
