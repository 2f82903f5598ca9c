"""open_clip's image preprocessing as tensor operations, on any device.

open_clip resizes a PIL image's shortest side to the model's size (bicubic, antialiased), crops
the centre, scales to [0, 1] and normalises with the model's mean and std. The same steps on
uint8 tensors give the same pixels within one or two levels of 255 (torch's antialiased
resampling is Pillow's algorithm), run where the tensors are (CPU threads, or the GPU after
nvJPEG), and leave the float conversion to one batched multiply-add next to the model. Only the
preprocessing most CLIPs use is written here (`shortest` or `squash` resizing to a square):
`PixelSpec.of` returns None for any other, and the caller keeps open_clip's own transform.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

_MODES = {"bicubic": "bicubic", "bilinear": "bilinear"}


@dataclass(frozen=True)
class PixelSpec:
    """What the model's preprocessing does: resize (`shortest` side then centre crop, or
    `squash` to the square) to `size` with `interpolation`, then normalise with `mean`/`std`."""
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    @classmethod
    def of(cls, config: dict) -> "PixelSpec | None":
        """From open_clip's preprocess config (`model.visual.preprocess_cfg`); None for a
        preprocessing not written here (non-square sizes, `longest` with padding, other modes)."""
        size = config.get("size", 224)
        if isinstance(size, (tuple, list)):
            if len(size) != 2 or size[0] != size[1]:
                return None
            size = size[0]
        if config.get("mode", "RGB") != "RGB" or config.get("interpolation", "bicubic") not in _MODES \
                or config.get("resize_mode", "shortest") not in ("shortest", "squash"):
            return None
        return cls(int(size), tuple(config["mean"]), tuple(config["std"]), config.get("interpolation", "bicubic"),
                   config.get("resize_mode", "shortest"))


def resized_size(height: int, width: int, spec: PixelSpec) -> tuple[int, int]:
    """(height, width) before the crop, as torchvision's Resize(size) computes it: the shortest
    side becomes `size`, the other is truncated to keep the ratio."""
    if spec.resize_mode == "squash":
        return spec.size, spec.size
    if height <= width:
        return spec.size, max(1, int(spec.size * width / height))
    return max(1, int(spec.size * height / width)), spec.size


def resize_and_crop(images: torch.Tensor, spec: PixelSpec, uint8_resampling: bool | None = None) -> torch.Tensor:
    """uint8 (N, 3, H, W) images of one size -> uint8 (N, 3, size, size): resized and centre-cropped
    as open_clip does. `uint8_resampling` (default: on CPU tensors) resamples the uint8 values
    directly (torch's fast path, Pillow's rounding); else in float32, rounded back to uint8."""
    height, width = images.shape[-2:]
    target = resized_size(height, width, spec)
    if target != (height, width):
        if images.device.type == "cpu" if uint8_resampling is None else uint8_resampling:
            images = F.interpolate(images, size=target, mode=_MODES[spec.interpolation], antialias=True)
        else:
            resized = F.interpolate(images.float(), size=target, mode=_MODES[spec.interpolation], antialias=True)
            images = resized.round_().clamp_(0, 255).to(torch.uint8)
    # torchvision's CenterCrop offsets
    top = int(round((target[0] - spec.size) / 2.0))
    left = int(round((target[1] - spec.size) / 2.0))
    return images[..., top:top + spec.size, left:left + spec.size]


def normalise(images: torch.Tensor, spec: PixelSpec, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (N, 3, S, S) -> float32 model input: ToTensor's x / 255 then Normalize's (x - mean) / std
    as one multiply-add on the whole batch, x * (1 / (255 std)) - mean / std (equal within float
    rounding, about 1e-7 relative). `out`: a float32 tensor of that shape to write into (a fresh
    one costs a page fault per 4 KB on CPU, as much as the arithmetic)."""
    mean = torch.tensor(spec.mean, dtype=torch.float64)
    std = torch.tensor(spec.std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std)).to(torch.float32, copy=False).view(1, -1, 1, 1).to(images.device)
    shift = (mean / std).to(torch.float32, copy=False).view(1, -1, 1, 1).to(images.device)
    floats = images.float() if out is None else out.copy_(images)
    return floats.mul_(scale).sub_(shift)
