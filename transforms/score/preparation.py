"""Batches of model input, prepared ahead of the model.

A preparer turns a batch's encoded images into an `ImageBatch`: the model input already on the
model's device, and the rows that could not be decoded.

    bytes -> decoded to uint8 (3, H, W): on a GPU, whole JPEGs by nvJPEG in one call
             (gpu_prepare.py); the rest, and everything on CPU, on the thread pool (images.py:
             Pillow header, draft-scaled or libjpeg-turbo JPEGs, Pillow for other formats),
             copied to the GPU from pinned memory when there is one
          -> resized and centre-cropped where the batch goes (pixels.py; on a GPU the images of
             one size together), normalised as one batch

On a GPU this runs on a side CUDA stream, so it overlaps the towers' work on the batch before.
Decoding threads never compute with torch: its intra-op thread teams, one per calling thread,
would crowd the cores. `prepared_ahead` keeps the next batches in preparation on another thread
while the caller runs the model on the current one.
"""

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, Future
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TypeVar

import torch

from crawl2clip.transforms.score.gpu_prepare import decode_on_device
from crawl2clip.transforms.score.images import decode_pixels, prepare_image
from crawl2clip.transforms.score.pixels import PixelSpec, normalise, resize_and_crop

Chunk = TypeVar("Chunk")
Result = TypeVar("Result")


@dataclass
class ImageBatch:
    """`pixels`: the model input of the rows `good` (positions in the batch, in order); `errors`:
    position -> why its image could not be prepared. `ready`: set when the pixels were made on
    another CUDA stream."""
    pixels: torch.Tensor | None
    good: list[int]
    errors: dict[int, str]
    ready: torch.cuda.Event | None = None

    def model_input(self) -> torch.Tensor:
        """The pixels, safe to use on the current CUDA stream (it waits for their preparation)."""
        if self.ready is not None:
            stream = torch.cuda.current_stream(self.pixels.device)
            stream.wait_event(self.ready)
            self.pixels.record_stream(stream)
        return self.pixels


class BatchPreparer:
    """Callable: encoded images -> ImageBatch on `device` (see the module doc). `nvjpeg`
    (default: on CUDA devices) decodes whole JPEGs with torchvision's batched decoder on `device`."""

    def __init__(self, spec: PixelSpec, device: str | torch.device, pool: Executor, nvjpeg: bool | None = None):
        self.spec = spec
        self.device = torch.device(device)
        self.pool = pool
        self.cuda = self.device.type == "cuda"
        self.nvjpeg = self.cuda if nvjpeg is None else nvjpeg
        self.stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.spare: deque[torch.Tensor] = deque(maxlen=_SPARE_BUFFERS)  # CPU model inputs done with

    def recycle(self, batch: ImageBatch) -> None:
        """The model is done with `batch`: its pixels' memory may hold a later batch (on CPU;
        a GPU's caching allocator reuses memory by itself)."""
        if batch.pixels is not None and not self.cuda:
            self.spare.append(batch.pixels)

    def _output(self, shape: torch.Size) -> torch.Tensor | None:
        while self.spare:
            buffer = self.spare.popleft()
            if buffer.shape == shape:
                return buffer
        return None

    def _resized(self, decoded: dict[int, torch.Tensor], rows: list[int]) -> dict[int, torch.Tensor]:
        """Row -> uint8 (3, S, S). A GPU resizes the images of one size together (one kernel
        each step); a CPU one at a time (stacking full-size images costs more than it saves)."""
        if not self.cuda:
            return {row: resize_and_crop(decoded[row][None], self.spec)[0] for row in rows}
        by_size: dict[tuple[int, ...], list[int]] = {}
        for row in rows:
            by_size.setdefault(tuple(decoded[row].shape), []).append(row)
        resized = {}
        for same_size in by_size.values():
            resized.update(zip(same_size, resize_and_crop(torch.stack([decoded[row] for row in same_size]), self.spec)))
        return resized

    def _to_device(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.pin_memory().to(self.device, non_blocking=True) if self.cuda else pixels

    def __call__(self, datas: Sequence[bytes]) -> ImageBatch:
        with torch.cuda.stream(self.stream) if self.cuda else nullcontext():
            decoded = decode_on_device(datas, self.device) if self.nvjpeg else {}
            rest = [i for i in range(len(datas)) if i not in decoded]
            errors = {}
            for row, result in zip(rest, self.pool.map(lambda i: decode_pixels(datas[i], self.spec.size), rest)):
                if result.pixels is None:
                    errors[row] = result.error
                else:
                    decoded[row] = self._to_device(result.pixels)
            good = sorted(decoded)
            resized = self._resized(decoded, good)
            pixels = None
            if good:
                stacked = torch.stack([resized[row] for row in good])
                pixels = normalise(stacked, self.spec, None if self.cuda else self._output(stacked.shape))
            ready = None
            if self.cuda:
                ready = torch.cuda.Event()
                ready.record(self.stream)
        return ImageBatch(pixels, good, errors, ready)


_SPARE_BUFFERS = 4


class PilPreparer:
    """Callable: encoded images -> ImageBatch through the model's own PIL `preprocess`, per image
    on `pool`: for preprocessing pixels.py does not write."""

    def __init__(self, preprocess: Callable, device: str, pool: Executor):
        self.preprocess = preprocess
        self.device = torch.device(device)
        self.pool = pool

    def __call__(self, datas: Sequence[bytes]) -> ImageBatch:
        results = list(self.pool.map(lambda data: prepare_image(data, self.preprocess), datas))
        good = [i for i, result in enumerate(results) if result.pixels is not None]
        errors = {i: result.error for i, result in enumerate(results) if result.pixels is None}
        pixels = torch.stack([results[i].pixels for i in good]).to(self.device) if good else None
        return ImageBatch(pixels, good, errors)

    def recycle(self, batch: ImageBatch) -> None:
        pass


def image_preparer(clip, pool: Executor) -> Callable[[Sequence[bytes]], ImageBatch]:
    """How `clip`'s images are prepared: BatchPreparer on its device (nvJPEG on a GPU), or
    open_clip's own transform where its preprocessing is not the usual one."""
    spec = PixelSpec.of(clip.preprocess_cfg)
    if spec is None:
        return PilPreparer(clip.preprocess, clip.device, pool)
    return BatchPreparer(spec, clip.device, pool)


def prepared_ahead(executor: Executor, chunks: Iterable[Chunk], prepare: Callable[[Chunk], Result],
                   depth: int = 2) -> Iterator[tuple[Chunk, Result]]:
    """Yields (chunk, prepare(chunk)) in order, keeping up to `depth` further chunks in
    preparation on `executor` while the caller works on the current one."""
    pending: deque[tuple[Chunk, Future]] = deque()
    upcoming = iter(chunks)

    def submit() -> None:
        chunk = next(upcoming, _END)
        if chunk is not _END:
            pending.append((chunk, executor.submit(prepare, chunk)))

    for _ in range(depth + 1):
        submit()
    try:
        while pending:
            chunk, future = pending.popleft()
            yield chunk, future.result()
            submit()
    finally:
        for _, future in pending:
            future.cancel()


_END = object()
