"""`crawl2clip compare`: variants of a real run (the sample crawl through the whole pipeline),
trained by open_clip's own trainer on real webdataset shards, evaluated, compared.

The evaluation numbers are checked against recall and accuracy worked out by hand on tiny
fixtures; the training runs are real (the tiny CLIP's architecture, a few steps each), and what
they did is read back from the trainer's own params.txt and out.log.
"""

import glob
import io
import json
import os
import shutil
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import webdataset as wds
from PIL import Image

from crawl2clip.models.clip import ClipSpec, load_clip, tiny_clip_spec
from crawl2clip.pipelines.cli import main
from crawl2clip.pipelines.compare_demo import write_zero_shot_folders
from crawl2clip.pipelines.replay import replay_proxy
from crawl2clip.pipelines.sample_crawl import Gallery, picture_bytes, write_sample_crawl
from crawl2clip.transforms.compare.evaluate import (
    class_embeddings,
    evaluate,
    load_zero_shot,
    read_class_folders,
    retrieval_recall,
    zero_shot_accuracy,
)
from crawl2clip.transforms.compare.pairs import is_held_out, read_downloaded, split_held_out
from crawl2clip.transforms.compare.shards import write_shards
from crawl2clip.transforms.compare.train import read_training
from crawl2clip.transforms.compare.variants import parse_variants, safe_limits, under_limits
from tests.browser import chromium_page

RUN_FLAGS = ["--tiny-clip", "--min-similarity-en", "0.45", "--min-similarity-multi", "0.45",
             "--image-size", "64", "--shard-size", "25", "--min-image-bytes", "0",
             "--prune", "--keep-fraction", "0.5", "--prune-clusters", "4"]
VARIANTS = ["raw", "clip", "clip+safe", "dbp", "dbp:0.3"]
SLUGS = [v.replace(":", "-") for v in VARIANTS]
STEPS, EPOCHS, BATCH = 4, 2, 16
COMPARE_FLAGS = ["--variants", ",".join(VARIANTS), "--steps", str(STEPS), "--epochs", str(EPOCHS),
                 "--batch-size", str(BATCH), "--workers", "1", "--device", "cpu", "--held-out-fraction", "0.2"]


# ---------------------------------------------------------------- evaluation, by hand


