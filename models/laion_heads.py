"""LAION's content heads on CLIP image embeddings, loaded from the files LAION published.

punsafe (LAION-AI/CLIP-based-NSFW-Detector):
  clip_autokeras_nsfw_b32.zip (ViT-B/32, 512-d), clip_autokeras_binary_nsfw.zip (ViT-L/14, 768-d)
      autokeras models as zipped Keras SavedModels (a folder works too): a categorical encoding of
      a few embedding columns, a Normalization layer, Dense/ReLU layers, a sigmoid. Read without
      TensorFlow (models/keras_savedmodel.py) and evaluated layer by layer in numpy.
  h14_nsfw.pth (ViT-H/14, 1024-d)
      a torch MLP (1024-1024-2048-1024-256-128-16-1, ReLU after the first five) trained by
      regression on 0/1 labels: its output is clipped to [0, 1].
aesthetic (LAION-AI/aesthetic-predictor, christophschuhmann/improved-aesthetic-predictor):
  sa_0_4_vit_{b_32,l_14}_linear.pth      one linear layer (LAION-Aesthetics V1)
  *-l14-linearMSE.pth, *-l14-reluMSE.pth  MLPs 768-1024-128-64-16-1, without / with ReLUs (V2)
      scores on the AVA scale (about 1-10), not probabilities.
Either tag also takes the project's own heads (.npz, models/heads.py, e.g. from
`crawl2clip train-head`).

Every head takes unit-length image embeddings, as LAION's did. The autokeras heads read them
rounded to float16: LAION ran them on clip-retrieval's float16 embeddings, and their
categorical columns are vocabularies of float16 values printed with six decimals.
"""

import io
import os

import numpy as np

from crawl2clip.models import heads
from crawl2clip.models.keras_savedmodel import read_saved_model
from crawl2clip.transforms import files

UNSAFE = "unsafe"
AESTHETIC = "aesthetic"
# Linear layers' indices in LAION's torch `nn.Sequential`s -> (architecture name, indices of the
# Linear layers followed by a ReLU, what the output is).
TORCH_ARCHITECTURES = {
    (0, 3, 6, 9, 12, 15, 16): ("laion-nsfw-h14-mlp", (0, 3, 6, 9, 12), UNSAFE),
    (0, 2, 4, 6, 7): ("laion-aesthetic-v2-mlp-linear", (), AESTHETIC),
    (0, 3, 6, 9, 11): ("laion-aesthetic-v2-mlp-relu", (0, 3, 6, 9), AESTHETIC),
    (): ("laion-aesthetic-v1-linear", (), AESTHETIC),
}
NORMALIZATION_EPSILON = 1e-7  # Keras's backend epsilon: the Normalization layer's floor on the std


class TorchMLPHead:
    """Linear layers with ReLUs where the architecture has them; float32 numpy."""

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray, bool]], architecture: str, tag: str, source: str):
        self.layers = layers
        self.architecture = architecture
        self.tag = tag
        self.source = source

    @property
    def embed_dim(self) -> int:
        return int(self.layers[0][0].shape[1])

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        x = _checked(embeddings, self.embed_dim, self.source)
        for weight, bias, relu in self.layers:
            x = x @ weight.T + bias
            if relu:
                x = np.maximum(x, 0.0)
        out = x[:, 0].astype(np.float32)
        return np.clip(out, 0.0, 1.0) if self.tag == UNSAFE else out

    def describe(self) -> dict:
        return {"source": "file", "format": "torch state dict", "architecture": self.architecture,
                "embed_dim": self.embed_dim, "path": self.source,
                "output": "probability (regression output clipped to [0, 1])" if self.tag == UNSAFE
                else "aesthetic score (AVA scale)"}


def _checked(embeddings: np.ndarray, dim: int, source: str) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"{source}: takes (rows, {dim}) image embeddings, got {x.shape}")
    return x


