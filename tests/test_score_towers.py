"""`crawl2clip score` with one image embedding space: every image through the tiny CLIP's image
tower, English captions through its text tower, German ones through the tiny multilingual tower
(M-CLIP format); LAION's heads and detector, in their published formats, scoring their columns;
options that would mix spaces or filter on a column not computed refused before any work; and
the index built from it encoding queries with the tower of their language."""

import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from crawl2clip.explorer.query import QueryEncoder, QueryError
from crawl2clip.explorer.subset import main as subset_main
from crawl2clip.models.clip import TINY_MULTILINGUAL, load_clip, tiny_clip_spec
from crawl2clip.models.laion_heads import load_image_head
from crawl2clip.models.laion_watermark import WatermarkDetector, build_model
from crawl2clip.models.mclip import MClipSpec, load_mclip
from crawl2clip.models.scene_captions import caption
from crawl2clip.models.scenes import render_example
from crawl2clip.pipelines.cli import main
from crawl2clip.pipelines.resume import finished_work
from crawl2clip.transforms.embeddings import list_parts, load_embeddings, read_metadata
from crawl2clip.transforms.index.store import IndexStore
from tests.score_fixtures import jpeg, write_download_shard
from tests.test_laion_heads import NSFW_B32, build_autokeras

PAIRS = 16
LANGUAGES = ["en", "de", "en", "fr"]  # per pair i: LANGUAGES[i % 4]
OPEN = ["--min-similarity-en", "-1", "--min-similarity-multi", "-1"]  # keep every pair


def _download(root) -> str:
    """A download shard of rendered scenes captioned in English, German and French."""
    pairs = []
    for i in range(PAIRS):
        image, scene = render_example(515, i, size=96)
        language = LANGUAGES[i % 4]
        pairs.append((jpeg(image), caption(scene, language), "en" if language == "en" else "multi"))
    folder = str(root / "images")
    write_download_shard(folder, 0, pairs)
    return folder


def _rows(output: str) -> tuple[list[dict], np.ndarray, np.ndarray]:
    (part,) = list_parts(output)
    return (pq.read_table(part.metadata).to_pylist(), load_embeddings(part.img_emb).astype(np.float32),
            load_embeddings(part.text_emb).astype(np.float32))


@pytest.fixture(scope="module")
def laion_files(tmp_path_factory):
    """LAION-format heads for the tiny CLIP's 64-d embeddings (random weights) and the detector."""
    root = tmp_path_factory.mktemp("laion")
    architecture = {**NSFW_B32, "dim": 64, "categorical": (5, 17)}
    build_autokeras(str(root / "nsfw_tiny"), architecture, seed=8,
                    vocabulary_from=np.random.default_rng(9).normal(0, 0.1, (20, 64)).astype(np.float32))
    torch.manual_seed(10)
    torch.save(torch.nn.Linear(64, 1).state_dict(), root / "aesthetic_tiny_linear.pth")
    torch.save(build_model().state_dict(), root / "watermark_model_v1.pt")
    return {"unsafe": str(root / "nsfw_tiny"), "aesthetic": str(root / "aesthetic_tiny_linear.pth"),
            "watermark": str(root / "watermark_model_v1.pt")}


@pytest.fixture(scope="module")
def scored(tmp_path_factory, laion_files):
    root = tmp_path_factory.mktemp("towers")
    download = _download(root)
    output = str(root / "scores")
    assert main(["score", "--input", download, "--output", output, "--tiny-clip", *OPEN,
                 "--unsafe-head", laion_files["unsafe"], "--aesthetic-head", laion_files["aesthetic"],
                 "--watermark-model", laion_files["watermark"]]) == 0
    return {"root": root, "download": download, "output": output}


