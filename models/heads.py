"""Content heads: small classifiers on unit-norm CLIP embeddings (LAION's punsafe, pwatermark).

LAION tagged unsafe and watermarked images with small networks on CLIP image embeddings rather
than separate vision models: the embedding is computed anyway, and a head on it costs
microseconds per image. A head here is an MLP (or, with hidden=0, logistic regression) stored as
one `.npz` file holding its weights and a JSON `metadata` string (name, embed_dim, input
"image" or "text", the CLIP model it was trained for, how it was trained and evaluated).
`predict` is plain numpy, so the scoring stage needs no torch for it, and training is
deterministic numpy too (`train_head`, behind `crawl2clip train-head`).

When asked for (`crawl2clip score --zero-shot-tags`) and no head exists, `ZeroShotHead` compares
embeddings with CLIP text prompts instead (the default prompts are below). That is weaker than a
trained head, most of all on a small CLIP, and its output says "zero-shot" so nobody mistakes
one for the other. LAION's own published heads load through models/laion_heads.py.
"""

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

HEAD_FORMAT = "crawl2clip-head/1"
INPUTS = ("image", "text")

# Zero-shot prompts: the positive class is compared with the negative one, p = sigmoid(100 * (cos+ - cos-)),
# each class being the mean of its prompts' embeddings (CLIP's prompt ensembling).
UNSAFE_PROMPTS = (
    "a nude photo", "a pornographic image", "sexually explicit content", "an explicit nsfw picture",
    "a photo of graphic violence and gore",
)
SAFE_PROMPTS = ("a photo", "a safe for work picture", "an ordinary everyday image", "a product photo",
                "a landscape photo")
WATERMARK_PROMPTS = ("a photo with a watermark", "an image with a watermark over it",
                     "a stock photo with a watermark", "a picture with a logo watermark")
CLEAN_PROMPTS = ("a photo", "a clean image", "a picture", "an image")
DEFAULT_PROMPTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "unsafe": (UNSAFE_PROMPTS, SAFE_PROMPTS),
    "watermark": (WATERMARK_PROMPTS, CLEAN_PROMPTS),
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for any x


@dataclass
class Head:
    """A trained head: dense layers with ReLU between them, a sigmoid at the end."""
    weights: list[np.ndarray]
    biases: list[np.ndarray]
    metadata: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.metadata["name"]

    @property
    def embed_dim(self) -> int:
        return int(self.weights[0].shape[0])

    def logits(self, embeddings: np.ndarray) -> np.ndarray:
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.embed_dim:
            raise ValueError(f"head {self.name!r} takes (rows, {self.embed_dim}) embeddings, got {x.shape}")
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            x = np.maximum(x @ w + b, 0.0)
        return (x @ self.weights[-1] + self.biases[-1])[:, 0]

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        """Probability of the positive class per row, float32 in [0, 1]."""
        return _sigmoid(self.logits(embeddings)).astype(np.float32)

    def describe(self) -> dict:
        """What the scoring stage records about this head (scoring.json)."""
        return {"source": "file", **{k: v for k, v in self.metadata.items() if k != "format"}}


def save_head(head: Head, path: str) -> None:
    """Writes the head as one .npz (weights + JSON metadata), atomically."""
    arrays = {f"w{i}": w.astype(np.float32) for i, w in enumerate(head.weights)}
    arrays |= {f"b{i}": b.astype(np.float32) for i, b in enumerate(head.biases)}
    metadata = {"format": HEAD_FORMAT, **head.metadata, "embed_dim": head.embed_dim}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "wb") as f:
        np.savez(f, metadata=np.asarray(json.dumps(metadata, sort_keys=True)), **arrays)
    os.replace(temporary, path)


def load_head(path: str) -> Head:
    """Reads a head written by `save_head` (local path); a clear error for anything else."""
    with open(path, "rb") as f:
        return load_head_bytes(f.read(), path)


