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
from open_clip.transformer import text_global_pool
from PIL import Image

from crawl2clip.models.devices import choose_device, process_slot

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
TINY_MODEL = "crawl2clip-tiny"
TINY_CHECKPOINT = os.path.join(ASSETS, "crawl2clip-tiny.pt")
# the tiny CLIP's multilingual text tower (M-CLIP format, models/tiny_multilingual.py)
TINY_MULTILINGUAL = os.path.join(ASSETS, "crawl2clip-tiny-multilingual")

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
    """`auto`: this worker process's own GPU when there are GPUs (models/devices.py), else CPU."""
    if device == "auto":
        return choose_device(torch.cuda.device_count() if torch.cuda.is_available() else 0, os.environ, process_slot)
    return device


def resolve_precision(precision: str, device: str) -> str:
    """bf16 autocast on GPUs, fp32 on CPU unless asked otherwise."""
    if precision == "auto":
        return "bf16" if device.startswith("cuda") else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return precision


def autocast(device: str, precision: str):
    """bf16/fp16 autocast on `device` for those precisions, a no-op context for fp32."""
    dtype = _AUTOCAST_DTYPES.get(precision)
    return torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=dtype, enabled=dtype is not None)


@cache
def register_project_models() -> None:
    """Makes the model configs in models/assets (the tiny model's) known to open_clip by name."""
    open_clip.add_model_config(ASSETS)


class ClipModel:
    """A loaded CLIP: `preprocess` (PIL image -> CHW tensor, CPU) and its `preprocess_cfg`,
    `encode_images` and `encode_texts` (-> L2-normalised float32 arrays); `text_batches` +
    `encode_tokens` split the text side so captions can be tokenised ahead of the model."""

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
        self.preprocess_cfg = dict(getattr(self.model.visual, "preprocess_cfg", {}) or {})
        self.tokenizer = open_clip.get_tokenizer(spec.model)
        self._eot_pooled = _eot_pooled(self.model)
        self.embed_dim = int(self.encode_texts(["a"]).shape[1])
        size = self.model.visual.image_size
        self.image_size = size[0] if isinstance(size, (tuple, list)) else int(size)

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.preprocess(image) for image in images])

    @torch.inference_mode()
    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unit-length float32 image embeddings, left on the model's device."""
        with autocast(self.device, self.precision):
            features = self.model.encode_image(pixels.to(self.device, non_blocking=True))
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def encode_images(self, pixels: torch.Tensor) -> np.ndarray:
        return self.embed_images(pixels).cpu().numpy()

    def _pooled_at(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """Each caption's pooling position (its end token), when the text tower is causal and
        pools there: nothing after it changes the embedding. None otherwise."""
        if self._eot_pooled is None:
            return None
        if self._eot_pooled == "eos":
            return (tokens == self.model.text_eos_id).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)

    def text_batches(self, texts: Sequence[str], batch_size: int) -> list[tuple[np.ndarray, torch.Tensor]]:
        """The captions tokenised, as (positions in `texts`, tokens) batches of at most
        `batch_size`: sorted by length and each cut to its longest caption where the tower
        allows (`encode_tokens` gives the same embeddings as on the whole context)."""
        tokens = self.tokenizer(list(texts))
        pooled = self._pooled_at(tokens)
        if pooled is None:
            return [(np.arange(start, min(start + batch_size, len(texts))), tokens[start:start + batch_size])
                    for start in range(0, len(texts), batch_size)]
        order = torch.argsort(pooled, stable=True).numpy()
        batches = []
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            index = torch.from_numpy(rows)
            batches.append((rows, tokens[index, :int(pooled[index].max()) + 1]))
        return batches

    @torch.inference_mode()
    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Unit-length float32 caption embeddings of `text_batches` tokens, left on the model's device."""
        tokens = tokens.to(self.device, non_blocking=True)
        with autocast(self.device, self.precision):
            if self._eot_pooled is not None and tokens.shape[1] < self.model.positional_embedding.shape[0]:
                features = _encode_trimmed_text(self.model, tokens)
            else:
                features = self.model.encode_text(tokens)
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def encode_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        return self.embed_tokens(tokens).cpu().numpy()

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """One batch, cut to its longest caption where the tower allows."""
        tokens = self.tokenizer(list(texts))
        pooled = self._pooled_at(tokens)
        return self.encode_tokens(tokens if pooled is None or not len(texts) else tokens[:, :int(pooled.max()) + 1])


def _eot_pooled(model) -> str | None:
    """'argmax' or 'eos' for open_clip's own text transformer with a causal mask pooled at the
    end token (the OpenAI-style CLIPs): its captions can be cut after their end token. None for
    other text towers (Hugging Face encoders, first/last-token pooling), which get the whole context."""
    if not isinstance(model, open_clip.CLIP) or getattr(model, "attn_mask", None) is None:
        return None
    pool = getattr(model, "text_pool_type", "argmax")
    if pool == "eos" and getattr(model, "text_eos_id", None) is None:
        return None
    return pool if pool in ("argmax", "eos") else None


def _encode_trimmed_text(model, tokens: torch.Tensor) -> torch.Tensor:
    """open_clip's CLIP.encode_text on a context cut to `tokens`' length: the positional
    embedding and the causal mask cut to match; the rest is its code."""
    length = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:length, :length]))
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return x


def load_clip(spec: ClipSpec) -> ClipModel:
    return ClipModel(spec)
