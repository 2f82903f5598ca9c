"""Content heads (models/heads.py), the committed watermark head, and `crawl2clip train-head`."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from crawl2clip.models.clip import ASSETS, load_clip, tiny_clip_spec
from crawl2clip.models.heads import (
    DEFAULT_PROMPTS,
    ZeroShotHead,
    load_head,
    roc_auc,
    save_head,
    train_head,
)
from crawl2clip.models.watermark import HEAD_HELD_OUT_SEED, HELD_OUT_TEXTS, watermark_examples
from crawl2clip.pipelines.cli import main as cli
from crawl2clip.transforms.embeddings import write_part
from crawl2clip.transforms.score.content import tag_sources

WATERMARK_HEAD = os.path.join(ASSETS, "watermark-head.npz")


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _ring_data(seed: int, count: int, dim: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors labelled by |first coordinate| above its median: no linear rule separates them."""
    x = _unit(np.random.default_rng(seed).normal(size=(count, dim)))
    return x, (np.abs(x[:, 0]) > 0.12).astype(int)


@pytest.fixture(scope="module")
def tiny_clip():
    return load_clip(tiny_clip_spec(device="cpu"))


def test_roc_auc_agrees_with_scikit_learn_including_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    for scores in (rng.normal(size=500), rng.integers(0, 4, 500).astype(float), labels + rng.normal(0, 0.5, 500)):
        assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.ones(3), np.arange(3))


def test_an_mlp_head_learns_a_nonlinear_rule_that_logistic_regression_cannot():
    x, y = _ring_data(1, 3000)
    held_x, held_y = _ring_data(2, 1000)
    mlp = train_head(x, y, name="ring", clip_model="none", hidden=32, steps=500)
    logistic = train_head(x, y, name="ring", clip_model="none", hidden=0, steps=200)
    assert roc_auc(held_y, mlp.predict(held_x)) >= 0.95
    assert roc_auc(held_y, logistic.predict(held_x)) < 0.7
    probabilities = mlp.predict(held_x.astype(np.float16))
    assert probabilities.dtype == np.float32 and probabilities.min() >= 0 and probabilities.max() <= 1


def test_training_is_deterministic_for_a_seed():
    x, y = _ring_data(3, 800)
    a, b = (train_head(x, y, name="h", clip_model="m", steps=100, seed=5) for _ in range(2))
    c = train_head(x, y, name="h", clip_model="m", steps=100, seed=6)
    assert all(np.array_equal(p, q) for p, q in zip(a.weights + a.biases, b.weights + b.biases))
    assert not np.array_equal(a.weights[0], c.weights[0])


def test_bad_labels_are_refused():
    x, _ = _ring_data(4, 10)
    with pytest.raises(ValueError, match="0/1"):
        train_head(x, np.arange(10), name="h", clip_model="m")
    with pytest.raises(ValueError, match="both classes"):
        train_head(x, np.ones(10), name="h", clip_model="m")
    with pytest.raises(ValueError, match="one label per row"):
        train_head(x, np.ones(9), name="h", clip_model="m")


def test_a_saved_head_loads_with_its_metadata_and_predicts_the_same(tmp_path):
    x, y = _ring_data(5, 600)
    head = train_head(x, y, name="ring", clip_model="crawl2clip-tiny", steps=50)
    path = str(tmp_path / "ring.npz")
    save_head(head, path)
    loaded = load_head(path)
    np.testing.assert_array_equal(loaded.predict(x), head.predict(x))
    assert loaded.metadata["name"] == "ring" and loaded.metadata["embed_dim"] == 32
    assert loaded.describe()["source"] == "file" and loaded.describe()["clip_model"] == "crawl2clip-tiny"
    with pytest.raises(ValueError, match=r"\(rows, 32\)"):
        loaded.predict(np.zeros((2, 64), np.float32))
    np.savez(tmp_path / "other.npz", w0=np.zeros((2, 1)))
    with pytest.raises(ValueError, match="not a crawl2clip head"):
        load_head(str(tmp_path / "other.npz"))


def test_the_committed_watermark_head_finds_unseen_watermarks(tiny_clip):
    head = load_head(WATERMARK_HEAD)
    assert head.metadata["clip_model"] == "crawl2clip-tiny" and head.embed_dim == tiny_clip.embed_dim
    # held out: scenes of a seed the head never saw, with watermark words kept out of its training
    images, labels = watermark_examples(HEAD_HELD_OUT_SEED + 1, 400, texts=HELD_OUT_TEXTS)
    scores = head.predict(tiny_clip.encode_images(tiny_clip.preprocess_images(images)))
    assert roc_auc(labels, scores) >= 0.9


