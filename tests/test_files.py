"""transforms/files.py, the file layer of the stages: every function on local paths, and on a real
HDFS started by deploy/cluster.sh (cluster marker); what a failed, repeated or killed write leaves."""

import json
import os
import signal
import subprocess
import sys
import urllib.parse
import urllib.request

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crawl2clip.transforms import files

pytest_plugins = ["tests.cluster_fixtures"]

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAYLOAD = bytes(range(256)) * 1200  # 300 KiB: more than one read and write buffer of the clients


@pytest.fixture(params=["local", pytest.param("hdfs", marks=pytest.mark.cluster)])
def root(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path)
    return request.getfixturevalue("hdfs_dir")


def listed(folder: str) -> list[str]:
    """Every name in a folder, dot files (temporaries) included."""
    return [path.rsplit("/", 1)[1] for path in files.match(files.join(folder, "*"))]


def test_write_then_read_exists_size_and_seek(root):
    path = files.join(root, "a", "b.bin")  # the folder is created on the way
    assert not files.exists(path)
    assert files.write_atomic(path, PAYLOAD) == path
    assert files.exists(path) and files.exists(files.join(root, "a"))
    assert files.read_bytes(path) == PAYLOAD
    assert files.size(path) == len(PAYLOAD)
    with files.open_read(path) as f:
        f.seek(1000)
        assert f.read(10) == PAYLOAD[1000:1010]
    assert listed(files.join(root, "a")) == ["b.bin"]


def test_bytes_are_written_as_they_are_whatever_the_name(root):
    path = files.join(root, "archive.warc.gz")  # not a gzip stream: nothing may decompress it
    files.write_atomic(path, b"plain bytes")
    assert files.read_bytes(path) == b"plain bytes"


def test_a_writer_function_writes_parquet_that_reads_back(root):
    table = pa.table({"uid": ["b", "a", "c"], "n": [2, 1, 3]})
    path = files.join(root, "part-0.parquet")
    files.write_atomic(path, lambda out: pq.write_table(table, out))
    with files.open_read(path) as f:
        assert pq.read_table(f).equals(table)


def test_match_sorts_and_tolerates_a_missing_folder(root):
    for name in ("c.parquet", "a.parquet", "b.parquet", "notes.json"):
        files.write_atomic(files.join(root, "parts", name), name.encode())
    parts = files.join(root, "parts")
    expected = [files.join(parts, name) for name in ("a.parquet", "b.parquet", "c.parquet")]
    assert files.match(files.join(parts, "*.parquet")) == expected
    assert files.match(files.join(parts, "notes.json")) == [files.join(parts, "notes.json")]
    assert files.match(files.join(parts, "*.tar")) == []
    assert files.match(files.join(root, "no-such-folder", "*.parquet")) == []


def test_missing_file_is_file_not_found(root):
    with pytest.raises(FileNotFoundError):
        files.read_bytes(files.join(root, "missing.bin"))
    with pytest.raises(FileNotFoundError):
        files.open_read(files.join(root, "missing.bin"))


def test_makedirs_and_delete_are_idempotent(root):
    folder = files.join(root, "x", "y")
    files.makedirs(folder)
    files.makedirs(folder)
    assert files.exists(folder)
    files.write_atomic(files.join(folder, "f.bin"), b"1")
    files.delete(files.join(root, "x"))  # a folder goes with all it holds
    assert not files.exists(files.join(root, "x"))
    files.delete(files.join(root, "x"))
    files.delete(files.join(root, "never.bin"))


def test_markers(root):
    marker = files.join(root, "stage", "_SUCCESS")
    assert not files.marker_exists(marker)
    files.write_marker(marker, {"rows": 3, "parts": ["a"]})
    assert files.marker_exists(marker)
    assert files.read_marker(marker) == {"rows": 3, "parts": ["a"]}
    files.write_marker(marker)
    assert files.read_marker(marker) == {}


def test_a_second_write_replaces_the_first_and_leaves_no_temporary(root):
    path = files.join(root, "shard.tar")
    files.write_atomic(path, b"first attempt")
    files.write_atomic(path, PAYLOAD)
    assert files.read_bytes(path) == PAYLOAD
    assert listed(root) == ["shard.tar"]