def load_torch_head(path: str, tag: str) -> TorchMLPHead:
    """One of LAION's torch heads (TORCH_ARCHITECTURES) from its state dict file."""
    import torch

    state = torch.load(io.BytesIO(files.read_bytes(path)), map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: not a torch state dict")
    if set(state) == {"weight", "bias"}:
        indices, layers = (), [(state["weight"], state["bias"])]
    else:
        indices = tuple(sorted({int(k.split(".")[1]) for k in state if k.startswith("layers.")}))
        layers = [(state.get(f"layers.{i}.weight"), state.get(f"layers.{i}.bias")) for i in indices]
    known = TORCH_ARCHITECTURES.get(indices)
    if known is None or any(w is None or b is None for w, b in layers) or len(state) != 2 * len(layers):
        raise ValueError(f"{path}: not one of LAION's published heads (its keys: {sorted(state)[:6]}...); "
                         f"known: {', '.join(name for name, _, _ in TORCH_ARCHITECTURES.values())}")
    architecture, relus, made_for = known
    if made_for != tag:
        raise ValueError(f"{path}: a {architecture} head predicts {made_for}, not {tag}")
    arrays = [(w.float().numpy(), b.float().numpy(), index in relus) for (w, b), index in zip(layers, indices or (0,))]
    for (w, _, _), (following, _, _) in zip(arrays, arrays[1:]):
        if w.shape[0] != following.shape[1]:
            raise ValueError(f"{path}: layer shapes {w.shape} and {following.shape} do not chain")
    if arrays[-1][0].shape[0] != 1:
        raise ValueError(f"{path}: the last layer has {arrays[-1][0].shape[0]} outputs, expected 1")
    return TorchMLPHead(arrays, architecture, tag, path)


class AutokerasHead:
    """An autokeras StructuredDataClassifier on embeddings, evaluated as Keras does: the
    categorical columns' float64 values printed with "%f" and looked up (0 when unseen),
    Normalization, then the dense layers."""

    def __init__(self, path: str):
        model = read_saved_model(path)
        self.source = path
        self.steps: list[tuple] = []
        self.categorical: dict[int, dict[bytes, int]] = {}
        layers = model.layers()
        for index, layer in enumerate(layers):
            kind, config = layer["class_name"], layer["config"]
            if index and [node[0] for node in layer.get("inbound_nodes", [[]])[0]] != [layers[index - 1]["name"]]:
                raise ValueError(f"{path}: layer {config.get('name')} does not follow the previous one "
                                 "(only a chain of layers is supported)")
            if kind == "InputLayer":
                self.embed_dim = int(config["batch_input_shape"]["items"][-1])
            elif kind == "Custom>MultiCategoryEncoding":
                prefix = model.weights_prefix(index)
                self.categorical = {column: model.lookup_table(prefix, "encoding_layers", str(column))
                                    for column, encoding in enumerate(config["encoding"]) if encoding == "int"}
                if any(e not in ("int", "none") for e in config["encoding"]):
                    raise ValueError(f"{path}: only 'int' and 'none' column encodings are supported")
            elif kind == "Normalization":
                prefix = model.weights_prefix(index)
                std = np.sqrt(model.variable(prefix, "variance").astype(np.float32))
                self.steps.append(("normalize", model.variable(prefix, "mean").astype(np.float32),
                                   np.maximum(std, NORMALIZATION_EPSILON)))
            elif kind == "Dense":
                prefix = model.weights_prefix(index)
                self.steps.append(("dense", model.variable(prefix, "kernel").astype(np.float32),
                                   model.variable(prefix, "bias").astype(np.float32)))
                self.steps.append(("activation", config.get("activation", "linear")))
            elif kind in ("ReLU", "Activation"):
                self.steps.append(("activation", "relu" if kind == "ReLU" else config["activation"]))
            elif kind != "Dropout":  # dropout does nothing at inference
                raise ValueError(f"{path}: layer type {kind} is not supported")
        unknown = {s[1] for s in self.steps if s[0] == "activation"} - {"linear", "relu", "sigmoid"}
        if unknown:
            raise ValueError(f"{path}: activations {sorted(unknown)} are not supported")
        self.layer_types = [layer["class_name"] for layer in layers]

    def encode(self, embeddings: np.ndarray) -> np.ndarray:
        """The MultiCategoryEncoding layer's output (float32)."""
        x = _checked(embeddings, self.embed_dim, self.source).astype(np.float16).astype(np.float64)
        out = np.nan_to_num(x, nan=0.0).astype(np.float32)
        for column, vocabulary in self.categorical.items():
            tokens = np.char.mod("%f", x[:, column]).astype(bytes)
            out[:, column] = [vocabulary.get(token, 0) for token in tokens]
        return out

    def predict(self, embeddings: np.ndarray) -> np.ndarray:
        x = self.encode(embeddings)
        for step in self.steps:
            if step[0] == "normalize":
                x = (x - step[1]) / step[2]
            elif step[0] == "dense":
                x = x @ step[1] + step[2]
            elif step[1] == "relu":
                x = np.maximum(x, 0.0)
            elif step[1] == "sigmoid":
                x = 0.5 * (1.0 + np.tanh(0.5 * x))
        return x[:, 0].astype(np.float32)

    def describe(self) -> dict:
        return {"source": "file", "format": "Keras SavedModel (autokeras)", "path": self.source,
                "embed_dim": self.embed_dim, "layers": self.layer_types,
                "categorical_columns": sorted(self.categorical), "output": "probability"}


def _is_saved_model(path: str) -> bool:
    return path.endswith(".zip") or files.exists(files.join(path, "saved_model.pb"))


def load_image_head(path: str, tag: str):
    """The head in `path` for `tag`: LAION's published formats (UNSAFE, AESTHETIC) or the
    project's .npz heads (any tag, e.g. the tiny CLIP's watermark head). Anything else is
    refused with the formats it could have been."""
    if path.endswith(".npz"):
        head = heads.load_head_bytes(files.read_bytes(path), path)
        if head.metadata.get("input", "image") != "image":
            raise ValueError(f"{path}: a head on {head.metadata.get('input')} embeddings, not image embeddings")
        return head
    if tag == UNSAFE and _is_saved_model(path):
        return AutokerasHead(path)
    if tag in (UNSAFE, AESTHETIC) and os.path.splitext(path)[1] in (".pth", ".pt", ".bin"):
        return load_torch_head(path, tag)
    formats = {UNSAFE: "LAION's autokeras SavedModel (folder or .zip) or h14 .pth, or a crawl2clip .npz",
               AESTHETIC: "LAION's aesthetic .pth (V1 linear, V2 MLP), or a crawl2clip .npz"}
    raise ValueError(f"{path}: not a {tag} head this project reads ({formats.get(tag, 'a crawl2clip .npz')})")
