"""LAION's published content heads (models/laion_heads.py): checkpoints of their exact
architectures with random weights, saved in the published formats (autokeras SavedModel folders
and zips, torch state dicts), loaded through the project's code, compared with the same model
run directly: Keras's layer semantics written out in torch for the autokeras models, LAION's own
`nn.Sequential`s for the torch ones."""

import os

import numpy as np
import pytest
import torch

from crawl2clip.models.heads import save_head, train_head
from crawl2clip.models.keras_savedmodel import read_saved_model
from crawl2clip.models.laion_heads import AutokerasHead, load_image_head
from crawl2clip.transforms import httpfs  # noqa: F401  (registers http:// with Beam's FileSystems)
from tests.http_server import serve_directory
from tests.keras_savedmodel_files import write_autokeras_model, zip_folder

# LAION-AI/CLIP-based-NSFW-Detector, read from the published files' keras_metadata.pb: input
# size, the columns autokeras encoded as categories, the dense layers' units, the dropout.
NSFW_B32 = {"dim": 512, "categorical": (92, 133, 312), "units": (32, 32, 1), "dropout_after": 2}
NSFW_L14 = {"dim": 768, "categorical": (180, 316, 413, 440, 644), "units": (64, 512, 256, 1), "dropout_after": 0}


def _unit(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.normal(size=(rows, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _token(value) -> bytes:
    """How TensorFlow's AsString prints a float64 (format "%f"): the categorical columns' tokens."""
    return b"%f" % float(value)


def build_autokeras(folder: str, architecture: dict, seed: int, vocabulary_from: np.ndarray) -> dict:
    """Random weights of the architecture, written as a SavedModel; the vocabularies hold the
    float16 values of `vocabulary_from`'s categorical columns (and some values no input has)."""
    rng = np.random.default_rng(seed)
    dim = architecture["dim"]
    categorical = {}
    for column in architecture["categorical"]:
        seen = [_token(v) for v in vocabulary_from[:, column].astype(np.float16).astype(np.float64)]
        unseen = [_token(v) for v in rng.uniform(2, 3, 20).astype(np.float16)]
        categorical[column] = list(dict.fromkeys(unseen[:10] + seen + unseen[10:]))
    mean = rng.normal(0, 0.05, dim).astype(np.float32)
    variance = rng.uniform(0.0005, 0.01, dim).astype(np.float32)
    for column, tokens in categorical.items():  # the encoded columns are indices: their own scale
        mean[column], variance[column] = len(tokens) / 2, (len(tokens) / 3) ** 2
    variance[5] = 0.0  # a constant column: Keras divides by its epsilon floor instead of 0
    sizes = (dim, *architecture["units"])
    dense = [(rng.normal(0, np.sqrt(2 / m), (m, n)).astype(np.float32), rng.normal(0, 0.1, n).astype(np.float32))
             for m, n in zip(sizes, sizes[1:])]
    write_autokeras_model(folder, dim, categorical, mean, variance, dense, architecture["dropout_after"])
    return {"categorical": categorical, "mean": mean, "variance": variance, "dense": dense}


@torch.inference_mode()
def keras_forward(weights: dict, x: np.ndarray) -> np.ndarray:
    """The model as Keras runs it: float64 input; categorical columns printed with "%f" and looked
    up (index 1.. in vocabulary order, 0 unseen), others cast to float32; Normalization with
    std floored at 1e-7; Dense + ReLU; sigmoid."""
    values = x.astype(np.float64)
    encoded = values.astype(np.float32)
    for column, tokens in weights["categorical"].items():
        index = {token: i + 1 for i, token in enumerate(tokens)}
        encoded[:, column] = [index.get(_token(v), 0) for v in values[:, column]]
    h = torch.from_numpy(encoded)
    std = torch.sqrt(torch.from_numpy(weights["variance"])).clamp_min(1e-7)
    h = (h - torch.from_numpy(weights["mean"])) / std
    for i, (kernel, bias) in enumerate(weights["dense"]):
        layer = torch.nn.Linear(*kernel.shape)
        layer.weight.copy_(torch.from_numpy(kernel.T))
        layer.bias.copy_(torch.from_numpy(bias))
        h = layer(h)
        h = torch.relu(h) if i < len(weights["dense"]) - 1 else torch.sigmoid(h)
    return h[:, 0].numpy()


@pytest.mark.parametrize("architecture", [NSFW_B32, NSFW_L14], ids=["vit-b-32", "vit-l-14"])
def test_laions_nsfw_savedmodels_load_from_folder_and_zip_and_predict_as_keras(tmp_path, architecture):
    rng = np.random.default_rng(1)
    x = _unit(rng, 64, architecture["dim"])
    stored = x.astype(np.float16)  # what LAION's head read: clip-retrieval's float16 embeddings
    folder = str(tmp_path / "clip_autokeras_nsfw")
    weights = build_autokeras(folder, architecture, seed=2, vocabulary_from=stored[:40])
    zip_folder(folder, str(tmp_path / "clip_autokeras_nsfw.zip"))
    expected = keras_forward(weights, stored)
    for path in (folder, str(tmp_path / "clip_autokeras_nsfw.zip")):
        head = load_image_head(path, "unsafe")
        assert isinstance(head, AutokerasHead) and head.embed_dim == architecture["dim"]
        assert head.describe()["categorical_columns"] == list(architecture["categorical"])
        np.testing.assert_allclose(head.predict(x), expected, rtol=1e-5, atol=1e-6)
    encoded = head.encode(x)
    column = architecture["categorical"][0]
    assert (encoded[:40, column] > 10).all() and (encoded[40:, column] == 0).all()  # seen tokens, unseen: 0


def test_a_savedmodel_on_a_beam_filesystem_and_what_the_reader_sees(tmp_path):
    rng = np.random.default_rng(3)
    x = _unit(rng, 8, 512)
    weights = build_autokeras(str(tmp_path / "site" / "nsfw_b32"), NSFW_B32, seed=4, vocabulary_from=x)
    zip_folder(str(tmp_path / "site" / "nsfw_b32"), str(tmp_path / "site" / "nsfw_b32.zip"))
    model = read_saved_model(str(tmp_path / "site" / "nsfw_b32"))
    assert [layer["class_name"] for layer in model.layers()] == [
        "InputLayer", "Custom>MultiCategoryEncoding", "Normalization", "Dense", "ReLU", "Dense", "ReLU", "Dropout",
        "Dense", "Activation"]
    assert model.weights_prefix(3) == "layer_with_weights-2"
    np.testing.assert_array_equal(model.variable("layer_with_weights-2", "kernel"), weights["dense"][0][0])
    table = model.lookup_table("layer_with_weights-0", "encoding_layers", "133")
    assert table == {token: i + 1 for i, token in enumerate(weights["categorical"][133])}
    with serve_directory(str(tmp_path / "site")) as server:
        head = load_image_head(f"{server.url}/nsfw_b32.zip", "unsafe")
    np.testing.assert_allclose(head.predict(x), keras_forward(weights, x.astype(np.float16)), rtol=1e-5, atol=1e-6)


def h14_nsfw_detector(input_size: int = 1024) -> torch.nn.Sequential:
    """LAION-AI/CLIP-based-NSFW-Detector's H14_NSFW_Detector layers (h14_nsfw_model.py)."""
    return torch.nn.Sequential(
        torch.nn.Linear(input_size, 1024), torch.nn.ReLU(), torch.nn.Dropout(0.2),
        torch.nn.Linear(1024, 2048), torch.nn.ReLU(), torch.nn.Dropout(0.2),
        torch.nn.Linear(2048, 1024), torch.nn.ReLU(), torch.nn.Dropout(0.2),
        torch.nn.Linear(1024, 256), torch.nn.ReLU(), torch.nn.Dropout(0.2),
        torch.nn.Linear(256, 128), torch.nn.ReLU(), torch.nn.Dropout(0.2),
        torch.nn.Linear(128, 16), torch.nn.Linear(16, 1))


def aesthetic_v2(input_size: int, relu: bool) -> torch.nn.Sequential:
    """improved-aesthetic-predictor's MLP: as in its simple_inference.py (linearMSE files) and with
    its commented ReLUs in place (reluMSE files)."""
    act = [torch.nn.ReLU()] if relu else []
    return torch.nn.Sequential(
        torch.nn.Linear(input_size, 1024), *act, torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128), *act,
        torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), *act, torch.nn.Dropout(0.1), torch.nn.Linear(64, 16), *act,
        torch.nn.Linear(16, 1))


class _Layers(torch.nn.Module):
    """LAION's modules keep their Sequential as `self.layers`: state dict keys layers.N.*."""

    def __init__(self, layers: torch.nn.Sequential):
        super().__init__()
        self.layers = layers

    def forward(self, x):
        return self.layers(x)


@pytest.mark.parametrize("name, module, tag, clipped", [
    ("h14_nsfw.pth", lambda: _Layers(h14_nsfw_detector()), "unsafe", True),
    ("sa_0_4_vit_b_32_linear.pth", lambda: torch.nn.Linear(512, 1), "aesthetic", False),
    ("sac+logos+ava1-l14-linearMSE.pth", lambda: _Layers(aesthetic_v2(768, relu=False)), "aesthetic", False),
    ("ava+logos-l14-reluMSE.pth", lambda: _Layers(aesthetic_v2(768, relu=True)), "aesthetic", False),
])
def test_laions_torch_heads_predict_as_their_modules(tmp_path, name, module, tag, clipped):
    torch.manual_seed(5)
    model = module().eval()
    path = str(tmp_path / name)
    torch.save(model.state_dict(), path)
    head = load_image_head(path, tag)
    x = _unit(np.random.default_rng(6), 32, head.embed_dim)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x))[:, 0].numpy()
    np.testing.assert_allclose(head.predict(x), np.clip(expected, 0, 1) if clipped else expected, rtol=1e-4, atol=1e-5)
    assert head.describe()["architecture"].startswith("laion-")


