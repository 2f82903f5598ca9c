"""The index stage with its scoring output and its INDEX_DIR on a real HDFS (deploy/cluster.sh hdfs
start), on DirectRunner, and `subset` reading that index: the files equal those of an index built
from the same scoring output on local files (byte for byte where the build is deterministic),
searches give the same rows and scores, and a build that fails half-way is never taken for a
finished index. The progress line reads its files and the scoring parts from the HDFS too.

Scoring outputs are made here on local files and copied up through the file layer: a compressed
(IVF+PQ) one of clustered vectors, and a real one (real photos in download shards, the project's
tiny CLIP) whose download shards are copied too, its metadata naming the copies."""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crawl2clip.pipelines.cli import main
from crawl2clip.pipelines.progress import _ShardTotals, describe
from crawl2clip.transforms import files
from crawl2clip.transforms.embeddings import list_parts, part_paths, write_part
from crawl2clip.transforms.index import transform as index_transform
from crawl2clip.transforms.index.store import INFO, WORK, IndexStore
from crawl2clip.transforms.progress import ProgressFile, read_progress
from crawl2clip.transforms.score.settings import SCORING_JSON
from tests.test_index import _clustered
from tests.test_index_data import DATA, build_score_dir

pytest_plugins = ["tests.cluster_fixtures"]
pytestmark = pytest.mark.cluster

TIMINGS = ("train_seconds", "merge_seconds", "seconds")
SHARD = "shard"


@pytest.fixture(autouse=True)
def copies_cache(tmp_path_factory, monkeypatch):
    """files.local_copy's folder, per test (not the shared temp folder)."""
    monkeypatch.setenv("CRAWL2CLIP_CACHE", str(tmp_path_factory.mktemp("copies")))


@pytest.fixture(scope="module")
def clustered_score_dir(tmp_path_factory) -> str:
    """12,500 rows in parts 0, 2, 4, 6, 8: enough for IVF+PQ with --exact-max-rows 1000."""
    score_dir = str(tmp_path_factory.mktemp("clustered") / "score")
    vectors = _clustered(12_500, 16, seed=1)
    for number in range(5):
        chunk = vectors[number * 2_500:(number + 1) * 2_500]
        keys = [f"{number:05d}{i:05d}" for i in range(2_500)]
        write_part(score_dir, 2 * number, chunk, chunk[::-1], pa.table({"key": keys, "TEXT": keys}))
    return score_dir


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> dict:
    if not os.path.isdir(DATA):
        pytest.skip(f"the shared real data is not at {DATA}")
    return build_score_dir(str(tmp_path_factory.mktemp("real")))


def read_table(path: str) -> pa.Table:
    with files.open_read(path) as f:
        return pq.read_table(f)


def upload_score_dir(score_dir: str, remote: str, shards: dict[str, str] | None = None) -> str:
    """Copies a scoring output into `remote` through the file layer: embeddings byte for byte,
    metadata with its `shard` column mapped through `shards` (local tar -> remote copy)."""
    for part in list_parts(score_dir):
        copy = part_paths(remote, part.number)
        files.write_atomic(copy.img_emb, files.read_bytes(part.img_emb))
        files.write_atomic(copy.text_emb, files.read_bytes(part.text_emb))
        metadata = read_table(part.metadata)
        if shards:
            mapped = pa.array([shards[path] for path in metadata[SHARD].to_pylist()], pa.string())
            metadata = metadata.set_column(metadata.column_names.index(SHARD), SHARD, mapped)
        files.write_atomic(copy.metadata, lambda f, table=metadata: pq.write_table(table, f))
    if files.exists(os.path.join(score_dir, SCORING_JSON)):
        files.write_atomic(files.join(remote, SCORING_JSON), files.read_bytes(os.path.join(score_dir, SCORING_JSON)))
    return remote


def upload_shards(download_dir: str, remote: str) -> dict[str, str]:
    """Every file of a download folder copied into `remote`; local tar path -> remote tar path."""
    mapping = {}
    for path in files.match(os.path.join(download_dir, "*")):
        name = os.path.basename(path)
        files.write_atomic(files.join(remote, name), files.read_bytes(path))
        mapping[os.path.abspath(path)] = files.join(remote, name)
    return mapping


