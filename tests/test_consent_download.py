"""TDMRep and removal lists at download: a real server on 127.0.0.1 serving a tdmrep.json and the
shared photos, through the real `crawl2clip download`, read back with webdataset and pyarrow."""

import glob
import hashlib
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image

from crawl2clip.pipelines.cli import main
from crawl2clip.transforms.consent.audit import REMOVED_SCHEMA
from crawl2clip.transforms.consent.phash import phash_of_bytes, to_hex
from tests.archive_files import SHARED_DATA
from tests.hostile_server import Reply, scripted_server

PHOTOS = os.path.normpath(os.path.join(SHARED_DATA, "photos"))
TDMREP = json.dumps([
    {"location": "/photos/reserved/open-*", "tdm-reservation": 0},  # first match wins
    {"location": "/photos/reserved/", "tdm-reservation": 1, "tdm-policy": "https://rights.example/policy.json"},
]).encode()


def photo(name: str) -> bytes:
    with open(os.path.join(PHOTOS, name), "rb") as f:
        return f.read()


def test_tdmrep_and_image_lists_at_download(tmp_path):
    names = sorted(os.listdir(PHOTOS))
    assert len(names) == 7
    routes = {"/robots.txt": Reply(404), "/.well-known/tdmrep.json": Reply(body=TDMREP,
                                                                           headers={"Content-Type": "application/json"})}
    paths = {
        "plain": f"/photos/{names[0]}",
        "reserved": f"/photos/reserved/{names[1]}",  # tdmrep.json: 1
        "reserved-open": f"/photos/reserved/open-{names[2]}",  # tdmrep.json: 0, the earlier rule
        "header": f"/photos/{names[3]}",  # its own response says tdm-reservation: 1
        "sha256-listed": f"/photos/{names[4]}",
        "phash-listed": f"/photos/{names[5]}",
        "url-listed": f"/photos/{names[6]}",
    }
    for key, path in paths.items():
        name = os.path.basename(path).removeprefix("open-")
        routes[path] = Reply(body=photo(name), headers={"tdm-reservation": "1"} if key == "header" else {})
    lists = tmp_path / "lists"
    lists.mkdir()
    sha = hashlib.sha256(photo(names[4])).hexdigest()
    (lists / "images.sha256").write_text(f"# crawl2clip-blocklist: image-sha256\n{sha}\n")
    near = io.BytesIO()  # the listed picture as someone else stored it: smaller, recompressed
    Image.open(io.BytesIO(photo(names[5]))).convert("RGB").resize((200, 54)).save(near, "JPEG", quality=70)
    listed_phash = to_hex(phash_of_bytes(near.getvalue()))
    (lists / "images.phash").write_text(f"# crawl2clip-blocklist: image-phash\n{listed_phash}\n")
    with scripted_server(routes) as server:
        rows = [{"URL": server.url + path, "TEXT": f"the {key} photo", "page_url": "https://pages.example/"}
                for key, path in paths.items()]
        pq.write_table(pa.Table.from_pylist(rows), str(tmp_path / "in.parquet"))
        (lists / "urls.txt").write_text(server.url + paths["url-listed"] + "\n")
        output = str(tmp_path / "out")
        assert main(["download", "--input", str(tmp_path / "in.parquet"), "--output", output,
                     "--allow-private-networks", "--image-size", "64", "--min-image-bytes", "0",
                     "--blocklist", str(lists / "images.sha256"), str(lists / "images.phash"),
                     str(lists / "urls.txt")]) == 0
    requested = server.paths()
    # tdmrep.json once for the host, before any image; the listed URL and the reserved path never
    assert requested.count("/.well-known/tdmrep.json") == 1
    first_image = min(requested.index(p) for p in requested if p.startswith("/photos"))
    assert requested.index("/.well-known/tdmrep.json") < first_image
    assert paths["url-listed"] not in requested and paths["reserved"] not in requested
    table = pq.read_table(sorted(glob.glob(os.path.join(output, "[0-9]*.parquet")))).to_pylist()
    status = {row["TEXT"].split()[1]: row["status"] for row in table}
    assert status == {"plain": "success", "reserved": "tdm_reserved", "reserved-open": "success",
                      "header": "tdm_reserved"}  # the listed rows are not in the shard at all
    message = {row["TEXT"].split()[1]: row["error_message"] for row in table}
    assert "/photos/reserved/" in message["reserved"] and "policy.json" in message["reserved"]
    assert message["header"] == "tdm-reservation: 1"
    samples = list(wds.WebDataset(sorted(glob.glob(os.path.join(output, "*.tar"))), shardshuffle=False))
    assert sorted(s["txt"].decode() for s in samples) == ["the plain photo", "the reserved-open photo"]
    removed = pq.read_table(os.path.join(output, "removed"))
    assert removed.schema.equals(REMOVED_SCHEMA)
    by_url = {r["URL"]: r for r in removed.to_pylist()}
    assert set(by_url) == {server.url + paths[k] for k in ("sha256-listed", "phash-listed", "url-listed")}
    sha_row, phash_row, url_row = (by_url[server.url + paths[k]] for k in ("sha256-listed", "phash-listed", "url-listed"))
    assert (sha_row["reason"], sha_row["entry"], sha_row["matched"], sha_row["list"]) == \
        ("image-sha256", sha, "image", str(lists / "images.sha256"))
    assert (phash_row["reason"], phash_row["entry"], phash_row["matched"]) == ("image-phash", listed_phash, "image")
    assert int(phash_row["detail"].removeprefix("hamming distance ")) <= 4
    assert (url_row["reason"], url_row["matched"], url_row["stage"]) == ("url", "URL", "download")
    assert removed.num_rows == 3 and all(r["page_url"] == "https://pages.example/" for r in removed.to_pylist())
    with open(os.path.join(output, "metrics.json")) as f:
        counters = json.load(f)["counters"]
    assert counters["download:failed_tdm_reserved"] == 2 and counters["download:images"] == 2
    assert (counters["download:removed_image_sha256"], counters["download:removed_image_phash"],
            counters["download:removed_url"]) == (1, 1, 1)