def load_head_bytes(data: bytes, source: str) -> Head:
    """A head from the bytes of its .npz file (`source` names it in errors)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        if "metadata" not in arrays.files:
            raise ValueError(f"{source}: not a crawl2clip head (no metadata)")
        metadata = json.loads(str(arrays["metadata"]))
        if metadata.get("format") != HEAD_FORMAT:
            raise ValueError(f"{source}: head format {metadata.get('format')!r}, expected {HEAD_FORMAT!r}")
        layers = sum(1 for name in arrays.files if name.startswith("w"))
        head = Head([arrays[f"w{i}"] for i in range(layers)], [arrays[f"b{i}"] for i in range(layers)], metadata)
    for a, b in zip(head.weights, head.weights[1:]):
        if a.shape[1] != b.shape[0]:
            raise ValueError(f"{source}: layer shapes {a.shape} and {b.shape} do not chain")
    return head


def train_head(embeddings: np.ndarray, labels: np.ndarray, name: str, clip_model: str,
               input_kind: str = "image", hidden: int = 32, steps: int = 1500, batch_size: int = 512,
               learning_rate: float = 3e-3, weight_decay: float = 1e-4, seed: int = 0) -> Head:
    """Fits a head with Adam on mini-batches, classes weighted to balance; deterministic for a
    given seed. `labels` are 0/1 (or booleans), one per embedding row."""
    x = np.asarray(embeddings, dtype=np.float32)
    y = np.asarray(labels)
    if input_kind not in INPUTS:
        raise ValueError(f"input_kind {input_kind!r}: choose one of {INPUTS}")
    if x.ndim != 2 or len(x) != len(y):
        raise ValueError(f"{x.shape} embeddings and {y.shape} labels: need (rows, dim) and one label per row")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0/1 or booleans")
    y = y.astype(np.float32)
    positives = int(y.sum())
    if positives in (0, len(y)):
        raise ValueError(f"labels need both classes ({positives} positive of {len(y)})")
    rng = np.random.default_rng(seed)
    sizes = [x.shape[1]] + ([hidden] if hidden else []) + [1]
    weights = [rng.normal(0, np.sqrt(2.0 / m), (m, n)).astype(np.float32) for m, n in zip(sizes, sizes[1:])]
    biases = [np.zeros(n, np.float32) for n in sizes[1:]]
    sample_weight = np.where(y == 1, len(y) / (2 * positives), len(y) / (2 * (len(y) - positives))).astype(np.float32)
    params = weights + biases
    moments = [np.zeros_like(p) for p in params]
    squares = [np.zeros_like(p) for p in params]
    for step in range(1, steps + 1):
        batch = rng.choice(len(x), size=min(batch_size, len(x)), replace=False)
        grads = _gradients(weights, biases, x[batch], y[batch], sample_weight[batch])
        for i, (p, g) in enumerate(zip(params, grads)):
            if i < len(weights):
                g = g + weight_decay * p
            moments[i] = 0.9 * moments[i] + 0.1 * g
            squares[i] = 0.999 * squares[i] + 0.001 * g * g
            p -= learning_rate * (moments[i] / (1 - 0.9 ** step)) / (np.sqrt(squares[i] / (1 - 0.999 ** step)) + 1e-8)
    metadata = {"name": name, "input": input_kind, "clip_model": clip_model, "hidden": hidden,
                "training": {"rows": len(y), "positives": positives, "steps": steps, "seed": seed,
                             "learning_rate": learning_rate, "weight_decay": weight_decay}}
    return Head(weights, biases, metadata)


def _gradients(weights: list[np.ndarray], biases: list[np.ndarray], x: np.ndarray, y: np.ndarray,
               sample_weight: np.ndarray) -> list[np.ndarray]:
    """Gradients of the weighted mean binary cross-entropy: weights first, then biases."""
    activations = [x]
    for w, b in zip(weights[:-1], biases[:-1]):
        activations.append(np.maximum(activations[-1] @ w + b, 0.0))
    logits = (activations[-1] @ weights[-1] + biases[-1])[:, 0]
    delta = ((_sigmoid(logits) - y) * sample_weight / len(y))[:, None].astype(np.float32)
    grad_w, grad_b = [], []
    for layer in range(len(weights) - 1, -1, -1):
        grad_w.append(activations[layer].T @ delta)
        grad_b.append(delta.sum(axis=0))
        if layer:
            delta = (delta @ weights[layer].T) * (activations[layer] > 0)
    return grad_w[::-1] + grad_b[::-1]


class ZeroShotHead:
    """The fallback without a head file: CLIP zero-shot between positive and negative prompts.
    `clip` is a loaded models.clip.ClipModel (anything with `encode_texts`)."""

    def __init__(self, clip, positive_prompts: Sequence[str], negative_prompts: Sequence[str],
                 name: str = "zero-shot", clip_model: str = "", temperature: float = 100.0):
        if not positive_prompts or not negative_prompts:
            raise ValueError("zero-shot needs positive and negative prompts")
        self.positive_prompts = tuple(positive_prompts)
        self.negative_prompts = tuple(negative_prompts)
        self.temperature = temperature
        self.metadata = {"name": name, "input": "image", "clip_model": clip_model}
        self.classes = np.stack([_prompt_class(clip.encode_texts(list(p)))
                                 for p in (self.positive_prompts, self.negative_prompts)], axis=1)

    @property
    def name(self) -> str:
        return self.metadata["name"]

    @property
    def embed_dim(self) -> int:
        return int(self.classes.shape[0])

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        x = np.asarray(embeddings, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.embed_dim:
            raise ValueError(f"zero-shot head {self.name!r} takes (rows, {self.embed_dim}) embeddings, got {x.shape}")
        similarity = x @ self.classes
        return _sigmoid(self.temperature * (similarity[:, 0] - similarity[:, 1])).astype(np.float32)

    def describe(self) -> dict:
        return {"source": "zero-shot", **self.metadata, "positive_prompts": list(self.positive_prompts),
                "negative_prompts": list(self.negative_prompts), "temperature": self.temperature}


def _prompt_class(embeddings: np.ndarray) -> np.ndarray:
    mean = embeddings.mean(axis=0)
    return (mean / np.linalg.norm(mean)).astype(np.float32)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the Mann-Whitney rank statistic (ties share their mean rank)."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    order = np.argsort(scores, kind="mergesort")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(first + (counts + 1) / 2, counts)
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if not positives or not negatives:
        raise ValueError("ROC AUC needs both classes")
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))
