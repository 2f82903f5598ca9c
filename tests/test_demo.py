"""`crawl2clip demo`: the whole pipeline on the project's own sample crawl, with no ../shared and
no network (its pictures come from the replay proxy)."""

import os
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from crawl2clip.models.scenes import random_scene, scene_rng
from crawl2clip.pipelines.cli import main
from crawl2clip.pipelines.sample_crawl import SCENE_SEED
from crawl2clip.transforms.embeddings import read_metadata

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


def _true_caption(url: str) -> str:
    return random_scene(scene_rng(SCENE_SEED, int(PICTURE.search(url).group(1)))).caption()


def test_clip_keeps_the_true_captions_and_drops_the_others(demo_dir):
    """The sample crawl gives 20% of its pictures another picture's caption: with the tiny CLIP
    (it knows colours and backgrounds, not shapes or counts) most of those must go, most true
    captions must stay."""
    kept = read_metadata(str(demo_dir / "score")).to_pylist()
    dropped = pq.read_table(str(demo_dir / "score" / "dropped")).to_pylist()
    def is_true(row): return row["TEXT"] == _true_caption(row["URL"])
    gallery = [(r, True) for r in kept if PICTURE.search(r["URL"])] + \
              [(r, False) for r in dropped if PICTURE.search(r["URL"])]
    true_pairs = [was_kept for r, was_kept in gallery if is_true(r)]
    false_pairs = [was_kept for r, was_kept in gallery if not is_true(r)]
    assert len(true_pairs) > 100 and len(false_pairs) > 30
    assert sum(true_pairs) / len(true_pairs) >= 0.75
    assert 1 - sum(false_pairs) / len(false_pairs) >= 0.8


def test_watermarked_pictures_score_higher_pwatermark(demo_dir):
    rows = [r for r in read_metadata(str(demo_dir / "score")).to_pylist() if PICTURE.search(r["URL"])]
    marked = [r["pwatermark"] for r in rows if int(PICTURE.search(r["URL"]).group(1)) % 7 == 3]
    clean = [r["pwatermark"] for r in rows if int(PICTURE.search(r["URL"]).group(1)) % 7 != 3]
    assert marked and clean
    assert np.mean(marked) > np.mean(clean)


def test_the_demo_ends_with_a_report(demo_dir):
    assert (demo_dir / "report.html").exists() and (demo_dir / "report.json").exists()
    assert (demo_dir / "prune" / "kept.parquet").exists()
    assert not os.path.exists(demo_dir / "extract" / "_progress")
