"""Preparing images for CLIP (transforms/score/images.py, pixels.py, preparation.py, gpu_prepare.py)
on the shared real photos: the stage's uint8 tensor preprocessing against open_clip's PIL
preprocessing, draft-scaled decoding, the nvJPEG path's code on CPU tensors (and on a GPU where
there is one, against the CPU path), with broken and non-JPEG images among them."""

import io
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from crawl2clip.models.clip import ClipSpec, load_clip, tiny_clip_spec
from crawl2clip.models.scenes import render_example
from crawl2clip.transforms.download.images import ResizeSpec, process_image
from crawl2clip.transforms.score.gpu_prepare import decode_jpegs, decode_on_device, whole_jpeg
from crawl2clip.transforms.score.images import decode_rgb, prepare_image, prepare_pixels
from crawl2clip.transforms.score.pixels import PixelSpec, normalise, resize_and_crop, resized_size
from crawl2clip.transforms.score.preparation import BatchPreparer, PilPreparer, image_preparer, prepared_ahead
from crawl2clip.transforms.score.scoring import Towers, score_shards
from crawl2clip.transforms.score.settings import BatchSizes
from crawl2clip.transforms.score.shards import read_shard
from tests.archive_files import SHARED_DATA
from tests.score_fixtures import jpeg, write_download_shard

PHOTOS = os.path.normpath(os.path.join(SHARED_DATA, "photos"))
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    if not os.path.isdir(PHOTOS):
        pytest.skip(f"the shared real photos are not at {PHOTOS}")
    return [open(os.path.join(PHOTOS, name), "rb").read() for name in sorted(os.listdir(PHOTOS))]


def _stored(photos: list[bytes], size: int, mode: str = "border", output: str = "jpg") -> list[bytes]:
    """The photos as the download stage stores them."""
    return [process_image(data, ResizeSpec(size, mode, output_format=output, min_bytes=0)).data for data in photos]


@pytest.fixture(scope="module")
def vit_b_32():
    torch.manual_seed(0)
    return load_clip(ClipSpec("ViT-B-32", None, device="cpu", precision="fp32"))


@pytest.fixture(scope="module")
def tiny():
    return load_clip(tiny_clip_spec("cpu"))


def _open_clip_pixels(model, datas: list[bytes]) -> torch.Tensor:
    """Today's preparation: the whole image decoded by Pillow, open_clip's own transform."""
    return torch.stack([model.preprocess(Image.open(io.BytesIO(data)).convert("RGB")) for data in datas])


def _stage_pixels(spec: PixelSpec, datas: list[bytes]) -> torch.Tensor:
    return normalise(torch.stack([prepare_pixels(data, spec).pixels for data in datas]), spec)


