"""The index stage: index choice, a compressed index built by the Beam job in parallel shards and
measured against exact search, and a real scoring output (real photos in download shards)
indexed with its metadata, vectors and thumbnails, bad parts and images counted as errors."""

import io
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from crawl2clip.pipelines.cli import main as cli_main
from crawl2clip.transforms.download.images import ProcessedImage
from crawl2clip.transforms.download.shards import ShardWriter
from crawl2clip.transforms.embeddings import list_parts, load_embeddings, write_part
from crawl2clip.transforms.index.build import PartPlan, split_shards
from crawl2clip.transforms.index.choice import choose_index, parse_memory
from crawl2clip.transforms.index.search import exact_search, recall_at_k, remove_near_duplicates
from crawl2clip.transforms.index.store import IndexStore
from crawl2clip.transforms.index.transform import prepare_index
from tests.test_index_data import DATA, build_score_dir


def test_parse_memory():
    assert parse_memory("4GB") == 4 * 2**30
    assert parse_memory("512mb") == 512 * 2**20
    assert parse_memory("1.5G") == int(1.5 * 2**30)
    assert parse_memory("1000") == 1000
    for bad in ("", "lots", "4 PB", "-1GB"):
        with pytest.raises(ValueError):
            parse_memory(bad)


def test_index_choice_follows_size_and_budget():
    small = choose_index(50_000, 512, 4 * 2**30)
    assert small.exact and small.memory_bytes == 50_000 * 512 * 4
    large = choose_index(1_000_000, 512, 4 * 2**30)
    assert large.factory == "IVF4096_HNSW32,PQ64x8np" and large.memory_bytes <= 4 * 2**30
    assert 4096 * 39 <= large.train_rows <= 1_000_000
    tight = choose_index(1_000_000, 512, 60 * 2**20)  # the budget forces smaller codes
    assert tight.pq_bytes < large.pq_bytes and tight.memory_bytes <= 60 * 2**20
    over_budget = choose_index(50_000, 512, 50 * 2**20)  # exact would not fit: compressed
    assert not over_budget.exact and over_budget.memory_bytes <= 50 * 2**20
    with pytest.raises(ValueError, match="memory budget"):
        choose_index(10_000_000, 512, 10 * 2**20)
    with pytest.raises(ValueError, match="too few"):
        choose_index(5_000, 512, 1000)


def test_split_shards_keeps_parts_in_order_and_balanced():
    parts = [PartPlan(n, "x", offset, rows) for n, offset, rows in
             [(0, 0, 100), (1, 100, 100), (3, 200, 100), (4, 300, 100), (7, 400, 100), (9, 500, 100)]]
    shards = split_shards(parts, 3)
    assert [[p.number for p in s] for s in shards] == [[0, 1], [3, 4], [7, 9]]
    assert [p for s in split_shards(parts, 10) for p in s] == parts
    assert len(split_shards(parts, 1)) == 1


def test_near_duplicates_fold_onto_the_better_result():
    vectors = np.eye(4, dtype=np.float32)
    vectors = np.vstack([vectors, vectors[1] * 0.999 + vectors[2] * 0.04])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assert remove_near_duplicates(np.array([4, 0, 1, 2, -1]), vectors, 0.95).tolist() == [4, 0, 2]