def test_a_failed_attempt_leaves_nothing_and_the_retry_commits(root):
    path = files.join(root, "shard.tar")

    def fails_half_way(out):
        out.write(PAYLOAD[: len(PAYLOAD) // 2])
        raise ConnectionError("worker lost")

    with pytest.raises(ConnectionError):
        files.write_atomic(path, fails_half_way)
    assert not files.exists(path)
    assert listed(root) == []
    files.write_atomic(path, PAYLOAD)
    assert files.read_bytes(path) == PAYLOAD
    assert listed(root) == ["shard.tar"]


def test_overlapping_attempts_only_ever_show_a_whole_file(root):
    """Attempt A is half written when attempt B (a retry of the same bundle) writes and commits
    the same file; then A finishes. The final name shows nothing, B's or A's bytes: never half."""
    path = files.join(root, "shard.tar")
    first, second = PAYLOAD, PAYLOAD[::-1]
    seen = []

    def attempt_a(out):
        out.write(first[:1000])
        seen.append(files.exists(path))
        files.write_atomic(path, second)  # attempt B, start to end
        seen.append(files.read_bytes(path))
        out.write(first[1000:])

    files.write_atomic(path, attempt_a)
    assert seen == [False, second]
    assert files.read_bytes(path) == first
    assert listed(root) == ["shard.tar"]


KILLED_WRITER = """
import sys, time
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from crawl2clip.transforms import files
FileSystems.set_options(PipelineOptions(sys.argv[2:]))
def write(out):
    out.write(b"half of it")
    out.flush()
    print("half", flush=True)
    time.sleep(120)
files.write_atomic(sys.argv[1], write)
"""


def test_a_killed_writer_leaves_no_file_under_the_final_name(root, request):
    """SIGKILL mid-write (a TaskManager dying): the final name stays free, globs of the stage's
    files do not see the leftover temporary, and the retry commits."""
    path = files.join(root, "00000.tar")
    args = request.getfixturevalue("hdfs_cluster").pipeline_args if root.startswith("hdfs://") else []
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, path, *args], cwd=REPO_ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline().strip() == "half"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    assert not files.exists(path)
    assert files.match(files.join(root, "*.tar")) == []
    files.write_atomic(path, PAYLOAD)
    assert files.match(files.join(root, "*.tar")) == [path]
    assert files.read_bytes(path) == PAYLOAD


@pytest.mark.cluster
def test_hdfs_files_are_on_the_hdfs(hdfs_cluster, hdfs_dir, tmp_path, monkeypatch):
    """Seen by WebHDFS itself, not through Beam: the file is in HDFS, whole, and nothing was
    written to a local folder named after the URL."""
    monkeypatch.chdir(tmp_path)
    path = files.join(hdfs_dir, "a", "b.bin")
    files.write_atomic(path, PAYLOAD)
    hdfs_path = urllib.parse.quote("/" + path[len("hdfs://"):])
    user = hdfs_cluster.pipeline_args[hdfs_cluster.pipeline_args.index("--hdfs_user") + 1]
    url = f"{hdfs_cluster.rest_url}/webhdfs/v1{hdfs_path}?op=GETFILESTATUS&user.name={user}"
    with urllib.request.urlopen(url) as response:
        status = json.load(response)["FileStatus"]
    assert status["type"] == "FILE" and status["length"] == len(PAYLOAD)
    assert os.listdir(tmp_path) == []


def test_local_copy_is_the_path_itself_or_one_copy_per_file(root, tmp_path, monkeypatch):
    monkeypatch.setenv("CRAWL2CLIP_CACHE", str(tmp_path / "cache"))
    path = files.write_atomic(files.join(root, "part.npy"), PAYLOAD)
    copy = files.local_copy(path)
    assert open(copy, "rb").read() == PAYLOAD
    if files.is_local(path):
        assert copy == path and not (tmp_path / "cache").exists()
    else:
        assert files.local_copy(path) == copy  # made once
        files.write_atomic(path, PAYLOAD[:1000])  # rewritten under its name with another size
        assert open(files.local_copy(path), "rb").read() == PAYLOAD[:1000]


def test_upload_commits_a_local_file_and_move_replaces(root, tmp_path):
    local = tmp_path / "built.bin"
    local.write_bytes(PAYLOAD)
    target = files.upload(str(local), files.join(root, "out", "built.bin"))
    assert files.read_bytes(target) == PAYLOAD
    other = files.write_atomic(files.join(root, "out", "other.bin"), b"other")
    files.move(other, target)  # onto an existing file: HDFS renames only onto free names
    assert files.read_bytes(target) == b"other" and not files.exists(other)
    assert not [name for name in listed(files.join(root, "out")) if files.is_temporary(name)]
    assert files.is_temporary(".built.bin.tmp-0123abcd") and not files.is_temporary("built.bin")


def test_local_copies_stay_under_the_cache_limit_least_recently_used_first(tmp_path, monkeypatch):
    """Remote files (a real HTTP server on 127.0.0.1, through transforms/httpfs.py) copied into a
    cache that holds two of them: a third evicts the least recently used one, never one handed out
    in the last two minutes (its reader is about to open it)."""
    import time

    from crawl2clip.transforms import httpfs  # noqa: F401  registers http:// with Beam's FileSystems

    try:
        from tests.http_server import serve_directory
    except ImportError:  # tests/ run as loose files
        from http_server import serve_directory

    served = tmp_path / "served"
    served.mkdir()
    for name in ("a.npy", "b.npy", "c.npy"):
        (served / name).write_bytes(PAYLOAD)
    monkeypatch.setenv("CRAWL2CLIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CRAWL2CLIP_CACHE_BYTES", str(2 * len(PAYLOAD) + len(PAYLOAD) // 2))

    def age(copy: str, seconds: float) -> None:
        os.utime(copy, (time.time() - seconds, time.time() - seconds))

    with serve_directory(served) as server:
        a, b = (files.local_copy(server.url_for(name)) for name in ("a.npy", "b.npy"))
        assert a != b and not files.is_local(server.url_for("a.npy"))
        age(a, 600)
        age(b, 300)
        assert files.local_copy(server.url_for("a.npy")) == a  # there already: used again, now
        c = files.local_copy(server.url_for("c.npy"))  # no room for three: b is the least recently used
        assert os.path.exists(a) and not os.path.exists(b) and open(c, "rb").read() == PAYLOAD
        b = files.local_copy(server.url_for("b.npy"))  # a and c were handed out just now: both stay
        assert all(os.path.exists(copy) for copy in (a, b, c))
        age(a, 600)
        age(c, 600)
        age(b, 300)
        files.local_copy(server.url_for("a.npy"))
        os.remove(b)  # a copy gone under the cache's feet is made again
        assert open(files.local_copy(server.url_for("b.npy")), "rb").read() == PAYLOAD
        assert not os.path.exists(c)  # the oldest went to make room for it
