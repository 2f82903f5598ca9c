"""The scoring stage's plain functions, without Beam: reading download shards, decoding,
scoring with real (random-weight) CLIPs, drop decisions and the metadata table."""

import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from crawl2clip.models.clip import load_clip
from crawl2clip.transforms.extract.rules import pair_uid
from crawl2clip.transforms.score.filters import LOW_SIMILARITY, drop_reasons
from crawl2clip.transforms.score.images import prefetched, prepare_image, prepare_pixels
from crawl2clip.transforms.score.pixels import PixelSpec, normalise
from crawl2clip.transforms.score.scoring import ScoredShard, ShardGroup, Towers, score_shard, score_shards
from crawl2clip.transforms.score.settings import EN, MULTI, BatchSizes, Thresholds, route_of
from crawl2clip.transforms.score.shards import read_shard
from crawl2clip.transforms.score.write import METADATA_FIELDS, metadata_table, uid_hash
from tests.score_fixtures import register_random_tiny, replace_tar_member, scene_pairs, write_download_shard


@pytest.fixture(scope="module")
def random_spec(tmp_path_factory):
    return register_random_tiny(str(tmp_path_factory.mktemp("configs")))


@pytest.fixture(scope="module")
def scenes():
    return scene_pairs(seed=4242, count=12)


def test_read_shard_takes_successes_with_their_images_and_reports_missing_ones(tmp_path, scenes):
    rows = write_download_shard(str(tmp_path), 7, [(data, caption, EN) for data, caption in scenes[:4]])
    replace_tar_member(str(tmp_path / "00007.tar"), "000070002.jpg", None)
    pairs = read_shard(str(tmp_path), 7)
    assert pairs.table["key"].to_pylist() == ["000070000", "000070001", "000070003"]
    assert pairs.images == [scenes[0][0], scenes[1][0], scenes[3][0]]
    assert pairs.table["TEXT"].to_pylist() == [rows[i]["TEXT"] for i in (0, 1, 3)]
    assert pairs.tar_path == os.path.abspath(tmp_path / "00007.tar")
    (error,) = pairs.errors
    assert error["reason"] == "missing_image" and error["url"] == rows[2]["URL"]


def test_an_unreadable_shard_is_one_error_not_a_crash(tmp_path, scenes):
    write_download_shard(str(tmp_path), 1, [(scenes[0][0], scenes[0][1], EN)])
    (tmp_path / "00001.parquet").write_bytes(b"PAR1 not really")
    pairs = read_shard(str(tmp_path), 1)
    assert pairs.read_failed and len(pairs) == 0
    assert [e["reason"] for e in pairs.errors] == ["unreadable_shard"]


