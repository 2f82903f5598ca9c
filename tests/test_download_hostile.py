"""The download stage against hostile input (issue 15): other spellings of private addresses, tiny
images, bodies longer than their Content-Length, bad command lines. Real servers on 127.0.0.1 play
the image hosts and the proxy; the stage runs through the real CLI."""

import glob
import io
import json
import os
import subprocess
import sys
from urllib.parse import quote, urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from crawl2clip.pipelines.cli import main
from crawl2clip.transforms.download.client import FetchOptions, fetch_batch
from crawl2clip.transforms.download.messages import MAX_MESSAGE_CHARS, bounded_message, exception_message
from tests.hostile_server import Reply, scripted_server

PHOTO = "/work/shared/data/photos/208_495.jpg"
CLI = os.path.join(os.path.dirname(sys.executable), "crawl2clip")

# Every one of these is 169.254.169.254 (cloud metadata), 127.0.0.1 or 10.0.0.1 to inet_aton,
# getaddrinfo or a proxy's URL parser.
SPELLINGS = [
    "2852039166",  # one decimal number
    "0xa9fea9fe",  # one hex number
    "0251.0376.0251.0376",  # octal parts
    "169.254.43518",  # short form: the last part fills the rest
    "169.254.169.254.",  # trailing dot
    "2130706433",
    "0x7f.1",
    "127.1",
    "0177.0.0.01",
    "010.0.0.1",  # 8.0.0.1 to inet_aton, 10.0.0.1 to parsers that ignore leading zeros
    "[::ffff:127.0.0.1]",  # IPv4-mapped IPv6
    "[::ffff:7f00:1]",
    "[0:0:0:0:0:ffff:169.254.169.254]",
    "[::127.0.0.1]",  # IPv4-compatible (deprecated) IPv6
    "[::1]",
    "%31%36%39.254.169.254",  # percent-encoded
    "%2531%2532%2537.0.0.1",  # twice
    "\uff11\uff16\uff19\uff0e\uff12\uff15\uff14\uff0e\uff11\uff16\uff19\uff0e\uff12\uff15\uff14",  # fullwidth
    "169\u3002254\u3002169\u3002254",  # ideographic full stops
    "LOCALHOST",
    "metadata.localhost",
]


def _tiny_jpeg() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (180, 30, 60)).save(out, format="JPEG", quality=90)
    return out.getvalue()


@pytest.fixture(scope="module")
def photo() -> bytes:
    if not os.path.exists(PHOTO):
        pytest.skip(f"{PHOTO} not available")
    with open(PHOTO, "rb") as f:
        return f.read()


def _rows(output: str) -> list[dict]:
    return pq.read_table(sorted(glob.glob(os.path.join(output, "[0-9]*.parquet")))).sort_by("key").to_pylist()


def _write_input(path, urls: list[str]) -> str:
    pq.write_table(pa.Table.from_pylist([{"URL": url, "TEXT": f"caption {i}"} for i, url in enumerate(urls)]),
                   str(path))
    return str(path)


# ---------------------------------------------------------------- item 3: the guard, end to end


def test_address_spellings_never_reach_the_proxy_as_urls_or_redirect_targets():
    # The scripted server plays the proxy: it is sent absolute-form request lines, which its routes
    # are keyed by. It answers robots.txt and redirects from a public name to each spelling.
    site = "http://images.example.invalid"
    routes = {f"{site}/robots.txt": Reply(404, b"no robots")}
    for i, spelling in enumerate(SPELLINGS):
        # Percent-encoded as UTF-8 where not ASCII, as a Location header must be sent.
        location = f"http://{quote(spelling, safe=':[]%.')}/latest/meta-data/"
        routes[f"{site}/r{i}"] = Reply(302, headers={"Location": location})
    with scripted_server(routes) as proxy:
        options = FetchOptions(proxy=proxy.url, trust_env=False, total_timeout=3.0, retries=0)
        urls = [f"http://{spelling}/latest/meta-data/" for spelling in SPELLINGS]
        redirects = [f"{site}/r{i}" for i in range(len(SPELLINGS))]
        results = fetch_batch(urls + redirects, options)
    assert {(r.url, r.status) for r in results} == {(url, "unsafe_address") for url in urls + redirects}
    # Each redirect was asked for once, and only for the public name (its robots.txt and the like
    # too); not one request for a spelling got through.
    assert all(proxy.paths().count(url) == 1 for url in redirects)
    assert {urlsplit(path).hostname for path in proxy.paths()} == {"images.example.invalid"}


