"""M-CLIP text towers: a Hugging Face text encoder, mean pooling and a linear projection,
trained into a CLIP's text space (FreddeFrallan/Multilingual-CLIP, used by LAION for captions
that are not English).

The format is M-CLIP's, as published on Hugging Face (e.g. M-CLIP/XLM-Roberta-Large-Vit-B-32):

    config.json          {"model_type": "M-CLIP", "modelBase": "xlm-roberta-large",
                          "transformerDimensions": 1024, "numDims": 512, ...}
    pytorch_model.bin    (or model.safetensors) `transformer.*`: the encoder's weights, and
                         `LinearTransformation.weight` / `.bias`: the projection
    tokenizer files      whatever `AutoTokenizer` reads (tokenizer.json, sentencepiece.bpe.model, ...)

A caption's embedding is the projection of the mean of the encoder's last hidden states over
its tokens (the attention mask), as M-CLIP computes it. The encoder's architecture is
`modelBase`'s config: a folder of that name inside the tower's folder when there is one (the
project's own tower ships its `encoder/config.json`), else a Hugging Face name or path. Only that
config is read; every weight comes from the tower's checkpoint (M-CLIP's own code downloads the
base model's weights first and then overwrites them all). The loader is generic: any encoder
`AutoModel` builds from its config (XLM-R, LaBSE/BERT, ...) loads the same way.

A tower is named by a local folder, a folder on any Beam filesystem (copied locally once per
worker), or a Hugging Face repository id (from the local Hugging Face cache, or downloaded).
"""

import json
import os
from dataclasses import dataclass

import numpy as np
import torch

from crawl2clip.models.clip import autocast, resolve_device, resolve_precision
from crawl2clip.transforms import files

MODEL_TYPE = "M-CLIP"
CHECKPOINTS = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "sentencepiece.bpe.model",
                   "vocab.txt", "added_tokens.json")
PROJECTION = "LinearTransformation"
ENCODER = "transformer"
# Encoder buffers older transformers saved with the weights; today's rebuild them.
_REBUILT_BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")
# The image towers LAION's published M-CLIP towers were trained for (their model cards).
PUBLISHED = {
    "M-CLIP/XLM-Roberta-Large-Vit-B-32": {"model": "ViT-B-32", "pretrained": "openai"},
    "M-CLIP/XLM-Roberta-Large-Vit-L-14": {"model": "ViT-L-14", "pretrained": "openai"},
    "M-CLIP/LABSE-Vit-L-14": {"model": "ViT-L-14", "pretrained": "openai"},
    "M-CLIP/XLM-Roberta-Large-Vit-B-16Plus": {"model": "ViT-B-16-plus-240", "pretrained": "laion400m_e32"},
}


@dataclass(frozen=True)
class MClipSpec:
    """Which M-CLIP tower to load (folder, Beam filesystem URL or Hugging Face id) and how to run it."""
    source: str
    device: str = "auto"
    precision: str = "auto"


def _is_hub_id(source: str) -> bool:
    return files.is_local(source) and not os.path.exists(source) and source.count("/") == 1


def _hub_file(repo: str, name: str) -> str:
    """A file of a Hugging Face repository: from the local cache when there, else downloaded."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return hf_hub_download(repo, name, local_files_only=True)
    except LocalEntryNotFoundError:
        return hf_hub_download(repo, name)


def read_config(source: str) -> dict:
    """The tower's config.json, checked, without loading weights (for checks before a run)."""
    try:
        if _is_hub_id(source):
            text = open(_hub_file(source, "config.json"), encoding="utf-8").read()
        else:
            text = files.read_bytes(files.join(source, "config.json")).decode("utf-8")
    except Exception as exc:  # a missing folder, no network and no cached copy, ...
        raise ValueError(f"{source}: cannot read its config.json ({type(exc).__name__}: {exc}); give a folder "
                         "holding an M-CLIP text tower, or a Hugging Face id reachable or cached here") from exc
    config = json.loads(text)
    missing = [key for key in ("modelBase", "transformerDimensions", "numDims") if key not in config]
    if missing:
        raise ValueError(f"{source}: not an M-CLIP text tower (config.json has no {', '.join(missing)})")
    return config


def trained_for(source: str, config: dict) -> dict | None:
    """The CLIP (model, pretrained) whose text space the tower was trained into, when known: the
    project's towers record it in their config, LAION's published ones by their name."""
    if isinstance(config.get("clip_model"), dict):
        return config["clip_model"]
    for name in (source.rstrip("/"), config.get("_name_or_path", "")):
        if name in PUBLISHED:
            return PUBLISHED[name]
    return None


def local_folder(source: str) -> str:
    """A local folder with the tower's files: the folder itself, a cached copy of a remote one,
    or the Hugging Face cache's snapshot."""
    names = ["config.json", *CHECKPOINTS, *TOKENIZER_FILES, f"{read_config(source)['modelBase']}/config.json"]
    if _is_hub_id(source):
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError

        try:  # the cached snapshot, without asking the Hub
            return snapshot_download(source, allow_patterns=names, local_files_only=True)
        except LocalEntryNotFoundError:
            return snapshot_download(source, allow_patterns=names)
    return files.local_folder(source, names)


def _encoder_config(folder: str, base: str):
    from transformers import AutoConfig

    inside = os.path.join(folder, base)
    return AutoConfig.from_pretrained(inside if os.path.isfile(os.path.join(inside, "config.json")) else base)


def _checkpoint(folder: str) -> dict[str, torch.Tensor]:
    for name in CHECKPOINTS:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            if name.endswith(".safetensors"):
                from safetensors.torch import load_file

                return load_file(path)
            return torch.load(path, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"{folder}: no {' or '.join(CHECKPOINTS)}")


