"""CLIP loading (models/clip.py): by name + checkpoint path through open_clip's own code, for a
real ViT-B-32 architecture and for the project's tiny model; captions cut to their batch's
longest against open_clip's whole context; which GPU `auto` picks (models/devices.py)."""

import json
import subprocess
import sys

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
    resolve_device,
    resolve_precision,
    tiny_clip_spec,
)
from crawl2clip.models.devices import choose_device, process_slot
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


# Captions of every length, from one token to beyond the context (77 tokens; the tiny CLIP's 32).
TEXTS = ["!", "a", "a photo of a cat", "two blue stars on a striped red background, drawn by hand " * 3,
         "Ünïcödé and emoji 🐱 captions, «quoted»", "word " * 120, "", "logo", "a dog! ! !"]


@pytest.mark.parametrize("which", ["vit-b-32", "tiny"])
def test_captions_cut_to_their_longest_embed_as_on_the_whole_context(which):
    """open_clip's text tower is causal and pools at the end token: cutting a batch after its
    longest caption, and sorting captions into batches by length, changes nothing."""
    torch.manual_seed(5)
    clip = load_clip(ClipSpec("ViT-B-32", None, device="cpu", precision="fp32") if which == "vit-b-32"
                     else tiny_clip_spec("cpu"))
    with torch.inference_mode():
        whole = torch.nn.functional.normalize(clip.model.encode_text(clip.tokenizer(TEXTS)), dim=-1).numpy()
    np.testing.assert_allclose(clip.encode_texts(TEXTS), whole, atol=2e-5)
    np.testing.assert_allclose(clip.encode_texts(TEXTS[:3]), whole[:3], atol=2e-5)
    batches = clip.text_batches(TEXTS, 4)
    assert sorted(i for rows, _ in batches for i in rows) == list(range(len(TEXTS)))
    assert [tokens.shape[1] for _, tokens in batches][0] < 10 and max(len(rows) for rows, _ in batches) <= 4
    assert batches[-1][1].shape[1] == clip.model.positional_embedding.shape[0]  # the longest fills the context
    for rows, tokens in batches:
        np.testing.assert_allclose(clip.encode_tokens(tokens), whole[rows], atol=2e-5)


def test_auto_device_choice():
    no_slot = lambda: pytest.fail("no slot should be claimed")  # noqa: E731
    assert choose_device(0, {"LOCAL_RANK": "3"}, no_slot) == "cpu"
    assert choose_device(1, {}, no_slot) == "cuda:0"  # one GPU, or CUDA_VISIBLE_DEVICES set per process
    assert choose_device(4, {"LOCAL_RANK": "2"}, no_slot) == "cuda:2"
    assert choose_device(4, {"LOCAL_RANK": "6"}, no_slot) == "cuda:2"
    assert [choose_device(4, {}, lambda: slot) for slot in range(6)] == [f"cuda:{i}" for i in (0, 1, 2, 3, 0, 1)]
    assert choose_device(2, {"LOCAL_RANK": ""}, lambda: 5) == "cuda:1"
    if not torch.cuda.is_available():
        assert resolve_device("auto") == "cpu"
    assert resolve_device("cuda:3") == "cuda:3"


_CLAIM = """
import json, sys, time
from crawl2clip.models.devices import process_slot
slot = process_slot(sys.argv[1])
print(json.dumps([slot, process_slot(sys.argv[1])]), flush=True)
sys.stdin.read()  # hold the slot until the test lets go
"""


def test_each_worker_process_claims_its_own_slot_until_it_ends(tmp_path):
    folder = str(tmp_path / "slots")
    workers = [subprocess.Popen([sys.executable, "-c", _CLAIM, folder], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for _ in range(3)]
    try:
        claimed = [json.loads(worker.stdout.readline()) for worker in workers]
        assert sorted(first for first, _ in claimed) == [0, 1, 2]
        assert all(first == again for first, again in claimed)  # once per process
        assert process_slot(folder) == 3  # this process: the next free one
        workers[1].communicate("")  # a worker ends: its slot is free again
        late = subprocess.run([sys.executable, "-c", _CLAIM, folder], input="", capture_output=True, text=True,
                              check=True)
        assert json.loads(late.stdout)[0] == claimed[1][0]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.communicate("")