def info_without_timings(info: dict) -> dict:
    """index_info.json without what differs between two builds of the same data: its timings
    and the scoring output's path."""
    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in TIMINGS}
        return value
    return {k: v for k, v in strip(info).items() if k != "source"}


def index_files(index_dir: str) -> dict[str, bytes]:
    """The index's own files (not errors/ and metrics.json), by name."""
    names = ("image.index", "text.index", "img_emb.npy", "text_emb.npy", "metadata.arrow",
             "thumbnails.bin", "thumbnails_offsets.npy")
    return {name: files.read_bytes(files.join(index_dir, name)) for name in names
            if files.exists(files.join(index_dir, name))}


def error_rows(index_dir: str) -> int:
    return sum(read_table(path).num_rows for path in files.match(files.join(index_dir, "errors", "*.parquet")))


def assert_same_searches(remote: IndexStore, local: IndexStore, rows: np.ndarray) -> None:
    for modality, search in local.searches.items():
        queries = np.asarray(local.searches[modality].vectors[rows], dtype=np.float32)
        expected, got = search.search(queries, 10), remote.searches[modality].search(queries, 10)
        assert np.array_equal(got[1], expected[1]) and np.array_equal(got[0], expected[0])
        assert (got[1][:, 0] >= 0).all()


def assert_finished_and_clean(index_dir: str) -> None:
    assert files.exists(files.join(index_dir, INFO))
    assert not files.exists(files.join(index_dir, WORK))  # the shards' files went with the merge
    assert files.match(files.join(index_dir, ".*")) == []  # no temporary file left behind


