"""Decoding and preprocessing images for CLIP, as plain functions run on a thread pool.

Pillow releases the GIL while it decodes and resizes, so a few threads prepare the next batches
while the model works on the current one: preprocessing stays off the model's critical path.
"""

import io
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future
from typing import NamedTuple

import torch
from PIL import Image

# Pillow's own errors for broken or hostile bytes; anything else is a bug and should surface.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class Prepared(NamedTuple):
    """A preprocessed image, or why it could not be."""
    pixels: torch.Tensor | None
    error: str = ""


def decode_image(data: bytes) -> Image.Image:
    """RGB pixels of encoded image bytes, decoded whole: exactly what open_clip's preprocessing
    expects (Pillow's reduced-scale JPEG decoding would be faster on large images, but it moves
    the embeddings by about 0.02)."""
    return Image.open(io.BytesIO(data)).convert("RGB")


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
