"""Decoding a batch's JPEGs on the model's GPU with nvJPEG (`torchvision.io.decode_jpeg(list,
device="cuda")`, one call per batch), for preparation.py's `BatchPreparer`.

Only whole JPEGs go there: a file cut short goes to the CPU path with the other formats and what
nvJPEG refuses, where Pillow decodes it or says why not. The same code runs on CPU tensors
(torchvision decodes a list there too), so the tests cover it on any machine and compare it with
the CPU path on CUDA ones.
"""

from collections.abc import Sequence

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from crawl2clip.transforms.score.images import JPEG_START

_JPEG_END = b"\xff\xd9"


def whole_jpeg(data: bytes) -> bool:
    """A JPEG that ends with its end marker. (A decoder on the GPU might fill in a missing part
    where Pillow, on the CPU path, reports the file as truncated.)"""
    return data.startswith(JPEG_START) and data.rstrip(b"\0").endswith(_JPEG_END)


def decode_jpegs(datas: Sequence[bytes], device: torch.device) -> list[torch.Tensor | None]:
    """uint8 (3, H, W) RGB images on `device`, None where the decoder refuses one: one batched
    call; after a failure, one call per image to find which."""
    encoded = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in datas]
    if not encoded:
        return []
    try:
        return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=device))
    except RuntimeError:
        pass
    decoded: list[torch.Tensor | None] = []
    for data in encoded:
        try:
            decoded.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            decoded.append(None)
    return decoded


def decode_on_device(datas: Sequence[bytes], device: torch.device) -> dict[int, torch.Tensor]:
    """Position -> uint8 (3, H, W) on `device`, for the whole JPEGs the decoder took."""
    rows = [i for i, data in enumerate(datas) if whole_jpeg(data)]
    return {row: image for row, image in zip(rows, decode_jpegs([datas[i] for i in rows], device))
            if image is not None}
