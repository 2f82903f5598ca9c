"""LAION-5B's watermark detector (models/laion_watermark.py): its exact architecture with random
weights, saved as LAION published it (a plain state dict) and as LAION's inference script reads
it ({"weights": ...}), loaded through the project's code and compared with LAION's own
pipeline: timm's efficientnet_b3a with the replaced classifier, torchvision's 256 px transform,
softmax index 0."""

import numpy as np
import pytest
import timm
import torch
from torchvision import transforms as T

from crawl2clip.models.laion_watermark import WatermarkDetector
from crawl2clip.models.scenes import render_example
from crawl2clip.models.watermark import HELD_OUT_TEXTS, apply_watermark, random_watermark
from crawl2clip.transforms import httpfs  # noqa: F401  (registers http:// with Beam's FileSystems)
from tests.http_server import serve_directory


def laion_model() -> torch.nn.Module:
    """As LAION-5B-WatermarkDetection's inference.py builds it."""
    model = timm.create_model("efficientnet_b3a", pretrained=False, num_classes=2)
    model.classifier = torch.nn.Sequential(
        torch.nn.Linear(in_features=1536, out_features=625), torch.nn.ReLU(), torch.nn.Dropout(p=0.3),
        torch.nn.Linear(in_features=625, out_features=256), torch.nn.ReLU(), torch.nn.Linear(in_features=256, out_features=2))
    return model


LAION_TRANSFORM = T.Compose([T.Resize((256, 256)), T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(11)
    model = laion_model().eval()
    with torch.no_grad():  # random BatchNorm statistics, so the eval-mode outputs are not all alike
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def images():
    out = []
    for i in range(6):
        image, _ = render_example(321, i, size=150 + 20 * i)  # sizes differ: the resize is not square-preserving
        if i % 2:
            rng = np.random.default_rng([321, i])
            image = apply_watermark(image, random_watermark(rng, HELD_OUT_TEXTS), rng)
        out.append(image.resize((image.width + 37 * i, image.height)))
    return out


def test_the_published_state_dict_predicts_as_laions_pipeline(tmp_path, reference, images):
    torch.save(reference.state_dict(), tmp_path / "watermark_model_v1.pt")
    torch.save({"weights": reference.state_dict()}, tmp_path / "model.pt")
    with torch.no_grad():
        expected = torch.softmax(reference(torch.stack([LAION_TRANSFORM(im.convert("RGB")) for im in images])), dim=1)
    for name in ("watermark_model_v1.pt", "model.pt"):
        detector = WatermarkDetector(str(tmp_path / name), device="cpu")
        pixels = detector.preprocess_images(images)
        assert pixels.shape == (len(images), 3, 256, 256)
        np.testing.assert_allclose(detector.predict(pixels), expected[:, 0].numpy(), atol=1e-5)  # index 0: watermark


def test_a_detector_on_a_beam_filesystem_and_a_wrong_file(tmp_path, reference, images):
    (tmp_path / "site").mkdir()
    torch.save(reference.state_dict(), tmp_path / "site" / "watermark_model_v1.pt")
    with serve_directory(str(tmp_path / "site")) as server:
        detector = WatermarkDetector(f"{server.url}/watermark_model_v1.pt", device="cpu")
    local = WatermarkDetector(str(tmp_path / "site" / "watermark_model_v1.pt"), device="cpu")
    pixels = local.preprocess_images(images[:2])
    np.testing.assert_array_equal(detector.predict(pixels), local.predict(pixels))
    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not LAION's watermark detector"):
        WatermarkDetector(str(tmp_path / "other.pt"), device="cpu")
