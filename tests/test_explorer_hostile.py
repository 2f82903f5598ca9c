"""The explorer under hostile requests, on a real index and real servers on 127.0.0.1.

* The 10 MiB body cap holds for bodies without Content-Length (chunked JSON, chunked multipart
  uploads): 413, while the `crawl2clip serve` process's memory grows by far less than the body
  and no temporary file of it appears.
* Filters on every metadata column, `hash` (int64, beyond float precision) included: the right
  rows or a 400 naming the column, never a 500; the same in `crawl2clip subset`.
"""

import io
import os
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest
import requests

from crawl2clip.explorer.server import MAX_BODY_BYTES
from crawl2clip.pipelines.cli import main as cli_main
from tests.test_explorer import ROOT, _free_port, built, server  # noqa: F401  (module fixtures)

MIB = 2**20
BODY_BYTES = 40 * MIB  # four times the cap


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def _largest_file_under(pid: int, folder: str) -> int:
    """Size of the largest regular file the process holds open under `folder` (temporary files
    included: Python's are unlinked at once, but stay reachable through /proc/PID/fd)."""
    largest = 0
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            if os.readlink(os.path.join(fd_dir, name)).startswith(folder):
                largest = max(largest, os.stat(os.path.join(fd_dir, name)).st_size)
        except OSError:  # closed meanwhile
            continue
    return largest


class _Watch:
    """Samples the server's resident memory and its temporary files while a request runs."""

    def __init__(self, pid: int, temp_dir: str):
        self.pid, self.temp_dir = pid, temp_dir
        self.peak_rss_kib = self.largest_temp_file = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            self.peak_rss_kib = max(self.peak_rss_kib, _status_kib(self.pid, "VmRSS"))
            self.largest_temp_file = max(self.largest_temp_file, _largest_file_under(self.pid, self.temp_dir))
            time.sleep(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def served(built, tmp_path_factory):
    """`crawl2clip serve` in its own process (its memory is measured), temporary files in a folder
    of its own."""
    temp_dir = str(tmp_path_factory.mktemp("server-tmp"))
    port = _free_port()
    register = (f"import open_clip; open_clip.add_model_config({built['config_dir']!r}); " if built["config_dir"] else "")
    code = register + f"from crawl2clip.pipelines.cli import main; main(['serve', {built['index_dir']!r}, '--port', '{port}'])"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, env={**os.environ, "TMPDIR": temp_dir})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                requests.get(url + "/api/info", timeout=2)
                break
            except requests.ConnectionError:
                assert process.poll() is None and time.time() < deadline, process.stdout.read().decode()
                time.sleep(0.3)
        yield {"url": url, "pid": process.pid, "temp_dir": temp_dir}
    finally:
        process.terminate()
        process.wait(timeout=10)


def _chunks(total: int, piece: bytes = b" " * MIB, head: bytes = b""):
    """A body of `total` bytes in 1 MiB chunks; a generator, so requests sends it chunked."""
    yield head
    sent = len(head)
    while sent < total:
        chunk = piece[: total - sent]
        sent += len(chunk)
        yield chunk


def _warm_up(served) -> int:
    """One normal search first (lazy imports, the query model), then the resident memory."""
    assert requests.post(served["url"] + "/api/search", json={"text": "a cat", "k": 3}, timeout=60).status_code == 200
    return _status_kib(served["pid"], "VmRSS")


def test_a_chunked_json_body_over_the_cap_is_refused_as_it_arrives(served):
    before = _warm_up(served)
    with _Watch(served["pid"], served["temp_dir"]) as watch:
        response = requests.post(served["url"] + "/api/search", data=_chunks(BODY_BYTES, head=b'{"text": "'),
                                 headers={"Content-Type": "application/json"}, timeout=120)
    assert response.status_code == 413
    assert "limited to" in response.json()["error"]
    assert "content-length" not in response.request.headers  # it really was sent without one
    grown = (watch.peak_rss_kib - before) * 1024
    assert grown < BODY_BYTES / 2, f"the server grew by {grown / MIB:.1f} MiB for a {BODY_BYTES / MIB:.0f} MiB body"


def test_a_chunked_upload_over_the_cap_is_refused_before_it_is_spooled(served):
    before = _warm_up(served)
    boundary = "c2cboundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + b"\xff\xd8\xff"
    with _Watch(served["pid"], served["temp_dir"]) as watch:
        response = requests.post(served["url"] + "/api/search/image", data=_chunks(BODY_BYTES, b"\0" * MIB, head),
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}, timeout=120)
    assert response.status_code == 413 and "limited to" in response.json()["error"]
    grown = (watch.peak_rss_kib - before) * 1024
    assert grown < BODY_BYTES / 2, f"the server grew by {grown / MIB:.1f} MiB for a {BODY_BYTES / MIB:.0f} MiB upload"
    assert watch.largest_temp_file < MAX_BODY_BYTES  # nothing of the body was spooled to disk
    assert os.listdir(served["temp_dir"]) == []