def _cosines(model, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    return np.sum(model.encode_images(a) * model.encode_images(b), axis=1)


def test_the_spec_is_read_from_open_clips_config_and_other_preprocessing_is_left_to_open_clip(vit_b_32, tiny):
    assert PixelSpec.of(vit_b_32.preprocess_cfg) == PixelSpec(224, open_clip.OPENAI_DATASET_MEAN,
                                                               open_clip.OPENAI_DATASET_STD)
    assert PixelSpec.of(tiny.preprocess_cfg).size == 48
    for other in ({"resize_mode": "longest"}, {"size": (224, 256)}, {"interpolation": "random"}):
        assert PixelSpec.of({**vit_b_32.preprocess_cfg, **other}) is None
    # torchvision's Resize(224): the shortest side to 224, the other truncated
    assert resized_size(456, 123, PixelSpec.of(vit_b_32.preprocess_cfg)) == (830, 224)
    assert resized_size(316, 524, PixelSpec.of(vit_b_32.preprocess_cfg)) == (224, int(224 * 524 / 316))


@pytest.mark.parametrize("stored", [None, 256], ids=["as-published", "stored-256px"])
def test_tensor_preprocessing_gives_open_clips_pixels_on_real_photos(photos, vit_b_32, stored):
    """Sizes where no draft scale applies: the same pixels within 2/255 (torch resamples as Pillow does)."""
    datas = photos if stored is None else _stored(photos, stored)
    spec = PixelSpec.of(vit_b_32.preprocess_cfg)
    expected, got = _open_clip_pixels(vit_b_32, datas), _stage_pixels(spec, datas)
    assert got.shape == expected.shape == (len(datas), 3, 224, 224) and got.dtype == torch.float32
    levels = (got - expected).abs() * torch.tensor(spec.std).view(1, 3, 1, 1) * 255
    assert float(levels.max()) <= 2.01 and float(levels.mean()) < 0.02
    assert _cosines(vit_b_32, got, expected).min() > 0.9999


def test_the_float_resampling_of_the_gpu_path_matches_too(photos, vit_b_32):
    """The GPU resamples in float32 (its uint8 resampling is not Pillow's): within 0.25/255 of
    open_clip's pixels on average, a few levels at most, the same embeddings."""
    spec = PixelSpec.of(vit_b_32.preprocess_cfg)
    decoded = [decode_rgb(data, spec.size)[None] for data in photos]
    in_float = torch.cat([resize_and_crop(image, spec, uint8_resampling=False) for image in decoded])
    assert in_float.dtype == torch.uint8 and in_float.shape == (len(photos), 3, 224, 224)
    got, expected = normalise(in_float, spec), _open_clip_pixels(vit_b_32, photos)
    levels = (got - expected).abs() * torch.tensor(spec.std).view(1, 3, 1, 1) * 255
    assert float(levels.max()) <= 6.01 and float(levels.mean()) < 0.25, (float(levels.max()), float(levels.mean()))
    assert _cosines(vit_b_32, got, expected).min() > 0.9999


def _draft_cosines(model, datas: list[bytes]) -> np.ndarray:
    spec = PixelSpec.of(model.preprocess_cfg)
    for data in datas:  # decoded at a reduced scale, still covering twice the input
        whole, drafted = Image.open(io.BytesIO(data)).size, decode_rgb(data, spec.size).shape[1:]
        assert 2 * spec.size <= min(drafted) <= min(whole) // 2 + 1
    return _cosines(model, _stage_pixels(spec, datas), _open_clip_pixels(model, datas))


@pytest.mark.parametrize("scale", [4, 8])
def test_draft_decoding_of_large_jpegs_keeps_vit_b_32_embeddings(photos, vit_b_32, scale):
    """A JPEG at least four times the model's input is decoded at 1/2, 1/4 or 1/8 scale: a
    real-architecture ViT-B-32 (random weights) embeds the real photos as from the whole image."""
    cosines = _draft_cosines(vit_b_32, _stored(photos, scale * 224 + 10, mode="keep_ratio"))
    assert cosines.min() >= 0.99, cosines


def test_draft_decoding_keeps_the_tiny_clips_embeddings_of_its_scenes(tiny):
    """The tiny CLIP (48 px) on the rendered scenes it knows, stored at 400 px: drafted to 1/4."""
    scenes = [jpeg(render_example(4242, i, size=400)[0]) for i in range(24)]
    cosines = _draft_cosines(tiny, scenes)
    assert cosines.min() >= 0.99, cosines


def test_broken_and_non_jpeg_images(photos, tiny):
    spec = PixelSpec.of(tiny.preprocess_cfg)
    webp, png = _stored(photos[:1], 96, output="webp")[0], io.BytesIO()
    Image.open(io.BytesIO(photos[1])).convert("L").save(png, "PNG")
    for data in (webp, png.getvalue(), photos[2]):
        prepared = prepare_pixels(data, spec)
        assert prepared.error == "" and prepared.pixels.shape == (3, 48, 48) and prepared.pixels.dtype == torch.uint8
    for broken in (photos[0][: len(photos[0]) // 3], b"<html>not an image</html>", b"", photos[0][:40]):
        result = prepare_pixels(broken, spec)
        assert result.pixels is None and result.error.split(":")[0] in ("OSError", "UnidentifiedImageError", "SyntaxError")


def _mixed(photos: list[bytes]) -> tuple[list[bytes], set[int]]:
    """Real photos as stored at 256 px and as published, a WebP, and broken bytes; the broken rows."""
    datas = _stored(photos[:3], 256) + photos[3:] + _stored(photos[:1], 128, output="webp")
    datas.insert(2, photos[0][:200])  # a JPEG cut short
    datas.insert(5, b"\xff\xd8\xff garbage \xff\xd9")  # a JPEG's markers around nothing
    return datas, {2, 5}


def test_the_nvjpeg_path_on_cpu_tensors_falls_back_and_matches_the_cpu_path(photos, vit_b_32):
    """The GPU's code with torchvision decoding on the CPU: whole JPEGs through the batched
    decoder, the rest (WebP, truncated) through the CPU path; the same rows, errors and pixels."""
    datas, broken = _mixed(photos)
    assert [whole_jpeg(d) for d in datas[:3]] == [True, True, False] and not whole_jpeg(datas[-1])
    assert sum(image is None for image in decode_jpegs(datas, torch.device("cpu"))) >= 2
    assert set(decode_on_device(datas, torch.device("cpu"))) == set(range(len(datas) - 1)) - broken
    spec = PixelSpec.of(vit_b_32.preprocess_cfg)
    with ThreadPoolExecutor(2) as pool:
        nvjpeg_way = BatchPreparer(spec, "cpu", pool, nvjpeg=True)(datas)
        cpu_way = BatchPreparer(spec, "cpu", pool)(datas)
    good = [i for i in range(len(datas)) if i not in broken]
    assert nvjpeg_way.good == cpu_way.good == good and set(nvjpeg_way.errors) == broken == set(cpu_way.errors)
    # the CPU path's reason (its message names a BytesIO object: compare the error types)
    assert all(nvjpeg_way.errors[i].split(":")[0] == cpu_way.errors[i].split(":")[0] for i in broken)
    assert nvjpeg_way.ready is None and nvjpeg_way.model_input() is nvjpeg_way.pixels
    # no draft at these sizes: the same decoder and resampling, the same pixels
    torch.testing.assert_close(nvjpeg_way.pixels, cpu_way.pixels, atol=1e-6, rtol=0)
    expected = _open_clip_pixels(vit_b_32, [datas[i] for i in good])
    assert _cosines(vit_b_32, cpu_way.pixels, expected).min() > 0.9999
    one_by_one = torch.stack([prepare_pixels(datas[i], spec).pixels for i in good])
    torch.testing.assert_close(cpu_way.pixels, normalise(one_by_one, spec), atol=1e-6, rtol=0)


def test_a_recycled_batch_memory_holds_a_later_batch_with_its_own_pixels(photos, tiny):
    spec = PixelSpec.of(tiny.preprocess_cfg)
    first_images, later_images = _stored(photos[:4], 96), _stored(photos[3:], 96)
    with ThreadPoolExecutor(2) as pool:
        preparer = BatchPreparer(spec, "cpu", pool)
        first = preparer(first_images)
        memory = first.pixels.data_ptr()
        preparer.recycle(first)
        later = preparer(later_images)
        fresh = BatchPreparer(spec, "cpu", pool)(later_images)
    assert later.pixels.data_ptr() == memory  # no new allocation (its page faults cost as much as the arithmetic)
    torch.testing.assert_close(later.pixels, fresh.pixels, atol=0, rtol=0)


def test_models_without_the_usual_preprocessing_keep_open_clips_transform(tiny, photos):
    class Squashed:  # a CLIP whose preprocessing pixels.py does not write: 'longest' with padding
        device, preprocess = "cpu", tiny.preprocess
        preprocess_cfg = {**tiny.preprocess_cfg, "resize_mode": "longest"}

    with ThreadPoolExecutor(1) as pool:
        preparer = image_preparer(Squashed(), pool)
        assert isinstance(preparer, PilPreparer) and isinstance(image_preparer(tiny, pool), BatchPreparer)
        batch = preparer(photos[:2] + [b"not an image"])
    assert batch.good == [0, 1] and list(batch.errors) == [2]
    torch.testing.assert_close(batch.pixels, torch.stack([prepare_image(d, tiny.preprocess).pixels for d in photos[:2]]))


def test_prepared_ahead_prepares_the_next_chunks_while_the_caller_works():
    started: list[int] = []
    lock = threading.Lock()

    def prepare(chunk: list[int]) -> list[int]:
        with lock:
            started.append(chunk[0])
        return [i * 10 for i in chunk]

    chunks = [[0, 1], [2, 3], [4, 5], [6]]
    with ThreadPoolExecutor(1) as pool:
        seen = []
        for chunk, result in prepared_ahead(pool, chunks, prepare, depth=2):
            if chunk == [0, 1]:
                time.sleep(0.2)  # the caller is busy: the next two chunks are prepared meanwhile
                assert started == [0, 2, 4]
            seen.append((chunk, result))
    assert seen == [(c, [i * 10 for i in c]) for c in chunks]


@CUDA
def test_gpu_prepared_and_cpu_prepared_embeddings_agree_on_real_photos(photos):
    torch.manual_seed(0)
    model = load_clip(ClipSpec("ViT-B-32", None, device="cuda", precision="fp32"))
    datas, broken = _mixed(photos)
    datas += _stored(photos, 1000, mode="keep_ratio")  # drafted on the CPU path, whole on the GPU
    spec = PixelSpec.of(model.preprocess_cfg)
    with ThreadPoolExecutor(4) as pool:
        preparer = image_preparer(model, pool)
        assert isinstance(preparer, BatchPreparer) and preparer.nvjpeg and preparer.cuda
        on_gpu = preparer(datas)
        on_cpu = BatchPreparer(spec, "cpu", pool)(datas)
    assert on_gpu.good == on_cpu.good and set(on_gpu.errors) == set(on_cpu.errors) == broken
    pixels = on_gpu.model_input()
    assert pixels.device.type == "cuda" and pixels.shape == on_cpu.pixels.shape
    cosines = np.sum(model.encode_images(pixels) * model.encode_images(on_cpu.pixels), axis=1)
    assert cosines.min() >= 0.99, cosines


@CUDA
def test_scoring_on_the_gpu_gives_the_cpus_embeddings(tmp_path, photos):
    """A ViT-B-32 (one set of random weights, saved and loaded on each device) scoring two download
    shards on the GPU (nvJPEG, side stream, pinned copies out) and on the CPU: the same rows and
    errors, embeddings within cosine 0.99."""
    torch.manual_seed(1)
    checkpoint = str(tmp_path / "vit-b-32.pt")
    torch.save(open_clip.create_model("ViT-B-32", pretrained=None).state_dict(), checkpoint)
    datas, broken = _mixed(photos)
    for number in range(2):
        write_download_shard(str(tmp_path), number, [(d, f"photo {i}", "en") for i, d in enumerate(datas)])
    shards = [read_shard(str(tmp_path), number) for number in range(2)]
    results = {}
    for device in ("cuda", "cpu"):
        clip = load_clip(ClipSpec("ViT-B-32", checkpoint, device, "fp32"))  # the preparation differs, not the precision
        results[device] = score_shards(shards, Towers(clip, {"en": clip, "multi": clip}), BatchSizes(images=5, texts=4))
    for on_gpu, on_cpu in zip(results["cuda"], results["cpu"]):
        assert on_gpu.table.equals(on_cpu.table) and len(on_gpu.errors) == len(on_cpu.errors) == len(broken)
        assert np.sum(on_gpu.img_emb * on_cpu.img_emb, axis=1).min() >= 0.99
        assert np.sum(on_gpu.text_emb * on_cpu.text_emb, axis=1).min() >= 0.99