def test_compressed_index_from_and_to_hdfs_equals_the_local_one(hdfs_cluster, hdfs_dir, clustered_score_dir,
                                                                tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an hdfs:// path taken for a local one would show up here
    flags = ["--index-shards", "3", "--exact-max-rows", "1000", "--target-recall", "0.9",
             "--query-model", "ViT-B-32", "--no-thumbnails", "--index-text"]
    hdfs = hdfs_cluster.pipeline_args  # given to every command: filesystem options are process-wide
    local_index = str(tmp_path.parent / f"{tmp_path.name}-local-index")
    assert main(["index", "--input", clustered_score_dir, "--output", local_index, *flags, *hdfs]) == 0
    score = upload_score_dir(clustered_score_dir, files.join(hdfs_dir, "score"))
    index = files.join(hdfs_dir, "index")
    assert main(["index", "--input", score, "--output", index, *flags, *hdfs]) == 0

    assert_finished_and_clean(index)
    assert os.listdir(tmp_path) == []
    got, expected = index_files(index), index_files(local_index)
    assert sorted(got) == ["image.index", "img_emb.npy", "metadata.arrow", "text.index", "text_emb.npy"]
    assert got == expected  # faiss's training is seeded: the same bytes
    remote, local = IndexStore(index), IndexStore(local_index)
    assert remote.info["index_type"].startswith("IVF") and remote.info["shards"] == 3
    assert remote.info["source"] == score and remote.info["index_bytes"]["image"] == len(got["image.index"])
    assert info_without_timings(remote.info) == info_without_timings(local.info)
    assert_same_searches(remote, local, np.arange(0, 12_500, 97))
    assert files.read_marker(files.join(index, "metrics.json"))["counters"]["index:rows_added"] == 12_500


def test_real_index_on_hdfs_serves_subsets_and_a_failed_build_is_not_finished(hdfs_cluster, hdfs_dir, real_run,
                                                                            tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    hdfs = hdfs_cluster.pipeline_args
    local_index = str(tmp_path.parent / f"{tmp_path.name}-local-index")
    assert main(["index", "--input", real_run["score_dir"], "--output", local_index, "--index-text", *hdfs]) == 0
    shards = upload_shards(real_run["download_dir"], files.join(hdfs_dir, "download"))
    score = upload_score_dir(real_run["score_dir"], files.join(hdfs_dir, "score"), shards)
    index = files.join(hdfs_dir, "index")
    build = ["index", "--input", score, "--output", index, "--index-text", "--index-shards", "2", *hdfs]
    assert main(build) == 0
    assert_finished_and_clean(index)
    first_build = index_files(index)

    remote, local = IndexStore(index), IndexStore(local_index)
    rows = local.rows
    assert remote.rows == rows == len(real_run["rows"]) and remote.info["thumbnails"] == rows
    local_shards = {remote_path: local_path for local_path, remote_path in shards.items()}
    remote_metadata = remote.metadata.to_pylist()
    assert all(row[SHARD].startswith(files.join(hdfs_dir, "download")) for row in remote_metadata)
    assert [{**row, SHARD: local_shards[row[SHARD]]} for row in remote_metadata] == local.metadata.to_pylist()
    for name in ("img_emb.npy", "text_emb.npy", "thumbnails.bin", "thumbnails_offsets.npy", "image.index"):
        assert files.read_bytes(files.join(index, name)) == files.read_bytes(os.path.join(local_index, name)), name
    assert all(remote.thumbnails.get(i) == local.thumbnails.get(i) is not None for i in range(rows))
    assert info_without_timings(remote.info) == info_without_timings(local.info)
    assert_same_searches(remote, local, np.arange(rows))
    assert error_rows(index) == 0

    # subsets of the HDFS index, written to the HDFS, equal those of the local index
    for query in (["--filter", "punsafe<0.5"], ["--query", "a kitten", "--lang", "en", "--k", "5"]):
        out = files.join(hdfs_dir, "subsets", "subset.parquet")
        assert main(["subset", "--index", index, *query, "--output", out, *hdfs]) == 0
        assert main(["subset", "--index", local_index, *query, "--output", str(tmp_path / "local.parquet"), *hdfs]) == 0
        got = read_table(out).to_pylist()
        assert got and [{**row, SHARD: local_shards[row[SHARD]]} for row in got] == \
            pq.read_table(tmp_path / "local.parquet").to_pylist()
        os.remove(tmp_path / "local.parquet")

    # a rebuild that fails in its merge leaves no finished index behind: neither the old one nor a half
    def broken(*args):
        raise OSError("the disk is gone")

    pack_thumbnails = index_transform.pack_thumbnails
    monkeypatch.setattr(index_transform, "pack_thumbnails", broken)
    with pytest.raises(Exception, match="the disk is gone"):  # DirectRunner raises the DoFn's error
        main(build)
    assert not files.exists(files.join(index, INFO)) and files.exists(files.join(index, WORK))
    with pytest.raises(FileNotFoundError, match="not a finished"):
        IndexStore(index)
    capsys.readouterr()
    assert main(["subset", "--index", index, "--all", "--output", str(tmp_path / "x.parquet"), *hdfs]) == 2
    assert "not a finished `crawl2clip index` output" in capsys.readouterr().err
    monkeypatch.setattr(index_transform, "pack_thumbnails", pack_thumbnails)
    assert main(build) == 0  # the rerun starts over: the failed build's shards do not count
    assert_finished_and_clean(index)
    assert index_files(index) == first_build
    assert_same_searches(IndexStore(index), local, np.arange(rows))

    # without the HDFS's address, subset says which flags it needs before any work
    with pytest.raises(SystemExit):
        main(["subset", "--index", index, "--all", "--output", str(tmp_path / "x.parquet")])
    assert "give --hdfs_host, --hdfs_port, --hdfs_user" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_progress_files_and_line_on_hdfs(hdfs_cluster, hdfs_dir, clustered_score_dir):
    progress_dir = files.join(hdfs_dir, "extract", "_progress")
    workers = [ProgressFile(progress_dir, "extract") for _ in range(2)]
    workers[0].add(files=1, candidates=40)
    workers[1].add(files=2, candidates=2)
    for worker in workers:
        worker.flush()
    workers[0].add(files=1, candidates=10)
    workers[0].flush()  # replaces its file (HDFS renames only onto a free name)
    assert read_progress(progress_dir) == {"extract": {"files": 4, "candidates": 52}}
    assert files.match(files.join(progress_dir, ".*")) == []
    score = upload_score_dir(clustered_score_dir, files.join(hdfs_dir, "score"))
    line = describe({"extract": files.join(hdfs_dir, "extract"), "score": score}, progress_dir, elapsed=2.0,
                    shard_totals=_ShardTotals(), total_files=8)
    assert line == "[0m02s] extract: 4/8 files, 52 pairs, ETA 0m02s | score: 5 parts"