def test_address_spellings_are_refused_without_a_proxy_too(photo):
    with scripted_server({"/robots.txt": Reply(404), "/a.jpg": Reply(body=photo)}) as server:
        port = server.port
        urls = [f"http://{host}:{port}/a.jpg" for host in
                ("2130706433", "0x7f000001", "0x7f.1", "127.1", "0177.0.0.1", "127.0.0.1.", "[::ffff:127.0.0.1]",
                 "%31%32%37.0.0.1", "\uff11\uff12\uff17.0.0.1", "localhost")]
        results = fetch_batch(urls, FetchOptions(trust_env=False, total_timeout=3.0, retries=0))
        assert [r.status for r in results] == ["unsafe_address"] * len(urls)
        assert server.requests == []
        # The same server is reachable when private networks are allowed: the refusals were the guard's.
        [allowed] = fetch_batch([f"http://0x7f.1:{port}/a.jpg"],
                                FetchOptions(trust_env=False, total_timeout=3.0, allow_private_networks=True))
    assert allowed.status == "success" and allowed.data == photo


def test_download_stage_with_a_proxy_refuses_every_spelling(tmp_path):
    site = "http://images.example.invalid"
    routes = {f"{site}/robots.txt": Reply(404, b"no robots"),
              f"{site}/moved.jpg": Reply(301, headers={"Location": "http://0xa9fea9fe/latest/meta-data/"})}
    with scripted_server(routes) as proxy:
        urls = [f"http://{spelling}/latest/meta-data/" for spelling in SPELLINGS] + [f"{site}/moved.jpg"]
        output = str(tmp_path / "out")
        assert main(["download", "--input", _write_input(tmp_path / "in.parquet", urls), "--output", output,
                     "--proxy", proxy.url, "--download-retries", "0"]) == 0
        assert proxy.paths().count(f"{site}/moved.jpg") == 1
        assert {urlsplit(path).hostname for path in proxy.paths()} == {"images.example.invalid"}
    rows = _rows(output)
    assert sorted(r["URL"] for r in rows) == sorted(urls)
    assert {r["status"] for r in rows} == {"unsafe_address"}
    with open(os.path.join(output, "metrics.json")) as f:
        assert json.load(f)["counters"]["download:failed_unsafe_address"] == len(urls)


# ---------------------------------------------------------------- item 0: images under --min-image-bytes


def test_images_under_min_image_bytes_are_dropped_and_counted(tmp_path, photo):
    tiny = _tiny_jpeg()
    assert 400 < len(tiny) < 1000  # a real 16x16 JPEG
    routes = {"/robots.txt": Reply(404), "/tiny.jpg": Reply(body=tiny, headers={"Content-Type": "image/jpeg"}),
              "/photo.jpg": Reply(body=photo, headers={"Content-Type": "image/jpeg"})}
    with scripted_server(routes) as server:
        parquet = _write_input(tmp_path / "in.parquet", [server.url + "/tiny.jpg", server.url + "/photo.jpg"])
        default, off = str(tmp_path / "default"), str(tmp_path / "off")
        assert main(["download", "--input", parquet, "--output", default, "--allow-private-networks"]) == 0
        assert main(["download", "--input", parquet, "--output", off, "--allow-private-networks",
                     "--min-image-bytes", "0"]) == 0
    by_path = {r["URL"].rsplit("/", 1)[1]: r for r in _rows(default)}
    assert (by_path["tiny.jpg"]["status"], by_path["tiny.jpg"]["error_message"]) == (
        "too_few_bytes", f"{len(tiny)} bytes < 5120")
    assert by_path["tiny.jpg"]["sha256"] is None
    assert by_path["photo.jpg"]["status"] == "success"
    with open(os.path.join(default, "metrics.json")) as f:
        counters = json.load(f)["counters"]
    assert counters["download:failed_too_few_bytes"] == 1 and counters["download:images"] == 1
    stats = [json.load(open(p)) for p in glob.glob(os.path.join(default, "*_stats.json"))]
    assert sum(s["status_counts"].get("too_few_bytes", 0) for s in stats) == 1
    assert {r["status"] for r in _rows(off)} == {"success"}  # 0 turns the filter off


# ---------------------------------------------------------------- item 14: stable, bounded messages


