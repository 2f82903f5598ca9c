"""The score stage with input and output on a real HDFS (deploy/cluster.sh hdfs start), on
DirectRunner: `crawl2clip score` HDFS -> HDFS writes what a run on local files writes (metadata
rows, embeddings, dropped pairs, errors, each part's counters, scoring.json, metrics), and a rerun
skips the finished parts, redoes a part a crash left without its metadata, and takes no temporary
or stale file for a finished one.

The input is the books-toscrape capture's download (its real covers, served by the replay proxy),
made on local files with one image damaged and one missing, then copied into the HDFS shard by
shard through the download layout."""

import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from crawl2clip.pipelines.cli import main
from crawl2clip.pipelines.replay import replay_proxy
from crawl2clip.transforms import files
from crawl2clip.transforms.download.shards import SHARD_FILES, TAR, finished_shards, read_shard_table, shard_file
from crawl2clip.transforms.embeddings import IMG_EMB, METADATA, TEXT_EMB, list_parts, load_embeddings, part_paths
from crawl2clip.transforms.errors import ERRORS_FOLDER
from crawl2clip.transforms.score.settings import read_settings
from crawl2clip.transforms.score.write import (
    COUNTERS_DIR,
    DROPPED,
    counters_path,
    dropped_path,
    errors_path,
    read_counters,
)
from tests.score_fixtures import replace_tar_member

pytest_plugins = ["tests.cluster_fixtures"]
pytestmark = pytest.mark.cluster

# The tiny CLIP scores these book covers between -0.41 and 0.44: thresholds that keep some pairs
# and drop others in both splits.
SCORE = ["--tiny-clip", "--min-similarity-en", "0", "--min-similarity-multi", "-0.2"]
SUBFOLDERS = (METADATA, IMG_EMB, TEXT_EMB, DROPPED, ERRORS_FOLDER, COUNTERS_DIR)


@pytest.fixture(scope="module")
def local_download(warc_dir, tmp_path_factory) -> str:
    """The capture's 19 pairs downloaded into 3 shards; in shard 1, one image cut short and one gone."""
    books = os.path.join(warc_dir, "books-toscrape.warc")
    root = tmp_path_factory.mktemp("score-input")
    assert main(["extract", "--input", books, "--output", str(root / "extract")]) == 0
    output = str(root / "download")
    with replay_proxy(books) as (proxy, _):
        assert main(["download", "--input", str(root / "extract" / "pairs" / "*.parquet"), "--output", output,
                     "--proxy", proxy, "--shard-size", "8", "--min-image-bytes", "0"]) == 0
    keys = [row["key"] for row in read_shard_table(output, 1).to_pylist() if row["status"] == "success"]
    tar = shard_file(output, 1, TAR)
    with open(tar, "rb") as f:
        data = f.read()
    start = data.index(b"\xff\xd8\xff", data.index(f"{keys[0]}.jpg".encode()))
    replace_tar_member(tar, f"{keys[0]}.jpg", data[start:start + 60])  # a JPEG header, then nothing
    replace_tar_member(tar, f"{keys[1]}.jpg", None)
    return output


@pytest.fixture(scope="module")
def local_score(local_download, tmp_path_factory) -> str:
    output = str(tmp_path_factory.mktemp("local-score") / "score")
    assert main(["score", "--input", local_download, "--output", output, *SCORE]) == 0
    return output


def copy_download(source: str, target: str) -> None:
    """A download folder copied shard by shard, each shard's files in their commit order (stats last)."""
    for shard in sorted(finished_shards(source)):
        for suffix in SHARD_FILES:
            files.write_atomic(shard_file(target, shard, suffix), files.read_bytes(shard_file(source, shard, suffix)))


def _table(path: str, download_dir: str, column: str) -> list[dict]:
    """A parquet file's rows, the download folder in `column` (the tar a row came from) made neutral."""
    with files.open_read(path) as f:
        rows = pq.read_table(f).to_pylist()
    return [{**row, column: row[column].replace(download_dir, "DOWNLOAD")} for row in rows]


def scored(output: str, download_dir: str) -> dict:
    """Everything a scoring output holds, read back through its own layout and readers."""
    parts = {}
    for part in list_parts(output):
        parts[part.number] = {
            "metadata": _table(part.metadata, download_dir, "shard"),
            "img_emb": np.asarray(load_embeddings(part.img_emb), np.float32),
            "text_emb": np.asarray(load_embeddings(part.text_emb), np.float32),
            "dropped": _table(dropped_path(output, part.number), download_dir, "shard"),
            "counters": read_counters(output, part.number),
        }
    errors = {number: _table(errors_path(output, number), download_dir, "source")
              for number in sorted(finished_shards(download_dir)) if files.exists(errors_path(output, number))}
    settings = read_settings(output)
    return {"parts": parts, "errors": errors, "settings": {**settings, "input": settings["input"] == download_dir},
            "counters": files.read_marker(files.join(output, "metrics.json"))["counters"]}


