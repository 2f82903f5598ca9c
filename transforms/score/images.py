"""Decoding and preparing images on the CPU, as plain functions run on a thread pool.

CLIP's images: a JPEG large enough is decoded at a reduced scale (Pillow's draft mode: 1/2, 1/4
or 1/8), others by libjpeg-turbo through torchvision, other formats by Pillow, into uint8
tensors that preparation.py resizes a batch at a time (pixels.py). Pillow and libjpeg-turbo
release the GIL while they decode, so a few threads decode the next batches while the model
works on the current one. Other models (the watermark detector) get the whole image and their
own PIL preprocessing.
"""

import io
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from crawl2clip.transforms.score.pixels import PixelSpec, resize_and_crop

# Pillow's own errors for broken or hostile bytes; anything else is a bug and should surface.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


JPEG_START = b"\xff\xd8\xff"
# A JPEG is draft-decoded to no less than twice the model's input, so the last halving (at least)
# is the bicubic filter's: reduced-scale decoding averages blocks of pixels, and going straight
# to the input size with it moves a small model's embeddings. Worst cosine to the whole image's
# embedding, straight / at twice: ViT-B-32 (random weights) on real photos 0.997 / 0.999; the
# tiny CLIP (48 px) on its rendered scenes 0.92 / 0.989, on real photos 0.84 / 0.92 (as much as
# a one-pixel shift of its crop moves them: 0.93).
_DRAFT_MARGIN = 2


class Prepared(NamedTuple):
    """A preprocessed image, or why it could not be."""
    pixels: torch.Tensor | None
    error: str = ""


def decode_image(data: bytes) -> Image.Image:
    """RGB pixels of encoded image bytes, decoded whole."""
    return Image.open(io.BytesIO(data)).convert("RGB")


def _rgb_tensor(image: Image.Image) -> torch.Tensor:
    """uint8 (3, H, W) of a Pillow image (a channels-last view: torch's uint8 resampling is fastest on it)."""
    array = np.array(image if image.mode == "RGB" else image.convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1)


def decode_rgb(data: bytes, min_side: int) -> torch.Tensor:
    """uint8 (3, H, W) RGB pixels of encoded image bytes, for a model input of `min_side` pixels:
    a JPEG at least four times that on its shortest side is decoded at the smallest reduced scale
    (1/2, 1/4, 1/8) still covering twice it; other JPEGs by libjpeg-turbo directly; other formats
    by Pillow. Pillow reads the header first either way, so what it refuses (decompression bombs,
    unknown formats) is refused."""
    image = Image.open(io.BytesIO(data))
    if image.format == "JPEG":
        covered = _DRAFT_MARGIN * min_side
        if min(image.size) >= 2 * covered:
            image.draft(None, (covered, covered))
        elif image.mode in ("RGB", "L"):
            try:
                return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
            except RuntimeError:
                pass  # Pillow decodes it, or says why not
    return _rgb_tensor(image)


def decode_pixels(data: bytes, min_side: int) -> Prepared:
    """decode_rgb's uint8 (3, H, W), or why the image could not be decoded. No torch computation:
    threads running it never start torch's intra-op thread teams."""
    try:
        return Prepared(decode_rgb(data, min_side))
    except DECODE_ERRORS as exc:
        return Prepared(None, f"{type(exc).__name__}: {exc}")


def prepare_pixels(data: bytes, spec: PixelSpec) -> Prepared:
    """Decode + open_clip's resize and centre crop of one image: uint8 (3, size, size), or why not."""
    decoded = decode_pixels(data, spec.size)
    return decoded if decoded.pixels is None else Prepared(resize_and_crop(decoded.pixels[None], spec)[0])


def prepare_image(data: bytes, preprocess: Callable[[Image.Image], torch.Tensor]) -> Prepared:
    """Decode + the model's preprocessing; a broken image becomes a `Prepared` with an error."""
    try:
        return Prepared(preprocess(decode_image(data)))
    except DECODE_ERRORS as exc:
        return Prepared(None, f"{type(exc).__name__}: {exc}")


def prefetched(pool: Executor, chunks: Sequence[Sequence[int]], prepare: Callable[[int], Prepared],
               depth: int = 2) -> Iterator[tuple[Sequence[int], list[Prepared]]]:
    """Yields (chunk, its prepared images) in order, keeping the next `depth` chunks in preparation
    on `pool` while the caller works on the current one."""
    pending: deque[tuple[Sequence[int], list[Future]]] = deque()

    def submit(chunk: Sequence[int]) -> None:
        pending.append((chunk, [pool.submit(prepare, i) for i in chunk]))

    upcoming = iter(chunks)
    for chunk in upcoming:
        submit(chunk)
        if len(pending) > depth:
            break
    try:
        while pending:
            chunk, futures = pending.popleft()
            following = next(upcoming, None)
            if following is not None:
                submit(following)
            yield chunk, [future.result() for future in futures]
    finally:
        for _, futures in pending:
            for future in futures:
                future.cancel()
