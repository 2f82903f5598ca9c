"""crawl2clip.transforms.httpfs against a real (sometimes hostile) HTTP server on 127.0.0.1."""

from __future__ import annotations

import gzip
import os
import random

import apache_beam as beam
import pytest
from apache_beam import coders
from apache_beam.io import fileio, source_test_utils
from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.textio import _TextSource
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from crawl2clip.transforms.httpfs import (
    HttpConfig,
    HttpFileSystem,
    HttpNotFoundError,
    HttpsFileSystem,
    HttpStatusError,
    expand_path_listing,
)

try:
    from tests.http_server import serve_directory
except ImportError:  # tests/ run as loose files (no tests/__init__.py)
    from http_server import serve_directory

WARC_DIR = "/work/shared/data/warc"
BIG = "books-toscrape.warc"  # 759 KB, uncompressed
GZ = "cc-main-2020-34-excerpt.warc.gz"  # 136 KB, one gzip member per record

pytestmark = pytest.mark.skipif(not os.path.isdir(WARC_DIR), reason=f"{WARC_DIR} not available")

FAST = HttpConfig(timeout_s=5.0, max_retries=3, backoff_base_s=0.005, backoff_max_s=0.02)


@pytest.fixture(autouse=True)
def _fast_isolated_client(monkeypatch):
    monkeypatch.setattr(HttpFileSystem, "config", FAST)
    # Requests go to 127.0.0.1 only: an inherited proxy would break them.
    for var in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)
    # Pipeline() stores its options globally in FileSystems; don't let them leak between tests.
    monkeypatch.setattr(FileSystems, "_pipeline_options", None)


@pytest.fixture
def small_buffers(monkeypatch):
    """Tiny buffers so seeks really reach the raw reader instead of the 1 MiB buffer."""
    monkeypatch.setattr(HttpFileSystem, "config", HttpConfig(**{**vars(FAST), "buffer_size": 4096, "max_skip_bytes": 2048}))


@pytest.fixture
def server():
    with serve_directory(WARC_DIR) as s:
        yield s


def local(name: str) -> bytes:
    with open(os.path.join(WARC_DIR, name), "rb") as f:
        return f.read()