def test_a_chunked_body_within_the_cap_is_served(served, built):
    body = b'{"text": "a red circle", "k": 4, "dedup": false}'
    response = requests.post(served["url"] + "/api/search", data=_chunks(len(body) + 2 * MIB, b" " * MIB, body),
                             headers={"Content-Type": "application/json"}, timeout=60)
    assert response.status_code == 200, response.text
    assert len(response.json()["results"]) == 4
    with open(os.path.join(ROOT, "..", "shared", "data", "photos", "389_535.jpg"), "rb") as f:
        photo = f.read()
    upload = requests.post(served["url"] + "/api/search/image", files={"image": ("motel.jpg", photo, "image/jpeg")},
                           data={"k": "1"}, timeout=60)
    assert upload.status_code == 200 and upload.json()["results"][0]["TEXT"] == "a rusty motel sign"


# --- filters on every column type -------------------------------------------------------------

def _hashes(server) -> list[int]:
    return server["store"].metadata["hash"].to_pylist()


def test_hash_filters_compare_exactly_in_int64(server):
    hashes = _hashes(server)
    assert any(abs(h) > 2**53 for h in hashes)  # beyond what a float64 holds exactly
    target = sorted(hashes)[len(hashes) // 2]
    for expression, expected in ((f"hash={target}", {i for i, h in enumerate(hashes) if h == target}),
                                 ("hash<0", {i for i, h in enumerate(hashes) if h < 0}),
                                 (f"hash>={target}", {i for i, h in enumerate(hashes) if h >= target})):
        response = requests.post(server["url"] + "/api/subset", json={"filters": [expression]}, timeout=30)
        assert response.status_code == 200, (expression, response.text)
        rows = pq.read_table(io.BytesIO(response.content))
        assert set(rows["hash"].to_pylist()) == {hashes[i] for i in expected}, expression
        assert rows.num_rows == len(expected)
        search = requests.post(server["url"] + "/api/search",
                               json={"text": "a cat", "k": 500, "dedup": False, "filters": [expression]}, timeout=30)
        assert search.status_code == 200 and {r["row"] for r in search.json()["results"]} == expected


@pytest.mark.parametrize("expression, message", [
    ("hash<1.5", "hash holds whole numbers"),
    ("hash<1e30", "outside the range of hash"),
    ("hash=abc", "hash is numeric"),
])
def test_bad_hash_filters_are_400_naming_the_column(server, expression, message):
    for path, body in (("/api/search", {"text": "x", "filters": [expression]}), ("/api/subset", {"filters": [expression]})):
        response = requests.post(server["url"] + path, json=body, timeout=30)
        assert response.status_code == 400, (path, response.text)
        assert message in response.json()["error"]


def test_every_metadata_column_filters_or_is_refused_by_name(server):
    """For each column, a filter on a value some row holds: the rows holding it, or a 400 that
    names the column; never a 500."""
    metadata = server["store"].metadata
    for name in metadata.column_names:
        value = next(v for v in metadata[name].to_pylist() if v is not None and "," not in str(v))
        text = str(value).lower() if isinstance(value, bool) else str(value)
        response = requests.post(server["url"] + "/api/subset", json={"filters": [f"{name}={text}"]}, timeout=30)
        if response.status_code == 400:
            assert name in response.json()["error"]
            continue
        assert response.status_code == 200, (name, response.text)
        rows = pq.read_table(io.BytesIO(response.content))
        assert rows.num_rows == sum(v == value for v in metadata[name].to_pylist()), name


def test_subset_command_filters_on_hash_and_refuses_bad_values(built, tmp_path, capsys):
    output = tmp_path / "negative.parquet"
    assert cli_main(["subset", "--index", built["index_dir"], "--filter", "hash<0", "--output", str(output)]) == 0
    table = pq.read_table(output)
    assert table.num_rows == sum(r["hash"] < 0 for r in built["rows"]) > 0
    assert all(h < 0 for h in table["hash"].to_pylist())
    capsys.readouterr()
    assert cli_main(["subset", "--index", built["index_dir"], "--filter", "hash<0.5", "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert "hash holds whole numbers" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_subset_refuses_a_folder_as_output_and_leaves_nothing(built, tmp_path):
    folder = tmp_path / "existing"
    folder.mkdir()
    result = subprocess.run([sys.executable, "-m", "crawl2clip.pipelines.cli", "subset", "--index", built["index_dir"],
                             "--filter", "WIDTH>1", "--output", str(folder)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert f"--output {folder}: a folder is there" in result.stderr and "Traceback" not in result.stderr
    assert os.listdir(folder) == [] and os.listdir(tmp_path) == ["existing"]  # no stray .tmp


def test_subset_needs_a_query_a_filter_or_all(built, tmp_path):
    output = tmp_path / "all.parquet"
    result = subprocess.run([sys.executable, "-m", "crawl2clip.pipelines.cli", "subset", "--index", built["index_dir"],
                             "--output", str(output)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "give --query" in result.stderr and "--all" in result.stderr
    assert "Traceback" not in result.stderr and not output.exists()
    assert cli_main(["subset", "--index", built["index_dir"], "--all", "--output", str(output)]) == 0
    assert pq.read_table(output).num_rows == len(built["rows"])