def test_every_image_through_one_tower_and_captions_through_their_languages(scored):
    rows, img, text = _rows(scored["output"])
    clip = load_clip(tiny_clip_spec("cpu"))
    tower = load_mclip(MClipSpec(TINY_MULTILINGUAL, device="cpu"))
    images = [Image.open(io.BytesIO(jpeg(render_example(515, int(r["position"]), size=96)[0]))) for r in rows]
    np.testing.assert_allclose(img, clip.encode_images(clip.preprocess_images([i.convert("RGB") for i in images])),
                               atol=3e-3)
    for row, embedding in zip(rows, text):
        expected = (clip if row["split"] == "en" else tower).encode_texts([row["TEXT"]])[0]
        np.testing.assert_allclose(embedding, expected, atol=3e-3)
    # the German and French captions land in the image space as the English ones do
    similarity = {split: np.mean([r["similarity"] for r in rows if r["split"] == split]) for split in ("en", "multi")}
    assert similarity["multi"] > similarity["en"] - 0.1 and similarity["en"] > 0.4
    settings = json.load(open(os.path.join(scored["output"], "scoring.json")))
    assert settings["image_tower"]["model"] == "crawl2clip-tiny"
    assert settings["text_towers"]["en"]["kind"] == "clip"
    assert settings["text_towers"]["multi"] == {"kind": "m-clip", "source": TINY_MULTILINGUAL, "model_base": "encoder",
                                                "embed_dim": 64, "trained_for": {"model": "crawl2clip-tiny"}}


def test_laions_heads_and_detector_fill_their_columns(scored, laion_files):
    rows, img, _ = _rows(scored["output"])
    unsafe = load_image_head(laion_files["unsafe"], "unsafe")
    np.testing.assert_allclose([r["punsafe"] for r in rows], unsafe.predict(img), atol=1e-5)
    aesthetic = load_image_head(laion_files["aesthetic"], "aesthetic")
    np.testing.assert_allclose([r["aesthetic"] for r in rows], aesthetic.predict(img), atol=1e-2)
    detector = WatermarkDetector(laion_files["watermark"], device="cpu")
    images = [Image.open(io.BytesIO(jpeg(render_example(515, int(r["position"]), size=96)[0]))).convert("RGB")
              for r in rows]  # the bytes the download shard holds
    np.testing.assert_allclose([r["pwatermark"] for r in rows], detector.predict(detector.preprocess_images(images)),
                               atol=1e-5)
    tags = json.load(open(os.path.join(scored["output"], "scoring.json")))["tags"]
    assert tags["punsafe"]["format"] == "Keras SavedModel (autokeras)" and tags["punsafe"]["categorical_columns"] == [5, 17]
    assert tags["aesthetic"]["architecture"] == "laion-aesthetic-v1-linear"
    assert tags["pwatermark"]["source"] == "image model"


@pytest.mark.parametrize("flags, message", [
    (["--multi-clip-model", "ViT-B-32", "--multi-clip-pretrained", "openai"], "second image tower"),
    (["--multi-text-model", "/no/such/tower"], "cannot read its config.json"),
    (["--max-punsafe", "0.5"], "punsafe is not computed in this run"),
    (["--watermark-model", "{watermark}", "--watermark-head", "{watermark}"], "not both"),
    (["--multi-text-model", "{wrong_dims}"], "its text embeddings have 32 dimensions"),
    (["--multi-text-model", "{vit_b_32_tower}"], "trained into the space of ViT-B-32"),
])
def test_mixed_spaces_and_filters_on_missing_columns_are_refused_before_any_work(tmp_path, capsys, scored,
                                                                                  laion_files, flags, message):
    for name, dims, source in (("wrong_dims", 32, "crawl2clip"), ("vit_b_32_tower", 64, "M-CLIP/XLM-Roberta-Large-Vit-B-32")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(
            {"model_type": "M-CLIP", "_name_or_path": source, "modelBase": "xlm-roberta-large",
             "transformerDimensions": 1024, "numDims": dims}))
    paths = {"watermark": laion_files["watermark"], "wrong_dims": str(tmp_path / "wrong_dims"),
             "vit_b_32_tower": str(tmp_path / "vit_b_32_tower")}
    output = str(tmp_path / "scores")
    argv = ["score", "--input", scored["download"], "--output", output, "--tiny-clip",
            *[flag.format(**paths) for flag in flags]]
    assert main(argv) == 1
    assert message in capsys.readouterr().err
    assert not os.path.exists(os.path.join(output, "scoring.json"))


