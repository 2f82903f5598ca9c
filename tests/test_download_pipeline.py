"""`crawl2clip download` end to end: the real pages and images of books.toscrape.com replayed
from the shared WARC through the --proxy option, and the real photos from a local server."""

import glob
import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from crawl2clip.pipelines.cli import main
from crawl2clip.transforms.extract.rules import pair_uid
from tests.http_server import serve_directory
from crawl2clip.pipelines.replay import replay_proxy


@pytest.fixture(scope="module")
def books_pairs(warc_dir, tmp_path_factory) -> str:
    output = tmp_path_factory.mktemp("extract")
    assert main(["extract", "--input", os.path.join(warc_dir, "books-toscrape.warc"), "--output", str(output)]) == 0
    return str(output / "pairs" / "*.parquet")


def samples(output: str) -> list[dict]:
    tars = sorted(glob.glob(os.path.join(output, "*.tar")))
    return list(wds.WebDataset(tars, shardshuffle=False).decode("pil"))


def statuses(output: str) -> list[dict]:
    return pq.read_table(sorted(glob.glob(os.path.join(output, "[0-9]*.parquet")))).to_pylist()


def test_books_page_images_through_the_replay_proxy_and_resume(warc_dir, books_pairs, tmp_path):
    output = str(tmp_path / "images")
    with replay_proxy(os.path.join(warc_dir, "books-toscrape.warc")) as (proxy, requested):
        argv = ["download", "--input", books_pairs, "--output", output, "--proxy", proxy, "--shard-size", "8"]
        assert main(argv) == 0
        first_requests = len(requested)
        rows = statuses(output)
        inputs = pq.read_table(glob.glob(books_pairs)).to_pylist()
        assert sorted(r["uid"] for r in rows) == sorted(r["uid"] for r in inputs)  # each row exactly once
        # Two of the real covers are under the default 5 KB: dropped, with their size.
        small = sorted(r["error_message"] for r in rows if r["status"] == "too_few_bytes")
        assert small == ["3917 bytes < 5120", "4064 bytes < 5120"]
        assert {r["status"] for r in rows} == {"success", "too_few_bytes"}
        got = samples(output)
        assert len(inputs) == 19 and len(got) == 19 - len(small)
        for sample in got:
            assert sample["jpg"].size == (256, 256)  # border mode, 256
            meta = sample["json"]
            assert sample["txt"] == meta["TEXT"] and meta["uid"] == pair_uid(meta["URL"], meta["TEXT"])
            assert meta["url"].startswith("http://books.toscrape.com/media/")
        assert any(s["txt"] == "A Light in the Attic" for s in got)
        # robots.txt is asked for once per host (the archive has none: 404, so allowed)
        assert requested.count("http://books.toscrape.com/robots.txt") == 1
        # Rerun into the same folder: every shard is finished, nothing is fetched again.
        tars = {p: open(p, "rb").read() for p in glob.glob(os.path.join(output, "*.tar"))}
        assert main(argv) == 0
        assert len(requested) == first_requests
        assert {p: open(p, "rb").read() for p in tars} == tars


def test_real_photos_resize_modes_and_failures(tmp_path):
    photos = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "photos")
    if not os.path.isdir(photos):
        pytest.skip("no shared photos")
    served = tmp_path / "site"
    shutil.copytree(photos, served / "photos")
    (served / "photos" / "not-an-image.jpg").write_bytes(b"<html>surprise</html>")
    names = sorted(os.listdir(photos))
    with serve_directory(str(served)) as server:
        rows = [{"URL": f"{server.url}/photos/{n}", "TEXT": f"photo {n}", "extra": i} for i, n in enumerate(names)]
        rows += [{"URL": f"{server.url}/photos/missing.jpg", "TEXT": "gone", "extra": -1},
                 {"URL": f"{server.url}/photos/not-an-image.jpg", "TEXT": "html", "extra": -2},
                 {"URL": "ftp://example.org/a.jpg", "TEXT": "ftp", "extra": -3}]
        pq.write_table(pa.Table.from_pylist(rows), str(tmp_path / "in.parquet"))
        output = str(tmp_path / "out")
        assert main(["download", "--input", str(tmp_path / "in.parquet"), "--output", output,
                     "--allow-private-networks", "--resize-mode", "keep_ratio", "--image-size", "128"]) == 0
    by_url = {r["URL"]: r for r in statuses(output)}
    assert len(by_url) == len(rows)
    assert by_url[f"{server.url}/photos/missing.jpg"]["status"] == "http_404"
    assert by_url[f"{server.url}/photos/not-an-image.jpg"]["status"] == "not_an_image"
    assert by_url["ftp://example.org/a.jpg"]["status"] == "bad_url"
    for name in names:
        row = by_url[f"{server.url}/photos/{name}"]
        width, height = (int(v) for v in name[:-4].split("_"))
        assert (row["original_width"], row["original_height"]) == (width, height)
        assert min(row["width"], row["height"]) == 128  # keep_ratio: the smaller side
        assert row["extra"] == names.index(name)  # input columns ride along
    stats = [json.load(open(p)) for p in glob.glob(os.path.join(output, "*_stats.json"))]
    assert stats


