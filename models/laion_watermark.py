"""LAION-5B's watermark detector (LAION-AI/LAION-5B-WatermarkDetection), loaded from its file.

An image classifier, not a head on CLIP embeddings: timm's EfficientNet-B3 ("efficientnet_b3a"
in the timm LAION used: the same network with another test-time config) whose classifier is
replaced by Linear(1536, 625) - ReLU - Dropout(0.3) - Linear(625, 256) - ReLU - Linear(256, 2).
Images are resized to 256 x 256 (aspect ratio not kept), scaled to [0, 1] and normalised with
ImageNet's mean and std; pwatermark is the softmax's first output (index 0: "watermark",
index 1: "clear"), as LAION's inference.py writes it.

The published file is `models/watermark_model_v1.pt`, a plain state dict; LAION's inference
script also reads `{"weights": state_dict}`. Both load here, from a local path or any Beam
filesystem.
"""

import io
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from crawl2clip.models.clip import autocast, resolve_device, resolve_precision
from crawl2clip.transforms import files

ARCHITECTURE = "efficientnet_b3"
IMAGE_SIZE = 256
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
WATERMARK_INDEX = 0


def build_model() -> torch.nn.Module:
    """The detector's architecture with random weights."""
    import timm

    model = timm.create_model(ARCHITECTURE, pretrained=False, num_classes=2)
    model.classifier = torch.nn.Sequential(
        torch.nn.Linear(1536, 625), torch.nn.ReLU(), torch.nn.Dropout(p=0.3),
        torch.nn.Linear(625, 256), torch.nn.ReLU(), torch.nn.Linear(256, 2))
    return model


def preprocess_transform():
    from torchvision import transforms

    return transforms.Compose([transforms.Resize((IMAGE_SIZE, IMAGE_SIZE)), transforms.ToTensor(),
                               transforms.Normalize(MEAN, STD)])


class WatermarkDetector:
    """The loaded detector: `preprocess` (PIL image -> CHW tensor) and `predict` (pixels -> pwatermark)."""

    def __init__(self, path: str, device: str = "auto", precision: str = "auto"):
        state = torch.load(io.BytesIO(files.read_bytes(path)), map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("weights"), dict):
            state = state["weights"]
        if not isinstance(state, dict):
            raise ValueError(f"{path}: not a torch state dict (nor {{'weights': state_dict}})")
        model = build_model()
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path}: not LAION's watermark detector (EfficientNet-B3 with its classifier): "
                             f"missing {missing[:3]}, unexpected {unexpected[:3]}")
        self.path = path
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model = model.to(self.device).eval()
        self.preprocess = preprocess_transform()

    def preprocess_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.preprocess(image) for image in images])

    @torch.inference_mode()
    def predict(self, pixels: torch.Tensor) -> np.ndarray:
        with autocast(self.device, self.precision):
            logits = self.model(pixels.to(self.device))
        return torch.softmax(logits.float(), dim=1)[:, WATERMARK_INDEX].cpu().numpy().astype(np.float32)

    def describe(self) -> dict:
        return {"source": "image model", "path": self.path, "architecture": f"timm {ARCHITECTURE} + LAION classifier",
                "input": f"{IMAGE_SIZE}x{IMAGE_SIZE} pixels, ImageNet normalisation", "output": "softmax[watermark]"}