def _unit(*rows):
    rows = np.array(rows, np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_recall_matches_the_hand_computed_one():
    """Three images, four captions (image 0 has two). Scores are dot products of the vectors below:

             img0  img1  img2
      t0     1.0   0.0   0.6     t0 -> img0 ranked 1st
      t1     0.0   1.0   0.8     t1 (image 0's second caption) -> img0 ranked 3rd (0.0 < 0.8 < 1.0)
      t2     0.6   0.8   1.0     t2 -> img1 ranked 2nd (img2 scores 1.0)
      t3     0.8   0.6   0.96    t3 -> img2 ranked 1st

    text -> image: hits at 1: t0, t3 (2 of 4); at 5 (and 10): all four.
    image -> text: img0's best caption t0 (1.0) is 1st; img1's only caption t2 (0.8) has t1 (1.0)
    ahead: 2nd; img2's caption t3 (0.96) has t2 (1.0) ahead: 2nd. At 1: 1 of 3; at 5: 3 of 3.
    """
    images = _unit([1, 0], [0, 1], [0.6, 0.8])
    texts = _unit([1, 0], [0, 1], [0.6, 0.8], [0.8, 0.6])
    scores = texts @ images.T
    assert scores[3, 2] == pytest.approx(0.96)
    recall = retrieval_recall(images, texts, np.array([0, 0, 1, 2]))
    assert recall["text_to_image"] == {1: 0.5, 5: 1.0, 10: 1.0}
    assert recall["image_to_text"] == {1: pytest.approx(1 / 3), 5: 1.0, 10: 1.0}
    # with k = 2: t1 is still out (3rd); img1 and img2 come in
    assert retrieval_recall(images, texts, np.array([0, 0, 1, 2]), ks=(2,)) == \
        {"image_to_text": {2: 1.0}, "text_to_image": {2: 0.75}}


def test_a_tie_counts_against_the_right_answer():
    """A model that embeds everything alike ranks nothing: every wrong candidate ties with the right one."""
    same = _unit([1, 1], [1, 1], [1, 1], [1, 1])
    recall = retrieval_recall(same, same, np.arange(4), ks=(1, 3, 4))
    assert recall["text_to_image"] == {1: 0.0, 3: 0.0, 4: 1.0}
    assert recall["image_to_text"] == {1: 0.0, 3: 0.0, 4: 1.0}


def test_zero_shot_accuracy_and_prompt_ensembles_by_hand():
    """Each class is the renormalised mean of its prompts' embeddings: prompts at (1, 0) and
    (0, 1) for "a" give the class vector (0.707, 0.707)."""
    prompts = {"a one": [1, 0], "a two": [0, 1], "b one": [-1, 0], "b two": [-1, 0.01]}
    encode = lambda texts: _unit(*[prompts[t] for t in texts])  # noqa: E731
    classes = class_embeddings(encode, ["a", "b"], ("{c} one", "{c} two"))
    np.testing.assert_allclose(classes[0], [2 ** -0.5, 2 ** -0.5], atol=1e-6)
    # three images of class a (one of them closer to b), one of class b
    images = _unit([1, 1], [0.2, 1], [-1, 0.3], [-1, 0])
    result = zero_shot_accuracy(images, np.array([0, 0, 0, 1]), classes, ks=(1, 2))
    assert result["top1"] == 0.75  # the third image goes to b
    assert result["top2"] is None  # two classes: top-2 says nothing
    assert result["mean_per_class_recall"] == pytest.approx((2 / 3 + 1) / 2)


def test_class_folders_and_their_prompts(tmp_path):
    assert write_zero_shot_folders(str(tmp_path), per_class=2) == 24
    folders = read_class_folders(str(tmp_path))
    assert len(folders.classnames) == 12 and "red" in folders.classnames
    assert folders.templates[0] == "a photo of a {c} circle" and len(folders.templates) == 16
    (tmp_path / "red" / "broken.png").write_bytes(b"not a picture")
    loaded = load_zero_shot(read_class_folders(str(tmp_path)))
    assert len(loaded.images) == 24 and [e["reason"] for e in loaded.errors] == ["unreadable_zero_shot_image"]
    with pytest.raises(ValueError, match="at least two class folders"):
        read_class_folders(str(tmp_path / "red"))
    (tmp_path / "templates.txt").write_text("a photo of something\n")
    with pytest.raises(ValueError, match=r"\{c\}"):
        read_class_folders(str(tmp_path))


def test_the_committed_tiny_clip_tells_the_rendered_colours_apart(tmp_path):
    """The zero-shot path on a real model: the project's tiny CLIP knows colours."""
    write_zero_shot_folders(str(tmp_path), per_class=6)
    zero_shot = load_zero_shot(read_class_folders(str(tmp_path)))
    result = evaluate(load_clip(tiny_clip_spec("cpu")), _no_held_out(), zero_shot)
    assert result["zero_shot"]["images"] == 72 and result["zero_shot"]["classes"] == 12
    assert result["zero_shot"]["top1"] >= 0.6  # chance: 1/12
    assert result["zero_shot"]["top5"] >= result["zero_shot"]["top1"]


def _no_held_out():
    from crawl2clip.transforms.compare.evaluate import HeldOut

    return HeldOut([], [], np.zeros(0, np.int64))


# ---------------------------------------------------------------- selection units


def test_held_out_is_seeded_and_keeps_an_image_on_one_side():
    groups = [f"{i:064x}" for i in range(4000)]
    share = np.mean([is_held_out(g, 0, 0.1) for g in groups])
    assert 0.08 < share < 0.12
    assert [is_held_out(g, 0, 0.1) for g in groups] == [is_held_out(g, 0, 0.1) for g in groups]
    assert [is_held_out(g, 1, 0.1) for g in groups] != [is_held_out(g, 0, 0.1) for g in groups]
    pairs = pa.table({"uid": ["a", "b", "c", "d"], "key": ["1", "2", "3", "4"], "TEXT": ["w", "x", "y", "z"],
                      "sha256": ["same", "same", "other", None], "shard": ["s"] * 4})
    for seed in range(40):
        pool, held = split_held_out(pairs, seed, 0.5)
        assert pool.num_rows + held.num_rows == 4
        assert ("a" in held["uid"].to_pylist()) == ("b" in held["uid"].to_pylist())  # one image, one side
    many = pa.table({"uid": [str(i) for i in range(200)], "key": [str(i) for i in range(200)],
                     "TEXT": ["t"] * 200, "sha256": [f"{i // 2:064x}" for i in range(200)], "shard": ["s"] * 200})
    pool, held = split_held_out(many, 0, 0.5, max_images=7)  # about 50 images under 0.5: the 7 smallest
    assert held.num_rows == 14 and len(set(held["sha256"].to_pylist())) == 7 and pool.num_rows == 186


def test_variant_names():
    assert [v.name for v in parse_variants("raw,clip,clip+safe,dbp,dbp:0.25")] == \
        ["raw", "clip", "clip+safe", "dbp", "dbp:0.25"]
    assert parse_variants("dbp:0.5")[0].slug == "dbp-0.5"
    for bad, message in (("raw,nope", "unknown variant"), ("clip:0.5", "only dbp"), ("dbp:0", r"\(0, 1\]"),
                         ("dbp:x", r"\(0, 1\]"), ("raw,raw", "twice"), ("", "unknown variant")):
        with pytest.raises(ValueError, match=message):
            parse_variants(bad)


def test_safe_limits_say_what_was_not_computed():
    scoring = {"tags": {"punsafe": {"source": "not computed"}, "pwatermark": {"source": "file"}},
               "toxicity": {"source": "lexicon"}, "thresholds": {"max_tags": {"ptoxic": 0.4}}}
    limits, notes = safe_limits(scoring, {"punsafe": 0.5, "pwatermark": 0.8})
    assert limits == {"pwatermark": 0.8, "ptoxic": 0.4}
    assert notes["punsafe"] == "not computed: no limit"
    assert "LAION's cut-off" in notes["pwatermark"] and "the run's --max-ptoxic" in notes["ptoxic"]
    rows = pa.table({"uid": ["a", "b", "c", "d"], "pwatermark": [0.1, 0.9, None, 0.8],
                     "ptoxic": [0.0, 0.0, 0.0, 0.5], "punsafe": [0.99, 0.0, 0.0, 0.0]})
    assert under_limits(rows, limits)["uid"].to_pylist() == ["a", "c"]


# ---------------------------------------------------------------- a real run, compared


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare-run")
    crawl = str(root / "sample.warc.gz")
    write_sample_crawl(crawl, pages=80)
    with replay_proxy(crawl) as (proxy, _):
        assert main(["run", "--input", crawl, "--output", str(root / "run"), "--proxy", proxy, *RUN_FLAGS]) == 0
    return str(root / "run")


@pytest.fixture(scope="module")
def zero_shot_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero-shot")
    write_zero_shot_folders(str(root), per_class=3)
    return str(root)


@pytest.fixture(scope="module")
def compared(run_dir, zero_shot_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("compared") / "out")
    assert main(["compare", "--run", run_dir, "--output", out, "--zero-shot-dir", zero_shot_dir, *COMPARE_FLAGS]) == 0
    return out


def _comparison(out: str) -> dict:
    with open(os.path.join(out, "comparison.json")) as f:
        return json.load(f)


def _shard_uids(folder: str) -> list[str]:
    """The uids of every sample of a folder's shards, read back with webdataset."""
    shards = sorted(glob.glob(os.path.join(folder, "*.tar")))
    return [json.loads(sample["json"])["uid"] for sample in wds.WebDataset(shards, shardshuffle=False)]


def test_held_out_pairs_are_in_no_variant(compared):
    held = pq.read_table(os.path.join(compared, "held-out", "rows.parquet"))["uid"].to_pylist()
    assert len(held) > 10
    assert sorted(_shard_uids(os.path.join(compared, "held-out"))) == sorted(held)
    for slug in SLUGS:
        uids = _shard_uids(os.path.join(compared, "variants", slug))
        assert uids and not set(uids) & set(held), slug
        rows = pq.read_table(os.path.join(compared, "variants", slug, "rows.parquet"))
        assert sorted(uids) == sorted(rows["uid"].to_pylist())


def test_variants_select_what_they_say(compared, run_dir):
    uids = {slug: set(_shard_uids(os.path.join(compared, "variants", slug))) for slug in SLUGS}
    held = set(pq.read_table(os.path.join(compared, "held-out", "rows.parquet"))["uid"].to_pylist())
    downloaded, _ = read_downloaded(os.path.join(run_dir, "download"))
    assert uids["raw"] == set(downloaded["uid"].to_pylist()) - held
    metadata = pq.read_table(os.path.join(run_dir, "score", "metadata")).to_pylist()
    assert uids["clip"] == {r["uid"] for r in metadata} - held  # the run filtered on similarity only
    assert uids["clip+safe"] == {r["uid"] for r in metadata if r["pwatermark"] <= 0.8} - held
    assert uids["clip+safe"] < uids["clip"] < uids["raw"]
    kept = set(pq.read_table(os.path.join(run_dir, "prune", "kept.parquet"))["uid"].to_pylist())
    assert uids["dbp"] == kept - held
    own = pq.read_table(os.path.join(compared, "prune", "dbp-0.3", "kept.parquet"))["uid"].to_pylist()
    assert uids["dbp-0.3"] == set(own) - held and len(own) < len(kept)
    with open(os.path.join(compared, "prune", "dbp-0.3", "prune.json")) as f:
        assert json.load(f)["settings"]["keep_fraction"] == 0.3
    notes = _comparison(compared)["notes"]
    assert "clip+safe: punsafe not computed: no limit" in notes


def test_variant_members_are_the_download_members_byte_for_byte(compared, run_dir):
    originals = {}
    for path in glob.glob(os.path.join(run_dir, "download", "*.tar")):
        with tarfile.open(path) as tar:
            originals.update({m.name: tar.extractfile(m).read() for m in tar if m.isfile()})
    with tarfile.open(os.path.join(compared, "variants", "clip", "00000.tar")) as tar:
        members = [m for m in tar if m.isfile()]
        assert {m.name.rsplit(".", 1)[1] for m in members} == {"jpg", "txt", "json"}
        for member in members:
            assert tar.extractfile(member).read() == originals[member.name]


def test_every_variant_had_the_same_compute_by_the_trainers_own_logs(compared):
    params, logs = {}, {}
    for slug in SLUGS:
        log_dir = os.path.join(compared, "train", slug)
        logs[slug] = read_training(log_dir)
        params[slug] = logs[slug]["params"]
        assert os.path.exists(os.path.join(log_dir, "checkpoints", f"epoch_{EPOCHS}.pt"))
        assert params[slug]["train_data"].startswith(os.path.join(compared, "variants", slug))
    same = ("batch_size", "epochs", "seed", "train_num_samples", "model", "lr", "warmup", "precision",
            "dataset_type", "workers", "pretrained")
    for slug in SLUGS:
        assert {k: params[slug][k] for k in same} == {k: params["raw"][k] for k in same}
        assert logs[slug]["steps"] == STEPS and logs[slug]["samples_seen"] == STEPS * BATCH
        assert logs[slug]["epochs_logged"] == EPOCHS and len(logs[slug]["losses"]) == STEPS
    assert params["raw"]["train_num_samples"] == str(STEPS // EPOCHS * BATCH)
    assert params["raw"]["model"] == "crawl2clip-tiny" and params["raw"]["pretrained"] == ""
    # from the same initial weights (seed), different data: the checkpoints differ
    weights = [load_clip(ClipSpec("crawl2clip-tiny", os.path.join(compared, "train", slug, "checkpoints",
                                                                  f"epoch_{EPOCHS}.pt"), device="cpu"))
               for slug in ("raw", "clip")]
    a, b = (np.asarray(w.encode_texts(["a red star"])) for w in weights)
    assert not np.allclose(a, b)


def test_the_comparison_reads_back_the_same_from_json_and_parquet(compared):
    comparison = _comparison(compared)
    rows = comparison["variants"]
    assert [r["variant"] for r in rows] == VARIANTS
    assert pq.read_table(os.path.join(compared, "comparison.parquet")).to_pylist() == rows
    for row, slug in zip(rows, SLUGS):
        assert row["status"] == "trained" and row["steps"] == STEPS and row["samples_seen"] == STEPS * BATCH
        with open(os.path.join(compared, "eval", f"{slug}.json")) as f:
            evaluation = json.load(f)
        assert row["image_to_text_recall@5"] == evaluation["retrieval"]["image_to_text"]["5"]
        assert row["text_to_image_recall@1"] == evaluation["retrieval"]["text_to_image"]["1"]
        assert row["zero_shot_top1"] == evaluation["zero_shot"]["top1"]
        assert 0.0 <= row["image_to_text_recall@1"] <= row["image_to_text_recall@5"] <= row["image_to_text_recall@10"]
        assert row["rows"] == pq.read_metadata(os.path.join(compared, "variants", slug, "rows.parquet")).num_rows
    held_out_rows = pq.read_metadata(os.path.join(compared, "held-out", "rows.parquet")).num_rows
    assert comparison["held_out"]["texts"] == held_out_rows
    assert comparison["zero_shot"]["images"] == 36 and comparison["errors"] == {}
    page = open(os.path.join(compared, "comparison.html")).read()
    table = page[page.index("<table id=comparison>"):]
    assert table[:table.index("</table>")].count("<tr>") == 1 + len(VARIANTS)  # the header, the rows
    for plot in ("training_pairs", "retrieval", "zero_shot", "loss"):
        assert os.path.getsize(os.path.join(compared, "comparison-plots", f"{plot}.png")) > 1000


def test_the_page_renders_in_chromium(compared, tmp_path):
    with chromium_page("file://" + os.path.join(compared, "comparison.html")) as driver:
        assert driver.title == "crawl2clip comparison"
        assert driver.execute_script("return document.querySelectorAll('#comparison tr').length") == 1 + len(VARIANTS)
        images = driver.execute_script(
            "return [...document.images].map(i => [i.alt, i.complete && i.naturalWidth > 0])")
        assert sorted(images) == [[name, True] for name in ("loss", "retrieval", "training_pairs", "zero_shot")]
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
        os.makedirs(os.path.join("output", "test-artifacts"), exist_ok=True)
        driver.save_screenshot(os.path.join("output", "test-artifacts", "comparison.png"))


def test_a_rerun_skips_what_is_finished_and_redoes_what_is_not(compared, run_dir, zero_shot_dir, capsys):
    checkpoint = {slug: os.path.join(compared, "train", slug, "checkpoints", f"epoch_{EPOCHS}.pt") for slug in SLUGS}
    before = {slug: os.path.getmtime(path) for slug, path in checkpoint.items()}
    os.remove(os.path.join(compared, "eval", "raw.json"))  # evaluated again, not trained
    os.remove(checkpoint["clip"])  # an unfinished training: trained again from the start
    capsys.readouterr()
    assert main(["compare", "--run", run_dir, "--output", compared, "--zero-shot-dir", zero_shot_dir,
                 *COMPARE_FLAGS]) == 0
    printed = capsys.readouterr().out
    assert "[1/5] raw: evaluated" in printed and "[2/5] clip: training" in printed
    assert "[3/5] clip+safe: finished earlier, skipped" in printed
    after = {slug: os.path.getmtime(path) for slug, path in checkpoint.items()}
    assert {s for s in SLUGS if after[s] != before[s]} == {"clip"}
    assert read_training(os.path.join(compared, "train", "clip"))["steps"] == STEPS  # a clean log, not appended


def test_options_are_checked_before_any_work(compared, run_dir, zero_shot_dir, tmp_path, capsys):
    def refused(*argv):
        capsys.readouterr()
        assert main(["compare", *argv]) == 2
        return capsys.readouterr().err

    base = ["--run", run_dir, "--output", str(tmp_path / "out")]
    assert "unknown variant 'nope'" in refused(*base, "--variants", "raw,nope")
    assert "not a multiple of --epochs" in refused(*base, "--steps", "5", "--epochs", "2")
    assert "not a multiple of --batch-size" in refused(*base, "--samples-seen", "100", "--batch-size", "16")
    assert "no such folder" in refused(*base, "--zero-shot-dir", str(tmp_path / "missing"))
    if not torch.cuda.is_available():
        assert "no GPU here" in refused(*base, "--device", "cuda")
    assert "no finished download shards" in refused("--run", str(tmp_path), "--output", str(tmp_path / "out"))
    no_prune = tmp_path / "no-prune"
    shutil.copytree(run_dir, no_prune, ignore=shutil.ignore_patterns("prune"))
    assert "name a keep fraction: dbp:0.5" in refused("--run", str(no_prune), "--output", str(tmp_path / "o2"),
                                                      "--variants", "dbp")
    assert "other settings (training)" in refused("--run", run_dir, "--output", compared, "--zero-shot-dir",
                                                  zero_shot_dir, *COMPARE_FLAGS, "--seed", "7")
    assert not os.path.exists(tmp_path / "out" / "compare.json")


def test_a_variant_too_small_for_one_batch_is_reported_not_trained(run_dir, tmp_path):
    out = str(tmp_path / "small")
    assert main(["compare", "--run", run_dir, "--output", out, "--variants", "dbp:0.05", "--batch-size", "256",
                 "--steps", "2", "--device", "cpu"]) == 1
    row = _comparison(out)["variants"][0]
    assert row["status"] == "too_small" and row["steps"] is None and "under one batch of 256" in row["note"]
    assert _comparison(out)["errors"] == {"compare:variant_too_small": 1}
    assert not os.path.exists(os.path.join(out, "train"))


def test_a_pair_missing_from_its_tar_is_an_error_not_a_crash(run_dir, tmp_path):
    downloaded, _ = read_downloaded(os.path.join(run_dir, "download"))
    first = downloaded.slice(0, 3)
    broken = tmp_path / "broken.tar"
    with tarfile.open(first["shard"][0].as_py()) as source, tarfile.open(broken, "w") as target:
        for member in source:
            if not member.name.startswith(first["key"][0].as_py()):
                target.addfile(member, source.extractfile(member))
    rows = first.set_column(first.column_names.index("shard"), "shard", pa.array([str(broken)] * 3))
    written, errors = write_shards(rows, str(tmp_path / "out"))
    assert written["key"].to_pylist() == first["key"].to_pylist()[1:]
    assert [e["reason"] for e in errors] == ["missing_samples"]
    (tmp_path / "cut.tar").write_bytes(broken.read_bytes()[:700])  # a tar cut inside its first member
    cut = rows.set_column(rows.column_names.index("shard"), "shard", pa.array([str(tmp_path / "cut.tar")] * 3))
    written, errors = write_shards(cut, str(tmp_path / "out2"))
    assert written.num_rows == 0 and [e["reason"] for e in errors] == ["unreadable_shard"]
    assert os.listdir(tmp_path / "out2") == ["rows.parquet"]
    (tmp_path / "dl").mkdir()
    shutil.copy(os.path.join(run_dir, "download", "00000_stats.json"), tmp_path / "dl")
    (tmp_path / "dl" / "00000.parquet").write_bytes(b"not parquet")
    table, errors = read_downloaded(str(tmp_path / "dl"))
    assert table.num_rows == 0 and [e["reason"] for e in errors] == ["unreadable_shard"]


def test_the_sample_crawl_can_hold_near_duplicates(tmp_path):
    """Copies of a popular picture: other bytes, the same scene (close pixels once resized)."""
    original = Image.open(io.BytesIO(picture_bytes(5))).convert("L").resize((32, 32))
    copy_bytes = picture_bytes(5, copy=3)
    assert copy_bytes != picture_bytes(5)
    copy = Image.open(io.BytesIO(copy_bytes)).convert("L").resize((32, 32))
    other = Image.open(io.BytesIO(picture_bytes(6))).convert("L").resize((32, 32))
    distance = lambda a, b: np.abs(np.asarray(a, float) - np.asarray(b, float)).mean()  # noqa: E731
    assert distance(original, copy) < 12 < distance(original, other)
    summary = write_sample_crawl(str(tmp_path / "c.warc.gz"), pages=30, gallery=Gallery(near_duplicates=0.5))
    default = write_sample_crawl(str(tmp_path / "d.warc.gz"), pages=30)
    assert summary["pictures"] != default["pictures"]