def test_zero_shot_heads_are_labelled_and_see_watermarks_a_little(tiny_clip):
    positive, negative = DEFAULT_PROMPTS["watermark"]
    head = ZeroShotHead(tiny_clip, positive, negative, clip_model="crawl2clip-tiny")
    described = head.describe()
    assert described["source"] == "zero-shot"
    assert described["positive_prompts"] == list(DEFAULT_PROMPTS["watermark"][0])
    images, labels = watermark_examples(HEAD_HELD_OUT_SEED + 2, 300, texts=HELD_OUT_TEXTS)
    scores = head.predict(tiny_clip.encode_images(tiny_clip.preprocess_images(images)))
    assert roc_auc(labels, scores) > 0.6   # weaker than the trained head, but not blind
    with pytest.raises(ValueError, match="positive and negative prompts"):
        ZeroShotHead(tiny_clip, positive, ())


def test_a_head_for_another_embedding_size_is_refused(tmp_path):
    x, y = _ring_data(6, 100)
    save_head(train_head(x, y, name="h", clip_model="other", steps=5), str(tmp_path / "h.npz"))
    spec = tiny_clip_spec(device="cpu")
    with pytest.raises(ValueError, match="unsafe head on 32-d embeddings, but crawl2clip-tiny embeds images in 64-d"):
        tag_sources(spec, 64, {"unsafe": str(tmp_path / "h.npz")}, None, zero_shot=False)


def _score_dir(tmp_path, seed: int) -> tuple[str, np.ndarray]:
    """A scoring output of two parts whose image embeddings hold the ring rule; returns the labels."""
    x, y = _ring_data(seed, 1200)
    directory = str(tmp_path / "score")
    for number, rows in ((3, slice(0, 700)), (8, slice(700, 1200))):
        uids = [f"{i:032x}" for i in range(1200)][rows]
        write_part(directory, number, x[rows], x[rows], pa.table({"uid": uids}))
    with open(os.path.join(directory, "scoring.json"), "w") as f:
        json.dump({"models": {"en": {"model": "crawl2clip-tiny", "pretrained": "x.pt"}}}, f)
    return directory, y


def test_train_head_command_joins_labels_to_a_score_dir_on_uid(tmp_path, capsys):
    directory, y = _score_dir(tmp_path, 7)
    uids = [f"{i:032x}" for i in range(1200)]
    labels = [bool(v) for v in y]
    labels[5] = None                               # unlabelled rows are left out
    order = np.random.default_rng(0).permutation(1200)  # labels in any order
    pq.write_table(pa.table({"uid": [uids[i] for i in order], "is_ring": [labels[i] for i in order]}),
                   tmp_path / "labels.parquet")
    out = str(tmp_path / "ring-head.npz")
    assert cli(["train-head", "--embeddings", directory, "--labels", str(tmp_path / "labels.parquet"),
                "--label-column", "is_ring", "--output", out, "--steps", "500"]) == 0
    head = load_head(out)
    assert head.metadata["clip_model"] == "crawl2clip-tiny" and head.name == "is_ring"
    assert head.metadata["evaluation"]["unlabelled_rows"] == 1
    assert head.metadata["evaluation"]["held_out_auc"] >= 0.9
    held_x, held_y = _ring_data(8, 500)
    assert roc_auc(held_y, head.predict(held_x)) >= 0.9
    assert "Written: " in capsys.readouterr().out


def test_train_head_command_reads_a_npy_with_labels_in_row_order(tmp_path, capsys):
    x, y = _ring_data(9, 900)
    np.save(tmp_path / "emb.npy", x.astype(np.float16))
    pq.write_table(pa.table({"toxic": y}), tmp_path / "labels.parquet")
    out = str(tmp_path / "text-head.npz")
    args = ["train-head", "--embeddings", str(tmp_path / "emb.npy"), "--labels", str(tmp_path / "labels.parquet"),
            "--label-column", "toxic", "--output", out, "--input", "text", "--steps", "300"]
    assert cli(args) == 2                           # no scoring.json: the CLIP must be named
    assert "--clip-model" in capsys.readouterr().err
    assert cli(args + ["--clip-model", "ViT-B-32"]) == 0
    assert load_head(out).metadata["input"] == "text"
    pq.write_table(pa.table({"toxic": y[:10]}), tmp_path / "short.parquet")
    assert cli(args[:4] + [str(tmp_path / "short.parquet")] + args[5:] + ["--clip-model", "x"]) == 2
    assert "same row order" in capsys.readouterr().err