def test_heads_of_another_tag_or_format_are_refused(tmp_path):
    torch.save(torch.nn.Linear(512, 1).state_dict(), tmp_path / "aesthetic.pth")
    with pytest.raises(ValueError, match="predicts aesthetic, not unsafe"):
        load_image_head(str(tmp_path / "aesthetic.pth"), "unsafe")
    torch.save(torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.Linear(4, 1)).state_dict(), tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not one of LAION's published heads"):
        load_image_head(str(tmp_path / "other.pth"), "unsafe")
    with pytest.raises(ValueError, match="not a watermark head this project reads"):
        load_image_head(str(tmp_path / "aesthetic.pth"), "watermark")
    x = _unit(np.random.default_rng(7), 50, 16)
    save_head(train_head(x, np.arange(50) % 2, "mine", "m", steps=5), str(tmp_path / "mine.npz"))
    assert load_image_head(str(tmp_path / "mine.npz"), "watermark").embed_dim == 16  # the project's own heads


LAION_FILES = os.environ.get("CRAWL2CLIP_LAION_FILES")


@pytest.mark.skipif(not LAION_FILES, reason="set CRAWL2CLIP_LAION_FILES to a folder holding LAION's published files")
def test_laions_published_files(tmp_path):
    """The real files (no network here): clip_autokeras_nsfw_b32.zip, clip_autokeras_binary_nsfw.zip,
    sa_0_4_vit_b_32_linear.pth and aesthetic-predictor's vit_b_32_embeddings/rating{0,9}.npy."""
    b32 = load_image_head(os.path.join(LAION_FILES, "clip_autokeras_nsfw_b32.zip"), "unsafe")
    l14 = load_image_head(os.path.join(LAION_FILES, "clip_autokeras_binary_nsfw.zip"), "unsafe")
    assert (b32.embed_dim, l14.embed_dim) == (512, 768)
    assert sorted(b32.categorical) == [92, 133, 312] and len(b32.categorical[92]) == 1566
    aesthetic = load_image_head(os.path.join(LAION_FILES, "sa_0_4_vit_b_32_linear.pth"), "aesthetic")
    low, high = (np.load(os.path.join(LAION_FILES, f"rating{r}.npy")) for r in (0, 9))
    assert aesthetic.predict(high)[0] > aesthetic.predict(low)[0]
    # the mean embeddings of AVA-rated photos are safe for work
    assert b32.predict(np.concatenate([low, high]) / np.linalg.norm(np.concatenate([low, high]), axis=1,
                                                                     keepdims=True)).max() < 0.5
