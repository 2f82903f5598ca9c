"""Fail fast on a remote filesystem that cannot be used: an hdfs:// or s3:// input or output whose
options are missing or whose server does not answer stops the command before any job is built,
with a message naming the options (transforms/files.py `unreachable`, options.filesystem_problems).
And `crawl2clip run` refuses a remote --output for stages that write local folders only."""

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


def test_run_refuses_a_remote_output_for_the_stages_that_write_local_folders_only():
    options = Crawl2ClipOptions(["--input", "crawl.warc.gz", "--output-dir", "hdfs://data/run"])
    assert options.run_stages() == ["extract", "download", "score"]
    (problem,) = options.validate_run()
    assert problem == ("--output hdfs://data/run: the score stage cannot write there yet (only extract and "
                       "download read and write hdfs://, s3://, gs://); give --stop-after download, or a local --output")
    options = Crawl2ClipOptions(["--input", "crawl.warc.gz", "--output-dir", "hdfs://data/run", "--prune",
                                 "--keep-fraction", "0.5"])
    assert "the score and prune stages cannot write there yet" in options.validate_run()[0]
    options = Crawl2ClipOptions(["--input", "crawl.warc.gz", "--output-dir", "hdfs://data/run", "--stop-after",
                                 "download", "--prune"])
    assert options.run_stages() == ["extract", "download"]
    assert options.validate_run() == []
    local = Crawl2ClipOptions(["--input", "crawl.warc.gz", "--output-dir", "/data/run", "--stop-after", "extract"])
    assert local.run_stages() == ["extract"] and local.validate_run() == []


@pytest.mark.parametrize("flags, validate, expected", [
    (["--input", "hdfs://data/download", "--output-dir", "/tmp/score"], Crawl2ClipOptions.validate_score,
     "--input hdfs://data/download: the score stage reads and writes local folders only, for now"),
    (["--input", "/tmp/score", "--output-dir", "s3://bucket/prune", "--keep-fraction", "0.5"],
     Crawl2ClipOptions.validate_prune, "--output s3://bucket/prune: the prune stage reads and writes local folders "
                                       "only, for now"),
    (["--embeddings", "hdfs://data/score", "--output-dir", "/tmp/index"], Crawl2ClipOptions.validate_index,
     "--embeddings hdfs://data/score: the index stage reads and writes local folders only, for now"),
])
def test_stages_that_write_local_folders_only_refuse_other_filesystems(flags, validate, expected):
    assert validate(Crawl2ClipOptions(flags)) == [expected]
