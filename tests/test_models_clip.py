"""CLIP loading (models/clip.py): by name + checkpoint path through open_clip's own code, for a
real ViT-B-32 architecture and for the project's tiny model."""

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from crawl2clip.models.clip import (
    TINY_CHECKPOINT,
    TINY_MODEL,
    ClipSpec,
    load_clip,
    resolve_precision,
    tiny_clip_spec,
)
from crawl2clip.models.scenes import render_example

CAPTIONS = ["a red circle on a white background", "two blue stars", "a photo of a cat"]


def _images(count: int) -> list[Image.Image]:
    return [render_example(seed=77, index=i, size=120)[0] for i in range(count)]


def test_a_vit_b_32_checkpoint_loads_by_path_with_the_weights_it_was_saved_with(tmp_path):
    torch.manual_seed(3)
    reference, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    reference.eval()
    path = tmp_path / "vit-b-32-random.pt"
    torch.save(reference.state_dict(), path)

    loaded = load_clip(ClipSpec("ViT-B-32", str(path), device="cpu", precision="fp32"))

    assert (loaded.embed_dim, loaded.image_size) == (512, 224)
    pixels = loaded.preprocess_images(_images(2))
    torch.testing.assert_close(pixels, torch.stack([preprocess(image) for image in _images(2)]))
    with torch.inference_mode():
        expected_images = torch.nn.functional.normalize(reference.encode_image(pixels), dim=-1).numpy()
        tokens = open_clip.get_tokenizer("ViT-B-32")(CAPTIONS)
        expected_texts = torch.nn.functional.normalize(reference.encode_text(tokens), dim=-1).numpy()
    np.testing.assert_allclose(loaded.encode_images(pixels), expected_images, atol=1e-5)
    np.testing.assert_allclose(loaded.encode_texts(CAPTIONS), expected_texts, atol=1e-5)


def test_the_tiny_model_loads_by_name_and_committed_checkpoint():
    spec = tiny_clip_spec(device="cpu")
    assert (spec.model, spec.pretrained) == (TINY_MODEL, TINY_CHECKPOINT)
    clip = load_clip(spec)
    assert TINY_MODEL in open_clip.list_models()
    assert (clip.embed_dim, clip.image_size) == (64, 48)
    images = clip.encode_images(clip.preprocess_images(_images(4)))
    texts = clip.encode_texts(CAPTIONS)
    for array, rows in ((images, 4), (texts, 3)):
        assert array.dtype == np.float32 and array.shape == (rows, 64)
        np.testing.assert_allclose(np.linalg.norm(array, axis=1), 1.0, atol=1e-5)


def test_a_missing_checkpoint_or_unknown_tag_fails_with_a_clear_message(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an open_clip pretrained tag"):
        load_clip(ClipSpec("ViT-B-32", str(tmp_path / "missing.pt"), device="cpu"))
    with pytest.raises(FileNotFoundError, match="no-such-tag"):
        load_clip(ClipSpec(TINY_MODEL, "no-such-tag", device="cpu"))


def test_precision_choices():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("auto", "cuda:0") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("int4", "cpu")
