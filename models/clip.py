"""CLIP models through open_clip, by name with a pretrained tag or a local checkpoint path.

One entry point for every source, as open_clip's factory has: `ViT-B-32` + `openai` (weights the
user downloaded into open_clip's cache), `ViT-B-32` + `/path/to/checkpoint.pt`, or the project's
own tiny model (`crawl2clip-tiny` + its committed checkpoint), all through the same code.
Embeddings come out L2-normalised as float32 numpy arrays.
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import open_clip
import torch
from PIL import Image

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
TINY_MODEL = "crawl2clip-tiny"
TINY_CHECKPOINT = os.path.join(ASSETS, "crawl2clip-tiny.pt")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ClipSpec:
    """Which CLIP to load and how to run it. `pretrained` is an open_clip tag, a local
    checkpoint file, or None for random weights (benchmarks)."""
    model: str = "ViT-B-32"
    pretrained: str | None = "openai"
    device: str = "auto"
    precision: str = "auto"


def tiny_clip_spec(device: str = "auto") -> ClipSpec:
    """The project's own small CLIP, trained on rendered images (see models/tiny_clip.py)."""
    return ClipSpec(model=TINY_MODEL, pretrained=TINY_CHECKPOINT, device=device)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_precision(precision: str, device: str) -> str:
    """bf16 autocast on GPUs, fp32 on CPU unless asked otherwise."""
    if precision == "auto":
        return "bf16" if device.startswith("cuda") else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return precision


@cache
def register_project_models() -> None:
    """Makes the model configs in models/assets (the tiny model's) known to open_clip by name."""
    open_clip.add_model_config(ASSETS)


class ClipModel:
    """A loaded CLIP: `preprocess` (PIL image -> CHW tensor, CPU), `encode_images` and
    `encode_texts` (-> L2-normalised float32 arrays)."""

    def __init__(self, spec: ClipSpec):
        register_project_models()
        if spec.pretrained and spec.pretrained not in open_clip.list_pretrained_tags_by_model(spec.model) \
                and not os.path.isfile(spec.pretrained):
            raise FileNotFoundError(
                f"{spec.model}: {spec.pretrained!r} is neither an open_clip pretrained tag of this model "
                f"nor a checkpoint file")
        self.spec = spec
        self.device = resolve_device(spec.device)
        self.precision = resolve_precision(spec.precision, self.device)
        model, _, preprocess = open_clip.create_model_and_transforms(
            spec.model, pretrained=spec.pretrained, device=self.device)
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = open_clip.get_tokenizer(spec.model)
        self.embed_dim = int(self.encode_texts(["a"]).shape[1])
        size = self.model.visual.image_size
        self.image_size = size[0] if isinstance(size, (tuple, list)) else int(size)

    def _autocast(self):
        dtype = _AUTOCAST_DTYPES.get(self.precision)
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.preprocess(image) for image in images])

    @torch.inference_mode()
    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        with self._autocast():
            features = self.model.encode_image(pixels.to(self.device, non_blocking=True))
        return _normalised(features)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self.tokenizer(list(texts)).to(self.device)
        with self._autocast():
            features = self.model.encode_text(tokens)
        return _normalised(features)


def _normalised(features: torch.Tensor) -> np.ndarray:
    features = features.float()
    return torch.nn.functional.normalize(features, dim=-1).cpu().numpy()


def load_clip(spec: ClipSpec) -> ClipModel:
    return ClipModel(spec)