def test_private_hosts_are_refused_without_the_flag(tmp_path):
    with serve_directory(str(tmp_path)) as server:
        pq.write_table(pa.Table.from_pylist([{"URL": f"{server.url}/a.jpg", "TEXT": "private"}]), str(tmp_path / "in.parquet"))
        assert main(["download", "--input", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "out")]) == 0
        assert server.requests == []
    (row,) = statuses(str(tmp_path / "out"))
    assert row["status"] == "unsafe_address"


def test_killed_run_resumes_to_the_same_output(tmp_path):
    """SIGKILL a download part-way, run it again: the result equals an uninterrupted run."""
    import signal
    import subprocess
    import sys
    import time

    from tests.hostile_server import Reply, scripted_server

    photos = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data", "photos")
    if not os.path.isdir(photos):
        pytest.skip("no shared photos")
    images = [open(os.path.join(photos, n), "rb").read() for n in sorted(os.listdir(photos))]
    rows = [{"URL": f"/img/{i}.jpg", "TEXT": f"photo number {i}"} for i in range(60)]
    # Slow answers, so the kill lands while shards are still being downloaded.
    routes = {row["URL"]: Reply(body=images[i % len(images)], headers={"Content-Type": "image/jpeg"}, delay=0.15)
              for i, row in enumerate(rows)}
    with scripted_server(routes, max_requests=1000) as server:
        for row in rows:
            row["URL"] = server.url + row["URL"]
        pq.write_table(pa.Table.from_pylist(rows), str(tmp_path / "in.parquet"))

        def command(output: str) -> list[str]:
            return [sys.executable, "-m", "crawl2clip.pipelines.cli", "download", "--input", str(tmp_path / "in.parquet"),
                    "--output", output, "--allow-private-networks", "--shard-size", "6", "--max-per-host", "1"]

        whole = str(tmp_path / "whole")
        subprocess.run(command(whole), check=True, capture_output=True, timeout=300)
        resumed = str(tmp_path / "resumed")
        process = subprocess.Popen(command(resumed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        deadline = time.monotonic() + 120
        while not glob.glob(os.path.join(resumed, "*_stats.json")) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        done_before = len(glob.glob(os.path.join(resumed, "*_stats.json")))
        total = len(glob.glob(os.path.join(whole, "*_stats.json")))
        assert 1 <= done_before < total, "the kill must land part-way"
        subprocess.run(command(resumed), check=True, capture_output=True, timeout=300)
    assert not glob.glob(os.path.join(resumed, "*.tmp"))
    for tar in glob.glob(os.path.join(whole, "*.tar")):
        assert open(tar, "rb").read() == open(os.path.join(resumed, os.path.basename(tar)), "rb").read()
    assert statuses(whole) == statuses(resumed)
    assert {r["status"] for r in statuses(resumed)} == {"success"} and len(statuses(resumed)) == 60


def test_retry_failed_downloads_only_the_retryable_failures(tmp_path):
    from tests.hostile_server import Reply, scripted_server

    photo = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data",
                         "photos", "208_495.jpg")
    if not os.path.exists(photo):
        pytest.skip("no shared photos")
    jpeg = Reply(body=open(photo, "rb").read(), headers={"Content-Type": "image/jpeg"})
    routes = {"/ok.jpg": jpeg, "/flaky.jpg": [Reply(503), jpeg], "/gone.jpg": Reply(404)}
    with scripted_server(routes) as server:
        rows = [{"URL": server.url + path, "TEXT": f"caption for {path}"} for path in routes]
        pq.write_table(pa.Table.from_pylist(rows), str(tmp_path / "in.parquet"))
        first, second = str(tmp_path / "first"), str(tmp_path / "second")
        common = ["--allow-private-networks", "--download-retries", "0"]
        assert main(["download", "--input", str(tmp_path / "in.parquet"), "--output", first, *common]) == 0
        assert {r["URL"].rsplit("/", 1)[1]: r["status"] for r in statuses(first)} == {
            "ok.jpg": "success", "flaky.jpg": "http_503", "gone.jpg": "http_404"}
        assert main(["download", "--retry-failed", first, "--output", second, *common]) == 0
        assert server.paths().count("/gone.jpg") == 1 and server.paths().count("/ok.jpg") == 1
    (retried,) = statuses(second)
    assert retried["URL"].endswith("/flaky.jpg") and retried["status"] == "success"