def _clustered(rows: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(200, dim))
    vectors = centres[rng.integers(0, 200, rows)] + 0.6 * rng.normal(size=(rows, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)


def test_compressed_index_built_in_shards_matches_exact_search(tmp_path):
    score_dir, index_dir = str(tmp_path / "score"), str(tmp_path / "index")
    rows_per_part, dim = 5_000, 16
    vectors = _clustered(6 * rows_per_part, dim, seed=1)
    for number in range(6):  # parts 0, 2, 4, ...: numbers with gaps
        chunk = vectors[number * rows_per_part:(number + 1) * rows_per_part]
        keys = [f"{number:05d}{i:05d}" for i in range(rows_per_part)]
        write_part(score_dir, 2 * number, chunk, chunk[::-1],
                   pa.table({"key": keys, "TEXT": keys, "punsafe": np.linspace(0, 1, rows_per_part, dtype=np.float32)}))
    assert cli_main(["index", "--embeddings", score_dir, "--output", index_dir, "--index-shards", "3",
                     "--exact-max-rows", "10000", "--target-recall", "0.9", "--query-model", "ViT-B-32"]) == 0
    info = json.load(open(os.path.join(index_dir, "index_info.json")))
    assert info["index_type"].startswith("IVF") and ",PQ" in info["index_type"] and info["shards"] == 3
    assert info["rows"] == len(vectors) and info["indexes"]["image"]["recall_at_10"] >= 0.9
    assert info["clip"] == {"model": "ViT-B-32", "pretrained": None}
    assert not os.path.exists(os.path.join(index_dir, "building"))

    store = IndexStore(index_dir)
    search = store.searches["image"]
    assert search.index.ntotal == len(vectors) and not search.exact
    assert store.metadata["key"].to_pylist()[rows_per_part] == "0000100000"  # part 2, first row
    # every shard's ids are global row numbers: rows find themselves (4-byte codes miss a few)
    rows = np.arange(0, len(vectors), 97)
    assert (search.search(vectors[rows].astype(np.float32), 1)[1][:, 0] == rows).mean() >= 0.95
    # fresh queries near the data: recall@10 of the tuned search against brute force
    queries = vectors[rows].astype(np.float32) + 0.05 * np.random.default_rng(2).normal(size=(len(rows), dim))
    queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    truth, _ = exact_search(vectors, queries, 10)
    assert recall_at_k(search.search(queries, 10)[1], truth, queries, vectors) >= 0.85
    # a filter inside faiss: only allowed rows come back, still 10 of them
    allowed = store.metadata["punsafe"].to_numpy() < 0.1
    scores, ids = search.search(queries[:20], 10, allowed)
    assert (ids >= 0).all() and allowed[ids].all()
    metrics = json.load(open(os.path.join(index_dir, "metrics.json")))
    assert metrics["counters"]["index:rows_added"] == len(vectors)


@pytest.fixture(scope="module")
def real_score_dir(tmp_path_factory):
    if not os.path.isdir(DATA):
        pytest.skip(f"the shared real data is not at {DATA}")
    return build_score_dir(str(tmp_path_factory.mktemp("real")))


def test_real_scoring_output_indexed_with_metadata_vectors_and_thumbnails(real_score_dir, tmp_path):
    index_dir = str(tmp_path / "index")
    assert cli_main(["index", "--embeddings", real_score_dir["score_dir"], "--output", index_dir,
                     "--index-text"]) == 0
    store = IndexStore(index_dir)
    rows = real_score_dir["rows"]
    assert store.metadata["key"].to_pylist() == [r["key"] for r in rows]
    assert store.metadata["uid"].to_pylist() == [r["uid"] for r in rows]
    parts = list_parts(real_score_dir["score_dir"])
    for modality, name in (("image", "img_emb"), ("text", "text_emb")):
        expected = np.concatenate([load_embeddings(getattr(p, name)) for p in parts])
        assert np.array_equal(np.load(os.path.join(index_dir, f"{name}.npy")), expected)
        assert store.searches[modality].index.ntotal == len(rows)
    assert store.info["clip"]["model"] == real_score_dir["spec"].model  # from scoring.json
    assert store.info["thumbnails"] == len(rows)
    for i, row in enumerate(rows):
        thumb = Image.open(io.BytesIO(store.thumbnails.get(i)))
        assert thumb.format == "JPEG" and max(thumb.size) == min(256, max(row["WIDTH"], row["HEIGHT"]))
        assert thumb.width / thumb.height == pytest.approx(row["WIDTH"] / row["HEIGHT"], rel=0.05)
    errors = pq.read_table(os.path.join(index_dir, "errors")) if os.listdir(os.path.join(index_dir, "errors")) else None
    assert errors is None or errors.num_rows == 0


def test_bad_parts_and_images_are_counted_and_kept_out(real_score_dir, tmp_path):
    score_dir = str(tmp_path / "score")
    shutil.copytree(real_score_dir["score_dir"], score_dir)
    first = list_parts(score_dir)[0]
    metadata = pq.read_table(first.metadata)
    img, txt = load_embeddings(first.img_emb), load_embeddings(first.text_emb)
    # part 5: one image embedding fewer than metadata rows; part 6: another dimension
    write_part(score_dir, 5, img[:3], txt[:3], metadata.slice(0, 3))
    os.replace(os.path.join(score_dir, "img_emb", "img_emb_5.npy"), os.path.join(score_dir, "img_emb", "tmp.npy"))
    np.save(os.path.join(score_dir, "img_emb", "img_emb_5.npy"), img[:2])
    write_part(score_dir, 6, np.ones((3, 8), np.float16), np.ones((3, 8), np.float16), metadata.slice(0, 3))
    # part 7: a missing tar, a key the tar does not hold, and bytes that are no image
    writer = ShardWriter(str(tmp_path / "download"), 7, fsync=False)
    bad_key = writer.write({"URL": "https://x/y.jpg", "TEXT": "broken"},
                           ProcessedImage(b"\xff\xd8\xff garbage", 10, 10, 10, 10, "0" * 64, "jpeg"))
    writer.close()
    broken = metadata.slice(0, 3).to_pylist()
    broken[0]["shard"] = str(tmp_path / "download" / "99999.tar")
    broken[1]["key"] = "000079999"
    broken[2].update(shard=writer.tar_path, key=bad_key)
    write_part(score_dir, 7, img[:3], txt[:3], pa.Table.from_pylist(broken, schema=metadata.schema))
    # part 8: its image embeddings cut short of what their header promises
    write_part(score_dir, 8, img[:3], txt[:3], metadata.slice(0, 3))
    truncated = os.path.join(score_dir, "img_emb", "img_emb_8.npy")
    os.truncate(truncated, os.path.getsize(truncated) - 10)

    index_dir = str(tmp_path / "index")
    assert cli_main(["index", "--embeddings", score_dir, "--output", index_dir]) == 0
    store = IndexStore(index_dir)
    assert store.rows == len(real_score_dir["rows"]) + 3 and store.info["parts"] == [0, 2, 7]
    assert store.info["thumbnails"] == len(real_score_dir["rows"])
    errors = pq.read_table(os.path.join(index_dir, "errors")).to_pylist()
    assert sorted(e["reason"] for e in errors) == ["bad_image", "dim_mismatch", "image_missing",
                                                   "part_misaligned", "part_unreadable", "shard_unreadable"]
    assert "its header promises" in next(e["detail"] for e in errors if e["reason"] == "part_unreadable")
    assert {e["url"] for e in errors if e["reason"] == "image_missing"} == {broken[1]["URL"]}
    counters = json.load(open(os.path.join(index_dir, "metrics.json")))["counters"]
    assert counters["index:error_part_misaligned"] == counters["index:error_bad_image"] == 1
    assert counters["index:without_thumbnail"] == 3


def test_invalid_options_fail_fast(tmp_path, capsys):
    assert cli_main(["index", "--output", str(tmp_path / "i")]) == 2
    assert "give --input SCORE_DIR" in capsys.readouterr().err
    assert cli_main(["index", "--input", str(tmp_path), "--embeddings", str(tmp_path),
                     "--output", str(tmp_path / "i")]) == 2
    assert "not both" in capsys.readouterr().err
    assert cli_main(["index", "--embeddings", str(tmp_path), "--output", str(tmp_path / "i"),
                     "--max-memory", "lots", "--index-shards", "0", "--exact-max-rows", "-1"]) == 2
    err = capsys.readouterr().err
    assert "not a scoring output" in err and "--max-memory" in err and "--index-shards must be >= 1" in err
    assert "--exact-max-rows must be >= 0" in err
    score_dir = str(tmp_path / "score")
    vectors = _clustered(20_000, 64, seed=3)
    write_part(score_dir, 0, vectors, vectors, pa.table({"key": [str(i) for i in range(20_000)]}))
    assert cli_main(["index", "--embeddings", score_dir, "--output", str(tmp_path / "i"), "--max-memory", "100KB"]) == 1
    assert "memory budget" in capsys.readouterr().err


def test_a_rebuild_replaces_the_index_and_is_unfinished_until_its_info(real_score_dir, tmp_path):
    index_dir = str(tmp_path / "index")
    assert cli_main(["index", "--input", real_score_dir["score_dir"], "--output", index_dir]) == 0
    assert IndexStore(index_dir).thumbnails is not None
    first_index = open(os.path.join(index_dir, "image.index"), "rb").read()
    os.makedirs(os.path.join(index_dir, "building"))  # an earlier build's leftovers
    open(os.path.join(index_dir, "building", "shard_00009.image.index"), "wb").close()

    plan = prepare_index(real_score_dir["score_dir"], index_dir, ["image"], 2**30, 2, 0.95, False, None)
    assert not os.path.exists(os.path.join(index_dir, "index_info.json"))  # the old info went first
    assert os.listdir(os.path.join(index_dir, "building")) == ["trained.image.index"]
    with pytest.raises(FileNotFoundError, match="not a finished"):
        IndexStore(index_dir)
    assert len(plan.shards) == 2

    assert cli_main(["index", "--input", real_score_dir["score_dir"], "--output", index_dir, "--no-thumbnails"]) == 0
    store = IndexStore(index_dir)
    assert store.thumbnails is None  # the first build's thumbnail files are still there, but not this index's
    assert open(os.path.join(index_dir, "image.index"), "rb").read() == first_index
    assert sorted(n for n in os.listdir(index_dir) if n.startswith(".") or n == "building") == []


def test_a_remote_index_needs_its_filesystem_flags(tmp_path, capsys):
    for argv in (["subset", "--index", "hdfs://runs/1/index", "--all", "--output", str(tmp_path / "s.parquet")],
                 ["serve", "hdfs://runs/1/index"]):
        with pytest.raises(SystemExit) as exit_:
            cli_main(argv)
        assert exit_.value.code == 2
        assert "give --hdfs_host, --hdfs_port, --hdfs_user" in capsys.readouterr().err
    assert cli_main(["index", "--input", "hdfs://runs/1/score", "--output", str(tmp_path / "i")]) == 2
    assert "--input hdfs://runs/1/score: give --hdfs_host" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []  # refused before any work