def test_zero_shot_only_on_request_and_the_clips_own_text_tower_for_every_split(scored):
    output = str(scored["root"] / "zero-shot")
    assert main(["score", "--input", scored["download"], "--output", output, "--tiny-clip", *OPEN,
                 "--zero-shot-tags", "--multi-text-model", "clip"]) == 0
    settings = json.load(open(os.path.join(output, "scoring.json")))
    assert settings["tags"]["punsafe"]["source"] == "zero-shot"
    assert settings["tags"]["pwatermark"]["name"] == "watermark-head"  # a trained head beats prompts
    assert settings["tags"]["aesthetic"] == {"source": "not computed"}
    assert settings["text_towers"]["multi"]["kind"] == "clip"
    rows, _, text = _rows(output)
    clip = load_clip(tiny_clip_spec("cpu"))
    np.testing.assert_allclose(text, clip.encode_texts([r["TEXT"] for r in rows]), atol=3e-3)
    assert all(0 <= r["punsafe"] <= 1 for r in rows) and all(r["aesthetic"] is None for r in rows)


@pytest.fixture(scope="module")
def index(scored):
    index_dir = str(scored["root"] / "index")
    assert main(["index", "--embeddings", scored["output"], "--output", index_dir, "--index-shards", "1"]) == 0
    return IndexStore(index_dir)


def test_queries_are_encoded_by_the_tower_of_their_language(index, scored, tmp_path):
    encoder = QueryEncoder(index, "cpu")
    german, english = "zwei rote Sterne auf einem gestreiften blauen Hintergrund", "two red stars on a blue background"
    assert (encoder.route(german), encoder.route(english)) == ("multi", "en")
    assert encoder.route(english, lang="de") == "multi" and encoder.route(german, lang="en") == "en"
    with pytest.raises(QueryError, match="ISO 639"):
        encoder.route(german, lang="German!")
    tower = load_mclip(MClipSpec(TINY_MULTILINGUAL, device="cpu"))
    clip = load_clip(tiny_clip_spec("cpu"))
    vectors = encoder.texts([german, english])
    np.testing.assert_allclose(vectors[0], tower.encode_texts([german])[0], atol=1e-5)
    np.testing.assert_allclose(vectors[1], clip.encode_texts([english])[0], atol=1e-5)
    # subset --query: a German query finds what the English one does (same scene, same space)
    rows = read_metadata(scored["output"]).to_pylist()
    target = next(r for r in rows if LANGUAGES[int(r["position"]) % 4] == "de")
    english_caption = render_example(515, int(target["position"]), size=96)[1].caption()
    found = {}
    for query, lang in ((target["TEXT"], "de"), (english_caption, "en")):
        out = str(tmp_path / f"near-{lang}.parquet")
        assert subset_main(["--index", index.directory, "--query", query, "--lang", lang, "--k", "5",
                            "--output", out]) == 0
        found[lang] = pq.read_table(out).column("uid").to_pylist()
    assert target["uid"] in found["de"] and found["de"][:3] == found["en"][:3]


def test_the_part_keeps_what_the_run_counted_with_the_detector_step(scored):
    """A rerun that skips this part reports these counters as the run did: the detector's included."""
    with open(os.path.join(scored["output"], "metrics.json")) as f:
        counted = json.load(f)["counters"]
    assert counted["score_watermark:num_inferences"] == counted["score:pairs_scored"] > 0
    assert finished_work("score", scored["output"]) == counted