def assert_same_output(got: dict, expected: dict) -> None:
    assert sorted(got["parts"]) == sorted(expected["parts"]) == [0, 1, 2]
    for number, part in got["parts"].items():
        other = expected["parts"][number]
        for name in ("metadata", "dropped", "counters"):
            assert part[name] == other[name], (number, name)
        for name in ("img_emb", "text_emb"):
            np.testing.assert_allclose(part[name], other[name], atol=2e-3)  # float16, maybe other batches
    assert got["errors"] == expected["errors"]
    assert got["settings"] == expected["settings"]
    assert got["counters"] == expected["counters"]


def added(*counters: dict[str, int]) -> dict[str, int]:
    total: dict[str, int] = {}
    for counts in counters:
        for name, n in counts.items():
            total[name] = total.get(name, 0) + n
    return total


def temporaries(output: str) -> list[str]:
    return [path for folder in ("", *SUBFOLDERS) for path in files.match(files.join(output, folder, ".*"))]


def test_score_from_and_to_hdfs_equals_the_local_run_and_resumes(hdfs_cluster, hdfs_dir, local_download, local_score,
                                                                 tmp_path, monkeypatch):
    expected = scored(local_score, local_download)
    rows = [row for part in expected["parts"].values() for row in part["metadata"]]
    dropped = [row for part in expected["parts"].values() for row in part["dropped"]]
    assert rows and dropped and {row["split"] for row in dropped} == {"en", "nolang"}  # both thresholds at work
    assert sorted(e["reason"] for e in expected["errors"][1]) == ["missing_image", "undecodable_image"]
    assert expected["counters"]["score:pairs_read"] == 19 - 1 and expected["counters"]["score:kept"] == len(rows)

    download = files.join(hdfs_dir, "download")
    copy_download(local_download, download)
    output = files.join(hdfs_dir, "score")
    argv = ["score", "--input", download, "--output", output, *SCORE, *hdfs_cluster.pipeline_args]
    monkeypatch.chdir(tmp_path)  # an hdfs:// path taken for a local one would show up here
    assert main(argv) == 0
    assert os.listdir(tmp_path) == []
    assert_same_output(scored(output, download), expected)
    assert temporaries(output) == []  # every write committed, none left half-way
    assert all(row["shard"].startswith("DOWNLOAD/") for part in scored(output, download)["parts"].values()
               for row in part["metadata"])

    # A rerun finds every part finished: nothing is scored again, the whole data is still counted.
    assert main(argv) == 0
    metrics = files.read_marker(files.join(output, "metrics.json"))
    assert metrics["this_run"] == {"score:shards_already_scored": 3}
    assert metrics["counters"] == expected["counters"]

    # Part 1 as a crash leaves it: its arrays and counters written (stale ones here), its metadata
    # not, and a killed attempt's temporary metadata file. The rerun redoes part 1 only.
    part = part_paths(output, 1)
    files.delete(part.metadata)
    files.write_atomic(part.img_emb, b"an attempt that died before its metadata")
    files.write_marker(counters_path(output, 1), {"score:kept": 1000})
    killed = files.join(output, METADATA, ".metadata_1.parquet.tmp-killed")
    files.write_atomic(killed, b"half a parquet file")
    assert [p.number for p in list_parts(output)] == [0, 2]
    assert main(argv) == 0
    metrics = files.read_marker(files.join(output, "metrics.json"))
    assert metrics["this_run"]["score:shards_already_scored"] == 2 and metrics["this_run"]["score:shards"] == 1
    assert metrics["carried"] == added(expected["parts"][0]["counters"], expected["parts"][2]["counters"])
    assert_same_output(scored(output, download), expected)
    assert temporaries(output) == [killed]  # ignored by every reader, never taken for a part
    assert os.listdir(tmp_path) == []


def test_score_refuses_other_settings_for_an_hdfs_output_before_any_work(hdfs_cluster, hdfs_dir, local_download):
    download = files.join(hdfs_dir, "download")
    copy_download(local_download, download)
    output = files.join(hdfs_dir, "score")
    files.write_marker(files.join(output, "scoring.json"), {"input": download, "thresholds": "other ones"})
    assert main(["score", "--input", download, "--output", output, *SCORE, *hdfs_cluster.pipeline_args]) == 1
    assert list_parts(output) == [] and not files.exists(files.join(output, "metrics.json"))
    missing = files.join(hdfs_dir, "no-download-here")
    assert main(["score", "--input", missing, "--output", output, *SCORE, *hdfs_cluster.pipeline_args]) == 2