def test_prepare_image_matches_the_models_preprocess_and_reports_broken_bytes(random_spec, scenes):
    model = load_clip(random_spec)
    data = scenes[0][0]
    prepared = prepare_image(data, model.preprocess)
    expected = model.preprocess(Image.open(io.BytesIO(data)).convert("RGB"))
    assert prepared.error == "" and torch.equal(prepared.pixels, expected)
    for broken in (data[: len(data) // 3], b"<html>not an image</html>", b""):
        result = prepare_image(broken, model.preprocess)
        assert result.pixels is None and result.error


def test_prefetched_prepares_ahead_and_yields_in_order():
    started: list[int] = []
    lock = threading.Lock()

    def prepare(i: int) -> int:
        with lock:
            started.append(i)
        return i * 10

    chunks = [[0, 1], [2, 3], [4, 5], [6]]
    with ThreadPoolExecutor(2) as pool:
        seen = []
        for chunk, results in prefetched(pool, chunks, prepare, depth=2):
            if chunk == [0, 1]:
                time.sleep(0.2)  # the consumer is busy: the next chunks are prepared meanwhile
                assert {2, 3, 4, 5} <= set(started)
            seen.append((chunk, results))
    assert seen == [(c, [i * 10 for i in c]) for c in chunks]


def _pairs_for(tmp_path, scenes, splits):
    write_download_shard(str(tmp_path), 0, [(d, c, s) for (d, c), s in zip(scenes, splits)])
    return read_shard(str(tmp_path), 0)


def test_score_shard_embeds_every_image_with_one_tower_and_captions_with_their_routes(tmp_path, random_spec, scenes):
    clip, multi_text = load_clip(random_spec), load_clip(random_spec)  # two draws: different weights
    splits = [EN, "multi", "nolang", None] * 3
    pairs = _pairs_for(tmp_path, scenes, splits)
    towers = Towers(clip, {EN: clip, MULTI: multi_text})
    scored = score_shard(pairs, towers, BatchSizes(images=5, texts=3, decode_workers=2))
    assert len(scored) == len(scenes) and not scored.errors and scored.images == []
    np.testing.assert_allclose(np.linalg.norm(scored.img_emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(scored.text_emb, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(scored.similarity, np.sum(scored.img_emb * scored.text_emb, axis=1), atol=1e-6)
    spec = PixelSpec.of(clip.preprocess_cfg)
    for i, ((data, caption), split) in enumerate(zip(scenes[:4], splits)):  # one row of each split
        alone = clip.encode_images(normalise(prepare_pixels(data, spec).pixels[None], spec))
        np.testing.assert_allclose(scored.img_emb[i], alone[0], atol=1e-4)  # every image: the one image tower
        today = clip.encode_images(clip.preprocess(Image.open(io.BytesIO(data)).convert("RGB"))[None])
        assert float(scored.img_emb[i] @ today[0]) > 0.9999  # open_clip's own preprocessing
        text_tower = clip if route_of(split) == EN else multi_text
        np.testing.assert_allclose(scored.text_emb[i], text_tower.encode_texts([caption])[0], atol=1e-4)
    again = score_shard(pairs, towers, BatchSizes(images=64, texts=64, decode_workers=1), keep_images=True)
    np.testing.assert_allclose(again.img_emb, scored.img_emb, atol=1e-4)
    np.testing.assert_allclose(again.text_emb, scored.text_emb, atol=1e-4)
    assert again.images == [data for data, _ in scenes]  # kept for a later step that reads pixels


def test_batches_run_across_shards_and_results_come_back_per_shard(tmp_path, random_spec, scenes):
    """Three shards (5, 0 and 7 pairs, one image broken) scored as one stream of batches of 4:
    the same embeddings as each shard alone, errors and rows back in their own shard."""
    clip = load_clip(random_spec)
    towers = Towers(clip, {EN: clip, MULTI: clip})
    sizes = [5, 0, 7]
    for number, size in enumerate(sizes):
        start = sum(sizes[:number])
        pairs = [(d if start + i != 7 else d[:40], c, EN if i % 2 else "multi")
                 for i, (d, c) in enumerate(scenes[start:start + size])]
        write_download_shard(str(tmp_path), number, pairs)
    shards = [read_shard(str(tmp_path), number) for number in range(3)]
    together = score_shards(shards, towers, BatchSizes(images=4, texts=3, decode_workers=2))
    alone = [score_shard(shard, towers, BatchSizes(images=64, texts=64)) for shard in shards]
    assert [s.number for s in together] == [0, 1, 2] and [len(s) for s in together] == [5, 0, 6]
    assert [e["detail"][:9] for e in together[2].errors] == ["000020002"] and not together[0].errors
    for got, expected in zip(together, alone):
        assert got.table.equals(expected.table)
        np.testing.assert_allclose(got.img_emb, expected.img_emb, atol=1e-5)
        np.testing.assert_allclose(got.text_emb, expected.text_emb, atol=1e-5)
    assert len(ShardGroup(shards)) == 12


def test_undecodable_images_leave_the_shard_as_error_records(tmp_path, random_spec, scenes):
    model = load_clip(random_spec)
    broken = [(d if i not in (1, 4) else d[:40], c) for i, (d, c) in enumerate(scenes[:6])]
    pairs = _pairs_for(tmp_path, broken, [EN] * 6)
    scored = score_shard(pairs, Towers(model, {EN: model, MULTI: model}), BatchSizes(images=4, texts=4),
                         keep_images=True)
    assert scored.table["key"].to_pylist() == [f"0000000{i:02d}" for i in (0, 2, 3, 5)]
    assert [e["reason"] for e in scored.errors] == ["undecodable_image"] * 2
    assert [e["detail"][:9] for e in scored.errors] == ["000000001", "000000004"]
    assert scored.img_emb.shape == scored.text_emb.shape == (4, model.embed_dim)
    np.testing.assert_allclose(scored.text_emb[1], model.encode_texts([scenes[2][1]])[0], atol=1e-4)
    assert scored.images == [broken[i][0] for i in (0, 2, 3, 5)]  # aligned with the rows that decoded


def test_drop_reasons_apply_each_splits_threshold_and_optional_content_limits():
    routes = [EN, EN, MULTI, MULTI, EN]
    similarity = np.array([0.30, 0.27, 0.27, 0.25, 0.35], np.float32)
    tags = {"punsafe": np.array([0.9, 0.9, 0.1, 0.1, 0.6], np.float32),
            "pwatermark": np.zeros(5, np.float32), "ptoxic": np.zeros(5, np.float32)}
    assert drop_reasons(routes, similarity, tags, Thresholds()) == [None, LOW_SIMILARITY, None, LOW_SIMILARITY, None]
    strict = Thresholds(max_tags={"punsafe": 0.5})
    assert drop_reasons(routes, similarity, tags, strict) == ["unsafe", LOW_SIMILARITY, None, LOW_SIMILARITY, "unsafe"]
    assert drop_reasons(routes, similarity, tags, Thresholds(max_tags={"punsafe": 0.5}, score_only=True)) == [None] * 5


def test_metadata_table_has_laions_columns_and_carries_the_input_columns():
    uid = pair_uid("http://a/1.jpg", "a red star")
    table = pa.table({"URL": ["http://a/1.jpg", "http://a/2.jpg"], "TEXT": ["a red star", "a blue ring"],
                      "uid": [uid, None], "split": ["en", "multi"], "LANGUAGE": ["en", "de"], "page_url": ["p1", "p2"],
                      "key": ["000010000", "000010001"], "status": ["success"] * 2, "width": [64, 64],
                      "height": [64, 64], "original_width": [640, 300], "original_height": [480, 200],
                      "sha256": ["aa", "bb"], "error_message": [None, None]})
    shard = ScoredShard(1, "/data/00001.tar", table, np.zeros((2, 4), np.float32), np.zeros((2, 4), np.float32),
                        np.array([0.3, 0.1], np.float32),
                        tags={"punsafe": np.array([0.1, 0.2], np.float32), "pwatermark": np.array([0.5, np.nan], np.float32),
                              "aesthetic": None, "ptoxic": np.array([0.0, 1.0], np.float32)})
    meta = metadata_table(shard)
    assert meta.column_names == [f.name for f in METADATA_FIELDS] + ["page_url"]
    assert meta.schema.field("similarity").type == pa.float32() and meta.schema.field("hash").type == pa.int64()
    rows = meta.to_pylist()
    assert (rows[0]["WIDTH"], rows[0]["HEIGHT"], rows[1]["WIDTH"]) == (640, 480, 300)
    assert rows[1]["uid"] == pair_uid("http://a/2.jpg", "a blue ring")  # computed when the input had none
    assert rows[0]["hash"] == uid_hash(uid) == int.from_bytes(bytes.fromhex(uid[:16]), "big", signed=True)
    assert rows[0]["shard"] == "/data/00001.tar" and rows[1]["ptoxic"] == 1.0
    # a tag not computed is a null column, a value a model could not give is a null cell
    assert [r["aesthetic"] for r in rows] == [None, None] and [r["pwatermark"] for r in rows] == [0.5, None]
