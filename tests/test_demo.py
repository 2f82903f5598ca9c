"""`crawl2clip demo`: the whole pipeline on the project's own sample crawl, with no ../shared and
no network (its pictures come from the replay proxy)."""

import json
import os
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from crawl2clip.models.clip import TINY_MULTILINGUAL
from crawl2clip.models.mclip import MClipSpec, load_mclip
from crawl2clip.models.scene_captions import LANGUAGES, caption
from crawl2clip.models.scenes import random_scene, scene_rng
from crawl2clip.pipelines.cli import main
from crawl2clip.pipelines.sample_crawl import SCENE_SEED
from crawl2clip.transforms.embeddings import list_parts, load_embeddings, read_metadata

PICTURE = re.compile(r"/scenes/(\d{4})\.jpg$")


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--output", str(out), "--pages", "80"]) == 0
    return out / "run"


def test_extract_follows_the_rules_on_the_sample_pages(demo_dir):
    rows = pq.read_table(str(demo_dir / "extract" / "pairs")).to_pylist()
    texts = {r["TEXT"] for r in rows}
    urls = {r["URL"] for r in rows}
    assert not any("not an image" in t for t in texts)  # from comments and scripts
    assert any("/thumbs/" in u and "/gallery/" in u for u in urls)  # resolved against <base href>
    assert any(u.startswith("http://cdn.") for u in urls)  # lazy data-src
    assert not any(u.endswith((".svg", ".gif")) for u in urls)
    logo = [r for r in rows if r["URL"].endswith("/static/logo.png")]
    assert logo and all(r["occurrences"] > 1 for r in logo)


def _true_captions(url: str) -> set[str]:
    """The picture's caption in every language the sample crawl writes."""
    scene = random_scene(scene_rng(SCENE_SEED, int(PICTURE.search(url).group(1))))
    return {caption(scene, language) for language in LANGUAGES}


def _gallery(demo_dir) -> list[tuple[dict, bool]]:
    """(row, kept) of every scored gallery pair."""
    kept = read_metadata(str(demo_dir / "score")).to_pylist()
    dropped = pq.read_table(str(demo_dir / "score" / "dropped")).to_pylist()
    return [(r, True) for r in kept if PICTURE.search(r["URL"])] + \
        [(r, False) for r in dropped if PICTURE.search(r["URL"])]


def test_clip_keeps_the_true_captions_and_drops_the_others(demo_dir):
    """The sample crawl gives 20% of its pictures another picture's caption: with the tiny CLIP
    (it knows colours and backgrounds, not shapes or counts) most of those must go, most true
    captions must stay."""
    def is_true(row): return row["TEXT"] in _true_captions(row["URL"])
    gallery = _gallery(demo_dir)
    true_pairs = [was_kept for r, was_kept in gallery if is_true(r)]
    false_pairs = [was_kept for r, was_kept in gallery if not is_true(r)]
    assert len(true_pairs) > 100 and len(false_pairs) > 30
    assert sum(true_pairs) / len(true_pairs) >= 0.75
    assert 1 - sum(false_pairs) / len(false_pairs) >= 0.8


def test_non_english_captions_go_through_the_multilingual_tower_and_are_judged_alike(demo_dir):
    """The German, French and Spanish sites' captions: embedded by the tiny multilingual tower
    into the tiny CLIP's space, then kept and dropped as well as the English ones are."""
    towers = json.load(open(demo_dir / "score" / "scoring.json"))["text_towers"]
    assert towers["multi"]["source"] == TINY_MULTILINGUAL and towers["en"]["kind"] == "clip"
    gallery = [(r, kept) for r, kept in _gallery(demo_dir) if r["LANGUAGE"] in ("de", "fr", "es")]
    assert {r["LANGUAGE"] for r, _ in gallery} == {"de", "fr", "es"}
    assert all(r["split"] in ("multi", "nolang") for r, _ in gallery)  # nolang: fastText was unsure
    true_pairs = [kept for r, kept in gallery if r["TEXT"] in _true_captions(r["URL"])]
    false_pairs = [kept for r, kept in gallery if r["TEXT"] not in _true_captions(r["URL"])]
    assert len(true_pairs) > 30 and len(false_pairs) > 5
    assert sum(true_pairs) / len(true_pairs) >= 0.75
    assert 1 - sum(false_pairs) / len(false_pairs) >= 0.8
    # the stored caption embeddings are the multilingual tower's
    tower = load_mclip(MClipSpec(TINY_MULTILINGUAL, device="cpu"))
    metadata = read_metadata(str(demo_dir / "score")).to_pylist()
    text = np.concatenate([load_embeddings(p.text_emb) for p in list_parts(str(demo_dir / "score"))]).astype(np.float32)
    rows = [i for i, r in enumerate(metadata) if r["LANGUAGE"] in ("de", "fr", "es")][:20]
    np.testing.assert_allclose(text[rows], tower.encode_texts([metadata[i]["TEXT"] for i in rows]), atol=3e-3)


def test_watermarked_pictures_score_higher_pwatermark(demo_dir):
    rows = [r for r in read_metadata(str(demo_dir / "score")).to_pylist() if PICTURE.search(r["URL"])]
    marked = [r["pwatermark"] for r in rows if int(PICTURE.search(r["URL"]).group(1)) % 7 == 3]
    clean = [r["pwatermark"] for r in rows if int(PICTURE.search(r["URL"]).group(1)) % 7 != 3]
    assert marked and clean
    assert np.mean(marked) > np.mean(clean)


def test_the_demo_ends_with_a_report(demo_dir):
    assert (demo_dir / "report.html").exists() and (demo_dir / "report.json").exists()
    report = json.load(open(demo_dir / "report.json"))
    counts = [step["count"] for step in report["funnel"]]
    assert [step["step"] for step in report["funnel"]] == ["candidates", "downloaded", "CLIP-kept", "kept by pruning"]
    assert counts == sorted(counts, reverse=True)  # no step adds pairs
    tags = {t["column"]: t for t in report["tags"]}
    # the tiny CLIP has a trained watermark head and no NSFW or aesthetic one
    assert tags["pwatermark"]["computed"] and tags["pwatermark"]["from"] == "watermark-head: watermark-head.npz"
    assert tags["punsafe"]["from"] == tags["aesthetic"]["from"] == "not computed"
    assert "not computed" in (demo_dir / "report.html").read_text()
    assert (demo_dir / "prune" / "kept.parquet").exists()
    assert not os.path.exists(demo_dir / "extract" / "_progress")
