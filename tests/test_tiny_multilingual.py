"""The tiny multilingual text tower (models/tiny_multilingual.py) and the translated captions it
learns from (models/scene_captions.py): captions that agree in gender, number and case,
deterministic tokenizer and training, and the committed tower, loaded as an M-CLIP tower, putting
German, French and Spanish captions where the tiny CLIP puts the English ones, on scenes of a
seed nothing was trained on."""

import os

import numpy as np
import pytest
import torch

from crawl2clip.models.clip import TINY_MULTILINGUAL, load_clip, tiny_clip_spec
from crawl2clip.models.mclip import MClipSpec, load_mclip
from crawl2clip.models.scene_captions import LANGUAGES, caption
from crawl2clip.models.scenes import COLORS, Scene, random_scene, scene_rng
from crawl2clip.models.tiny_multilingual import HELD_OUT_SEED, TrainConfig, held_out_report, scene_captions, train, \
    train_tokenizer


@pytest.mark.parametrize("scene, expected", [
    (Scene("star", "red", 2, "small", "blue", "striped", 0), {
        "de": "zwei kleine rote Sterne auf einem gestreiften blauen Hintergrund",
        "fr": "deux petites étoiles rouges sur un fond bleu rayé",
        "es": "dos pequeñas estrellas rojas sobre un fondo azul a rayas"}),
    (Scene("cross", "white", 1, "large", "gray", "plain", 0), {
        "de": "ein großes weißes Kreuz auf einem grauen Hintergrund",
        "fr": "une grande croix blanche sur un fond gris",
        "es": "una gran cruz blanca sobre un fondo gris"}),
    (Scene("diamond", "green", 1, "small", "black", "dotted", 1), {
        "de": "ein Foto von einer grünen Raute", "fr": "une photo d'un losange vert",
        "es": "una foto de un rombo verde"}),
    (Scene("ring", "purple", 3, "small", "yellow", "gradient", 2), {
        "de": "violette Ringe auf gelbem Hintergrund mit Farbverlauf",
        "fr": "anneaux violets sur fond jaune dégradé", "es": "anillos morados sobre fondo amarillo degradado"}),
    (Scene("hexagon", "orange", 2, "small", "white", "checkered", 3), {
        "de": "zwei orangefarbene Sechsecke, karierter weißer Hintergrund",
        "fr": "deux hexagones orange, fond blanc à carreaux", "es": "dos hexágonos naranja, fondo blanco a cuadros"}),
])
def test_captions_agree_in_every_language(scene, expected):
    assert {language: caption(scene, language) for language in expected} == expected
    assert caption(scene, "en") == scene.caption()
    with pytest.raises(ValueError, match="no captions in 'it'"):
        caption(scene, "it")


def test_every_scene_has_a_distinct_caption_per_language():
    scenes = [random_scene(scene_rng(7, i)) for i in range(300)]
    for language in LANGUAGES:
        captions = [caption(scene, language) for scene in scenes]
        assert all(captions) and not any("  " in c or c != c.strip() for c in captions)
    german = [caption(scene, "de") for scene in scenes]
    # a translation says as much as the English: as many distinct captions, none left English
    assert len(set(german)) == len({scene.caption() for scene in scenes})
    assert not set(german) & {scene.caption() for scene in scenes}
    assert set(COLORS) <= {scene.color for scene in scenes}


def test_the_tokenizer_and_the_training_are_deterministic():
    texts = [t for language in LANGUAGES for t in scene_captions(3, 200)[language]]
    assert train_tokenizer(texts, 300).backend_tokenizer.to_str() == train_tokenizer(texts, 300).backend_tokenizer.to_str()
    config = TrainConfig(steps=3, batch_size=16, scenes=64, vocab_size=200, hidden=16, layers=1, heads=2,
                         warmup_steps=1)
    first, second = train(config), train(config)
    for a, b in ((first[0], second[0]), (first[1], second[1])):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert first[3]["last_loss"] == second[3]["last_loss"] > 0


def test_the_committed_tower_is_small_and_loads_as_an_mclip_tower():
    size = sum(os.path.getsize(os.path.join(root, n)) for root, _, names in os.walk(TINY_MULTILINGUAL) for n in names)
    assert size < 5 * 2**20
    tower = load_mclip(MClipSpec(TINY_MULTILINGUAL, device="cpu"))
    assert tower.embed_dim == 64 and tower.trained_for == {"model": "crawl2clip-tiny"}


def test_translated_captions_land_near_the_english_ones_on_held_out_scenes():
    tower = load_mclip(MClipSpec(TINY_MULTILINGUAL, device="cpu"))
    report = held_out_report(tower, load_clip(tiny_clip_spec("cpu")), count=200)
    assert report["seed"] == HELD_OUT_SEED
    baseline = report["baseline_tiny_clip_en"]
    for language in ("de", "fr", "es"):
        assert report[language]["cosine_to_english"] >= 0.95, language
        # finds its pictures about as well as the tiny CLIP does from the English caption
        assert report[language]["auc"] >= baseline["auc"] - 0.02, language
        assert report[language]["recall_at_10"] >= baseline["recall_at_10"] - 0.1, language
    mismatched = np.mean(np.sum(tower.encode_texts(scene_captions(HELD_OUT_SEED, 50)["de"])
                                * np.roll(tower.encode_texts(scene_captions(HELD_OUT_SEED, 50)["en"]), 1, axis=0), axis=1))
    assert mismatched < report["de"]["cosine_to_english"] - 0.2  # near its own English caption, not any caption