def _split(state: dict[str, torch.Tensor], folder: str) -> tuple[dict, dict]:
    encoder = {k[len(ENCODER) + 1:]: v for k, v in state.items() if k.startswith(ENCODER + ".")}
    projection = {k[len(PROJECTION) + 1:]: v for k, v in state.items() if k.startswith(PROJECTION + ".")}
    other = [k for k in state if not k.startswith((ENCODER + ".", PROJECTION + "."))]
    if not encoder or set(projection) != {"weight", "bias"} or other:
        raise ValueError(f"{folder}: an M-CLIP checkpoint holds {ENCODER}.* and {PROJECTION}.weight/bias only "
                         f"(found {len(encoder)} encoder tensors, projection {sorted(projection)}, others {other[:3]})")
    return encoder, projection


class MClipTextTower:
    """A loaded M-CLIP tower: `encode_texts` -> L2-normalised float32 embeddings in its CLIP's space."""

    def __init__(self, spec: MClipSpec):
        from transformers import AutoModel, AutoTokenizer

        self.spec = spec
        self.device = resolve_device(spec.device)
        self.precision = resolve_precision(spec.precision, self.device)
        folder = local_folder(spec.source)
        self.config = read_config(folder)
        encoder_config = _encoder_config(folder, self.config["modelBase"])
        encoder_state, projection_state = _split(_checkpoint(folder), folder)
        self.transformer = AutoModel.from_config(encoder_config)
        missing, unexpected = self.transformer.load_state_dict(encoder_state, strict=False)
        unexpected = [k for k in unexpected if k not in _REBUILT_BUFFERS]
        if missing or unexpected:
            raise ValueError(f"{spec.source}: the checkpoint does not fit {self.config['modelBase']}'s architecture "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        self.projection = torch.nn.Linear(int(self.config["transformerDimensions"]), int(self.config["numDims"]))
        self.projection.load_state_dict(projection_state)
        self.transformer.to(self.device).eval()
        self.projection.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        positions = getattr(encoder_config, "max_position_embeddings", 512)
        # XLM-R-style encoders number positions after the padding index: two fewer usable tokens.
        self.max_length = min(int(self.tokenizer.model_max_length), positions - 2 if positions > 2 else positions)
        self.embed_dim = int(self.config["numDims"])
        self.trained_for = trained_for(spec.source, self.config)

    def _tokenize(self, texts: list[str]) -> dict:
        # M-CLIP pads to the batch's longest caption; truncating at the encoder's limit only
        # changes captions too long for it, which would otherwise fail.
        return self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                              return_tensors="pt")

    def text_batches(self, texts: list[str], batch_size: int) -> list[tuple[np.ndarray, dict]]:
        """The captions tokenised, as (positions in `texts`, tokens) batches of at most
        `batch_size`, sorted by length and each cut to its longest caption (the attention mask
        keeps padding out of the embedding, so the cut changes nothing)."""
        tokens = self._tokenize(texts)
        lengths = tokens["attention_mask"].sum(dim=1)
        order = torch.argsort(lengths, stable=True).numpy()
        batches = []
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            index = torch.from_numpy(rows)
            longest = int(lengths[index].max())
            cut = slice(None, longest) if self.tokenizer.padding_side == "right" else slice(-longest, None)
            batches.append((rows, {name: tokens[name][index][:, cut] for name in ("input_ids", "attention_mask")}))
        return batches

    @torch.inference_mode()
    def embed_tokens(self, tokens) -> torch.Tensor:
        """Unit-length float32 embeddings of `text_batches` tokens, left on the model's device."""
        input_ids = tokens["input_ids"].to(self.device)
        attention_mask = tokens["attention_mask"].to(self.device)
        with autocast(self.device, self.precision):
            hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask)[0]
            mask = attention_mask.unsqueeze(2).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1)
            features = self.projection(pooled)
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def encode_tokens(self, tokens) -> np.ndarray:
        return self.embed_tokens(tokens).cpu().numpy()

    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """M-CLIP's own way: one batch padded to its longest caption."""
        return self.encode_tokens(self._tokenize(texts))

    def describe(self) -> dict:
        return {"kind": "m-clip", "source": self.spec.source, "model_base": self.config["modelBase"],
                "embed_dim": self.embed_dim, "trained_for": self.trained_for}


def load_mclip(spec: MClipSpec) -> MClipTextTower:
    return MClipTextTower(spec)


def save_mclip(folder: str, transformer, projection: torch.nn.Linear, tokenizer, clip_model: dict,
               base: str = "encoder") -> None:
    """Writes a tower in M-CLIP's format: config.json, pytorch_model.bin, the tokenizer, and the
    encoder's config in `folder/base/` (the project's towers carry their architecture with them)."""
    os.makedirs(os.path.join(folder, base), exist_ok=True)
    transformer.config.to_json_file(os.path.join(folder, base, "config.json"))
    config = {"model_type": MODEL_TYPE, "architectures": ["MultilingualCLIP"], "modelBase": base,
              "transformerDimensions": projection.in_features, "numDims": projection.out_features,
              "clip_model": clip_model}
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    state = {f"{ENCODER}.{k}": v.detach().cpu().contiguous() for k, v in transformer.state_dict().items()}
    state |= {f"{PROJECTION}.{k}": v.detach().cpu().contiguous() for k, v in projection.state_dict().items()}
    torch.save(state, os.path.join(folder, "pytorch_model.bin"))
    tokenizer.save_pretrained(folder)
