"""The tiny CLIP (models/tiny_clip.py): deterministic training, and the committed checkpoint
really matches images with their captions on scenes it never saw."""

import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

from crawl2clip.models import tiny_clip
from crawl2clip.models.clip import TINY_CHECKPOINT, load_clip, tiny_clip_spec
from crawl2clip.models.scenes import COLORS, PATTERNS, render_example

SMALL = tiny_clip.TrainConfig(steps=3, batch_size=16, pool_size=32, warmup_steps=1)


@pytest.fixture(scope="module")
def small_pool():
    return tiny_clip.render_pool(SMALL.seed, SMALL.pool_size)


@pytest.fixture(scope="module")
def committed():
    return load_clip(tiny_clip_spec(device="cpu"))


def test_training_twice_gives_identical_weights(small_pool):
    first, report = tiny_clip.train(SMALL, pool=small_pool)
    second, _ = tiny_clip.train(SMALL, pool=small_pool)
    other_seed, _ = tiny_clip.train(replace(SMALL, seed=1), pool=small_pool)
    a, b, c = first.state_dict(), second.state_dict(), other_seed.state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)
    assert not torch.equal(a["visual.conv1.weight"], c["visual.conv1.weight"])
    assert not torch.equal(a["visual.conv1.weight"], tiny_clip.build_model(SMALL.seed).state_dict()["visual.conv1.weight"])
    assert report["first_loss"] > 0


def test_scenes_render_the_same_every_time_and_captions_name_what_is_drawn():
    image, scene = render_example(seed=5, index=17)
    again, same = render_example(seed=5, index=17)
    assert scene == same and np.array_equal(np.asarray(image), np.asarray(again))
    assert not np.array_equal(np.asarray(image), np.asarray(render_example(seed=6, index=17)[0]))
    caption = scene.caption()
    assert scene.color in caption and scene.shape in caption
    # the shape's colour is really in the picture
    pixels = np.asarray(image).reshape(-1, 3).astype(int)
    distance = np.abs(pixels - np.array(COLORS[scene.color])).sum(axis=1)
    assert (distance < 60).sum() > 30


def test_the_saved_config_and_checkpoint_are_the_trained_architecture(committed):
    with open(os.path.join(os.path.dirname(TINY_CHECKPOINT), "crawl2clip-tiny.json")) as f:
        assert json.load(f) == tiny_clip.CONFIG
    assert os.path.getsize(TINY_CHECKPOINT) < 6 * 2**20
    state = torch.load(TINY_CHECKPOINT, weights_only=True)["state_dict"]
    assert state["token_embedding.weight"].dtype == torch.float16
    assert committed.image_size == tiny_clip.CONFIG["vision_cfg"]["image_size"]


def test_committed_model_scores_matched_pairs_above_shuffled_ones_on_held_out_scenes(committed):
    auc = tiny_clip.held_out_auc(committed.encode_images, committed.encode_texts, count=400)
    assert auc >= 0.9


def test_committed_model_tells_colours_backgrounds_and_patterns_apart(committed):
    """Zero-shot on held-out scenes: the caption with the right colour (background, pattern)
    beats the same caption with each other value far more often than chance. (Shapes and counts
    it has not learnt at 48 px: see the README.)"""
    scenes = [render_example(tiny_clip.HELD_OUT_SEED, i, tiny_clip.RENDER_SIZE) for i in range(150)]
    images = committed.encode_images(committed.preprocess_images([image for image, _ in scenes]))
    for attribute, values in (("color", list(COLORS)), ("background", list(COLORS)), ("pattern", list(PATTERNS))):
        right = 0
        for embedding, (_, scene) in zip(images, scenes):
            candidates = [replace(scene, **{attribute: v}).caption() for v in values]
            best = values[int(np.argmax(committed.encode_texts(candidates) @ embedding))]
            right += best == getattr(scene, attribute)
        assert right / len(scenes) > 2.5 / len(values), attribute