def read_all(f) -> bytes:
    # CompressedFile.read() without a size raises TypeError in Beam 2.62: read in chunks.
    chunks = []
    while chunk := f.read(1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def check_random_seeks(f, data: bytes, seed: int, rounds: int = 40) -> None:
    rng = random.Random(seed)
    for _ in range(rounds):
        offset, n = rng.randrange(len(data)), rng.choice([1, 100, 5000, 70_000])
        f.seek(offset)
        assert f.tell() == offset
        assert f.read(n) == data[offset : offset + n]
        assert f.tell() == min(offset + n, len(data))


# -- registration and paths ----------------------------------------------------------------------


def test_schemes_pick_one_class_each():
    assert type(FileSystems.get_filesystem("http://example.org/a")) is HttpFileSystem
    assert type(FileSystems.get_filesystem("https://data.commoncrawl.org/a")) is HttpsFileSystem


def test_join_and_split():
    fs = HttpsFileSystem(None)
    assert fs.join("https://data.commoncrawl.org/", "/crawl-data", "x.gz") == "https://data.commoncrawl.org/crawl-data/x.gz"
    assert fs.split("https://data.commoncrawl.org/crawl-data/x.gz") == ("https://data.commoncrawl.org/crawl-data", "x.gz")
    assert fs.split("https://data.commoncrawl.org") == ("https://data.commoncrawl.org", "")


# -- reading -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [BIG, GZ, "gzip-extra-field.warc.gz", "warcreate-capture.warc"])
def test_read_is_byte_for_byte(server, name):
    with FileSystems.open(server.url_for(name), compression_type=CompressionTypes.UNCOMPRESSED) as f:
        assert f.read() == local(name)
    assert server.ranges() == ["bytes=0-"]
    assert server.requests[0].headers["User-Agent"] == "crawl2clip/0.1.0 (+https://github.com/crawl2clip)"
    assert server.requests[0].headers["Accept-Encoding"] == "identity"


def test_random_seek_and_tell(server, small_buffers):
    data = local(BIG)
    with FileSystems.open(server.url_for(BIG)) as f:
        assert f.seekable()
        check_random_seeks(f, data, seed=1)
        f.seek(100)
        f.seek(50, os.SEEK_CUR)
        assert f.read(10) == data[150:160]
        f.seek(-10, os.SEEK_END)
        assert f.read() == data[-10:]
        f.seek(len(data) + 5)
        assert f.read(10) == b""
    assert len(server.requests) <= 45  # at most one GET per random seek, none per byte


def test_short_forward_seek_reuses_the_stream(server, small_buffers):
    data = local(BIG)
    with FileSystems.open(server.url_for(BIG)) as f:
        f.read(10)
        hop = f.raw.tell() + 1000  # past the buffer, within max_skip_bytes: read and discard
        f.seek(hop)
        assert f.read(100) == data[hop : hop + 100]
        assert server.ranges() == ["bytes=0-"]
        f.seek(500_000)  # far ahead: a new ranged GET
        assert f.read(100) == data[500_000:500_100]
        f.seek(10)  # backwards: a new ranged GET
        assert f.read(100) == data[10:110]
    assert server.ranges() == ["bytes=0-", "bytes=500000-", "bytes=10-"]


@pytest.mark.parametrize("name", ["cc-main-2024-22-whirlwind.warc.gz", "single-gzip-stream.warc.gz", GZ])
def test_gzip_auto_decompresses_like_local_files(server, name):
    expected = gzip.open(os.path.join(WARC_DIR, name)).read()
    url = server.url_for(name)
    with FileSystems.open(url) as f:  # AUTO, from the .gz extension
        assert read_all(f) == expected
    with FileSystems.open(url + "?sig=abc.txt") as f:  # detection ignores the query string
        assert read_all(f) == expected
    with FileSystems.open(url, compression_type=CompressionTypes.GZIP) as f:
        assert read_all(f) == expected
    with FileSystems.open(os.path.join(WARC_DIR, name)) as f:  # same wrapper as LocalFileSystem
        assert read_all(f) == expected


def test_compressed_seek_within_http_file(server):
    expected = gzip.open(os.path.join(WARC_DIR, GZ)).read()
    with FileSystems.open(server.url_for(GZ)) as f:
        f.seek(len(expected) // 2)
        assert f.read(1000) == expected[len(expected) // 2 :][:1000]
        f.seek(10)  # backwards: CompressedFile rewinds the raw file to 0
        assert f.read(1000) == expected[10:1010]


# -- metadata ------------------------------------------------------------------------------------


def test_match_gives_size_and_metadata(server):
    url, path = server.url_for(BIG), os.path.join(WARC_DIR, BIG)
    [result] = FileSystems.match([url])
    [meta] = result.metadata_list
    assert (meta.path, meta.size_in_bytes) == (url, os.path.getsize(path))
    assert abs(meta.last_updated_in_seconds - os.path.getmtime(path)) < 1
    assert server.methods() == ["HEAD"]

    assert FileSystems.exists(url)
    assert not FileSystems.exists(server.url_for("missing.warc"))
    assert FileSystems.checksum(url).startswith('"')  # the ETag
    assert abs(FileSystems.last_updated(url) - os.path.getmtime(path)) < 1
    assert FileSystems.get_filesystem(url).size(url) == os.path.getsize(path)


def test_match_is_exact_no_glob_and_keeps_query_strings(server):
    with_query = server.url_for(BIG) + "?X-Amz-Signature=abc&x=1"  # '?' must not act as a glob
    [found, missing, star] = FileSystems.match([with_query, server.url_for("missing.warc"), server.url + "/*.warc"])
    assert [m.path for m in found.metadata_list] == [with_query]
    assert missing.metadata_list == [] and star.metadata_list == []
    assert FileSystems.match([server.url_for(BIG)], limits=[0])[0].metadata_list == []


def test_match_falls_back_to_ranged_get_when_head_is_refused():
    with serve_directory(WARC_DIR, refuse_head=True) as s:
        [result] = FileSystems.match([s.url_for(GZ)])
        assert result.metadata_list[0].size_in_bytes == len(local(GZ))
        assert s.methods() == ["HEAD", "GET"]
        assert s.ranges() == ["bytes=0-0"]


# -- errors and hostile servers ------------------------------------------------------------------


def test_missing_url_is_a_clear_error_without_retries(server):
    url = server.url_for("missing.warc.gz")
    with pytest.raises(HttpNotFoundError) as excinfo:
        FileSystems.open(url)
    assert isinstance(excinfo.value, FileNotFoundError) and isinstance(excinfo.value, BeamIOError)
    assert "404" in str(excinfo.value) and url in str(excinfo.value)
    assert len(server.requests) == 1


def test_configurable_user_agent_and_4xx(monkeypatch):
    with serve_directory(WARC_DIR, require_headers={"User-Agent": "crawl2clip/"}) as s:
        url = s.url_for(GZ)
        with FileSystems.open(url, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            assert f.read() == local(GZ)
        other = HttpFileSystem(PipelineOptions(["--http_user_agent", "someone-else/1.0"]))
        with pytest.raises(HttpStatusError, match="403") as excinfo:
            other.open(url)
        assert excinfo.value.status == 403 and url in str(excinfo.value)
        assert [r.headers["User-Agent"] for r in s.requests][-1] == "someone-else/1.0"
        assert len(s.requests) == 2  # a 4xx is not retried
        # Runtime options on workers arrive as a plain dict.
        monkeypatch.setattr(FileSystems, "_pipeline_options", {"http_user_agent": "crawl2clip/worker"})
        assert FileSystems.exists(url)
        assert s.requests[-1].headers["User-Agent"] == "crawl2clip/worker"


def test_retries_after_503():
    with serve_directory(WARC_DIR, fail_first=2, retry_after="0") as s:
        with FileSystems.open(s.url_for(BIG)) as f:
            assert f.read() == local(BIG)
        assert s.methods() == ["GET", "GET", "GET"]
    with serve_directory(WARC_DIR, fail_first=1, fail_status=429) as s:
        assert FileSystems.match([s.url_for(BIG)])[0].metadata_list[0].size_in_bytes == len(local(BIG))
        assert s.methods() == ["HEAD", "HEAD"]


def test_retries_are_bounded():
    with serve_directory(WARC_DIR, fail_first=100) as s:
        with pytest.raises(BeamIOError, match="503") as excinfo:
            FileSystems.open(s.url_for(BIG))
        assert s.url_for(BIG) in str(excinfo.value)
        assert len(s.requests) == FAST.max_retries + 1


@pytest.mark.parametrize("name, drop_at", [(BIG, 100_000), (GZ, 50_000)])
def test_dropped_connection_resumes_with_range(name, drop_at):
    with serve_directory(WARC_DIR, drop_after_bytes=drop_at) as s:
        with FileSystems.open(s.url_for(name), compression_type=CompressionTypes.UNCOMPRESSED) as f:
            assert f.read() == local(name)
        assert s.ranges() == ["bytes=0-", f"bytes={drop_at}-"]


def test_dropped_connection_inside_gzip_stream():
    expected = gzip.open(os.path.join(WARC_DIR, GZ)).read()
    with serve_directory(WARC_DIR, drop_after_bytes=70_000) as s:
        with FileSystems.open(s.url_for(GZ)) as f:
            assert read_all(f) == expected
        assert s.ranges() == ["bytes=0-", "bytes=70000-"]


def test_server_ignoring_range_still_gives_correct_bytes(small_buffers):
    data = local(BIG)
    with serve_directory(WARC_DIR, ignore_range=True) as s:
        with FileSystems.open(s.url_for(BIG)) as f:
            check_random_seeks(f, data, seed=2, rounds=15)
        assert set(s.methods()) == {"GET"}


def test_proxy_from_environment(server, monkeypatch):
    monkeypatch.setenv("http_proxy", server.url)
    url = "http://data.commoncrawl.invalid/" + BIG  # unresolvable: only the proxy can answer
    with FileSystems.open(url) as f:
        assert f.read() == local(BIG)
    assert server.requests[0].path == url  # absolute-form request line: it went through the proxy


def test_read_only(server):
    url = server.url_for(BIG)
    for operation in (
        lambda: FileSystems.create(url),
        lambda: FileSystems.delete([url]),
        lambda: FileSystems.rename([url], [url + ".2"]),
        lambda: FileSystems.copy([url], [url + ".2"]),
        lambda: FileSystems.mkdirs(url),
    ):
        with pytest.raises(BeamIOError, match="read-only"):
            operation()
    assert server.requests == []


# -- path listings -------------------------------------------------------------------------------


def test_expand_path_listing(tmp_path):
    relative = [
        "crawl-data/CC-MAIN-2024-22/segments/1715971057216.39/warc/CC-MAIN-20240517233122-20240518023122-00000.warc.gz",
        "crawl-data/CC-MAIN-2024-22/segments/1715971057216.39/warc/CC-MAIN-20240517233122-20240518023122-00001.warc.gz",
    ]
    lines = ["# a comment", relative[0], "", "   ", f"  {relative[1]}  ", "s3://other/x.warc.gz", "/data/local.warc.gz"]
    with gzip.open(tmp_path / "warc.paths.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    (tmp_path / "wet.paths").write_bytes("\r\n".join(lines).encode())
    kept = ["s3://other/x.warc.gz", "/data/local.warc.gz"]

    with serve_directory(tmp_path) as s:
        got = expand_path_listing(s.url_for("warc.paths.gz"), "https://data.commoncrawl.org/")
    assert got == ["https://data.commoncrawl.org/" + p for p in relative] + kept

    expected_s3 = ["s3://commoncrawl/" + p for p in relative] + kept
    assert expand_path_listing(str(tmp_path / "warc.paths.gz"), "s3://commoncrawl/") == expected_s3
    assert expand_path_listing(str(tmp_path / "wet.paths"), "s3://commoncrawl") == expected_s3


# -- Beam end to end -----------------------------------------------------------------------------


@pytest.fixture
def text_files(tmp_path):
    lines = [f"line {i} " + "x" * (i % 57) for i in range(3000)]
    body = ("\n".join(lines) + "\n").encode()
    (tmp_path / "lines.txt").write_bytes(body)
    with gzip.open(tmp_path / "lines.txt.gz", "wb") as f:
        f.write(body)
    return tmp_path, lines, len(body)


def test_text_source_splits_read_over_http(text_files):
    root, lines, _ = text_files
    with serve_directory(root) as s:
        source = _TextSource(s.url_for("lines.txt"), 0, CompressionTypes.AUTO, True, coders.StrUtf8Coder())
        splits = list(source.split(desired_bundle_size=10_000))
        assert len(splits) > 5
        records = []
        for split in splits:  # each split seeks to its start offset and resyncs on a newline
            records += source_test_utils.read_from_source(split.source, split.start_position, split.stop_position)
        assert records == lines


def test_direct_runner_reads_text_over_http(text_files):
    root, lines, size = text_files
    with serve_directory(root) as s:
        url, gz_url = s.url_for("lines.txt"), s.url_for("lines.txt.gz")
        gz_size = os.path.getsize(root / "lines.txt.gz")
        with beam.Pipeline(options=PipelineOptions(["--runner", "DirectRunner"])) as p:
            assert_that(p | "text" >> beam.io.ReadFromText(url), equal_to(lines), label="text")
            assert_that(p | "gz" >> beam.io.ReadFromText(gz_url), equal_to(lines), label="gz")
            matches = p | beam.Create([url, gz_url]) | fileio.MatchAll()
            sizes = matches | "sizes" >> beam.Map(lambda m: (m.path, m.size_in_bytes))
            assert_that(sizes, equal_to([(url, size), (gz_url, gz_size)]), label="match")
            # Not f.read_utf8(): it calls read() without a size, which CompressedFile rejects.
            contents = matches | fileio.ReadMatches() | beam.Map(lambda f: read_all(f.open()).decode().splitlines())
            assert_that(contents, equal_to([lines, lines]), label="read_matches")