def test_error_messages_are_identical_across_runs_and_bounded(tmp_path, photo):
    junk = bytes((i * 7919) % 251 for i in range(30_000))  # binary, not an image
    routes = {
        "/robots.txt": Reply(404),
        "/longer.jpg": Reply(body=photo + junk, content_length=len(photo)),  # body past its Content-Length
        "/cut.jpg": Reply(body=photo[:3000], content_length=len(photo)),
        "/broken.jpg": Reply(body=b"\xff\xd8\xff" + junk),  # a JPEG signature, then no JPEG
        "/page.jpg": Reply(body=b"<html>" + b"x" * 6000),
        "/gone.jpg": Reply(404),
        "/photo.jpg": Reply(body=photo),
    }
    with scripted_server(routes, max_requests=1000) as server:
        urls = [server.url + path for path in routes if path != "/robots.txt"] + ["ftp://example.org/" + "a" * 5000]
        parquet = _write_input(tmp_path / "in.parquet", urls)
        runs = []
        for name in ("first", "second"):
            output = str(tmp_path / name)
            assert main(["download", "--input", parquet, "--output", output, "--allow-private-networks",
                         "--download-retries", "0"]) == 0
            runs.append(_rows(output))
    first, second = runs
    # Whether the bytes past Content-Length reach the client before it has read the declared
    # length is up to the network's timing: that row may be either; every other row is the same.
    def stable(rows):
        return [(r["URL"], r["status"], r["error_message"]) for r in rows if not r["URL"].endswith("/longer.jpg")]
    assert stable(first) == stable(second)
    by_path = {r["URL"].rsplit("/", 1)[1]: r for r in first}
    assert {path: row["status"] for path, row in by_path.items() if path != "longer.jpg"} == {
        "cut.jpg": "truncated", "broken.jpg": "decode_error",
        "page.jpg": "not_an_image", "gone.jpg": "http_404", "photo.jpg": "success", "a" * 5000: "bad_url"}
    for row in first + second:
        message = row["error_message"]
        if message is not None:
            assert len(message) <= MAX_MESSAGE_CHARS and message.isprintable() and " at 0x" not in message
    for row in (r for r in first + second if r["URL"].endswith("/longer.jpg")):
        assert row["status"] in ("connection_error", "success")
        if row["status"] == "connection_error":  # was a 34,251-character dump of the extra bytes
            assert len(row["error_message"]) < 100 and "\\x" not in row["error_message"], row["error_message"]
    assert by_path["broken.jpg"]["error_message"] == \
        "UnidentifiedImageError: cannot identify image file <_io.BytesIO object>"


def test_exception_message_is_one_bounded_printable_line():
    class ParserError(Exception):  # shaped like aiohttp's HTTP errors: a status and a message
        status = 400
        message = "Data after `Connection: close`:\n\n  b'\\xff\\xd8" + "\\x00" * 9000 + "'\n  ^"

    assert exception_message(ParserError()) == "ParserError: 400, Data after `Connection: close`"
    assert exception_message(ValueError("read <_io.BytesIO object at 0x7f3a2c1b5e40> twice")) == \
        "ValueError: read <_io.BytesIO object> twice"
    assert exception_message(OSError()) == "OSError"
    text = bounded_message("binary\x00\x01\x02 then\r\ntext\u200b " + "y" * 1000)
    assert text.startswith("binary then text") and len(text) == MAX_MESSAGE_CHARS and text.isprintable()
    assert bounded_message(text) == text  # stable when applied again


# ---------------------------------------------------------------- item 12: bad options fail fast


@pytest.mark.parametrize("case, through", [("missing-folder", "process"), ("empty-folder", "main"),
                                           ("proxy-not-a-url", "process"), ("proxy-socks", "main")])
def test_bad_download_options_fail_fast_with_one_line(tmp_path, capsys, case, through):
    """Through the installed command (a new process) or its main(): exit status, one line naming
    the option, no traceback, nothing started."""
    parquet = _write_input(tmp_path / "in.parquet", ["http://example.org/a.jpg"])
    (tmp_path / "empty").mkdir()
    argv, option = {
        "missing-folder": (["--retry-failed", str(tmp_path / "nowhere")], "--retry-failed"),
        "empty-folder": (["--retry-failed", str(tmp_path / "empty")], "--retry-failed"),
        "proxy-not-a-url": (["--input", parquet, "--proxy", "notaurl"], "--proxy"),
        "proxy-socks": (["--input", parquet, "--proxy", "socks5://127.0.0.1:1080"], "--proxy"),
    }[case]
    output = tmp_path / "out"
    argv = ["download", *argv, "--output", str(output)]
    if through == "process":
        done = subprocess.run([CLI, *argv], capture_output=True, text=True, timeout=120)
        status, stderr = done.returncode, done.stderr
    else:
        status, stderr = main(argv), capsys.readouterr().err
    assert status != 0
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("crawl2clip download:")]
    assert len(lines) == 1 and option in lines[0], stderr
    assert not output.exists()  # nothing was started
