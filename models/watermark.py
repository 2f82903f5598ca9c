"""Watermarks: rendered overlays, and the watermark head trained on the tiny CLIP's embeddings.

LAION's pwatermark is a small classifier on CLIP image embeddings trained on images with and
without watermarks. This project cannot download those images, so it renders its own: the scenes
of models/scenes.py, half of them overlaid with text (a corner credit, a centred word, a
diagonal tiled pattern) or a logo, at random position, size, colour and opacity. Some words are
kept out of training and used only for the held-out check, so the head is measured on marks it
never saw. `python -m crawl2clip.models.watermark --output models/assets` rebuilds
`watermark-head.npz` from the committed tiny CLIP and prints its held-out AUC.
"""

import argparse
import os
import time
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from crawl2clip.models.scenes import render_example
from crawl2clip.models.training_report import publish_report

TRAIN_TEXTS = ("SAMPLE", "PREVIEW", "© stockpix", "PROOF", "photodepot.com", "© 2024", "COPYRIGHT",
               "imagebank", "DRAFT", "watermark", "© studio lumen", "www.pixvault.net")
HELD_OUT_TEXTS = ("DEMO", "© fotoarchiv", "not for sale", "snapstock.io")
KINDS = ("corner", "center", "tiled", "logo")
HEAD_NAME = "watermark-head"
HEAD_SEED = 20_000         # scenes for the head's training set
HEAD_HELD_OUT_SEED = 30_000  # scenes for its held-out check (the tiny CLIP trains on seed 0)


@dataclass(frozen=True)
class Watermark:
    kind: str       # one of KINDS
    text: str       # the words shown (a logo shows the first letter)
    opacity: float  # 0..1
    color: tuple[int, int, int]

    def caption_clause(self) -> str:
        """How a caption mentions the mark, so CLIP learns to see it."""
        if self.kind == "logo":
            return "with a logo watermark"
        return f"with a {self.text} watermark" if self.kind != "tiled" else "with a tiled watermark"


def random_watermark(rng: np.random.Generator, texts: tuple[str, ...] = TRAIN_TEXTS) -> Watermark:
    kind = str(rng.choice(KINDS))
    low, high = (0.45, 0.8) if kind == "tiled" else (0.6, 1.0)
    color = [(255, 255, 255), (20, 20, 20), (150, 150, 150)][int(rng.integers(0, 3))]
    return Watermark(kind=kind, text=str(rng.choice(texts)), opacity=float(rng.uniform(low, high)),
                     color=color)


def _font(pixels: float) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=max(6, int(pixels)))


def _fit_font(draw: ImageDraw.ImageDraw, text: str, pixels: float, max_width: float) -> ImageFont.FreeTypeFont:
    font = _font(pixels)
    width = draw.textlength(text, font=font)
    return _font(pixels * max_width / width) if width > max_width else font


def apply_watermark(image: Image.Image, mark: Watermark, rng: np.random.Generator) -> Image.Image:
    """`image` with `mark` composited over it (a new RGB image)."""
    width, height = image.size
    side = min(width, height)
    alpha = int(255 * mark.opacity)
    fill = (*mark.color, alpha)
    stroke = (*(255 - c for c in mark.color), alpha // 2)
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    if mark.kind == "corner":
        font = _fit_font(draw, mark.text, side * rng.uniform(0.14, 0.22), width * 0.9)
        left, top, right, bottom = draw.textbbox((0, 0), mark.text, font=font)
        x = rng.choice([2, width - (right - left) - 2])
        y = rng.choice([2, height - (bottom - top) - 4])
        draw.text((x - left, y - top), mark.text, font=font, fill=fill, stroke_width=max(1, font.size // 8), stroke_fill=stroke)
    elif mark.kind == "center":
        font = _fit_font(draw, mark.text, side * rng.uniform(0.22, 0.35), width * 0.95)
        left, top, right, bottom = draw.textbbox((0, 0), mark.text, font=font)
        x = (width - (right - left)) / 2 + rng.uniform(-0.1, 0.1) * width
        y = (height - (bottom - top)) / 2 + rng.uniform(-0.25, 0.25) * height
        draw.text((x - left, y - top), mark.text, font=font, fill=fill, stroke_width=max(1, font.size // 8), stroke_fill=stroke)
    elif mark.kind == "tiled":
        layer = _tiled(image.size, mark, side * rng.uniform(0.11, 0.16), rng)
    else:
        radius = side * rng.uniform(0.16, 0.26)
        cx = rng.uniform(radius + 2, width - radius - 2)
        cy = rng.uniform(radius + 2, height - radius - 2)
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=fill,
                     width=max(2, int(radius * 0.18)))
        font = _font(radius * 1.2)
        draw.text((cx, cy), mark.text.lstrip("© w.")[:1].upper() or "W", font=font, fill=fill, anchor="mm")
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


def _tiled(size: tuple[int, int], mark: Watermark, pixels: float, rng: np.random.Generator) -> Image.Image:
    """The text repeated on a grid and turned diagonally, as stock-photo previews do."""
    width, height = size
    big = int(1.5 * max(width, height))
    layer = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    font = _font(pixels)
    text_width = draw.textlength(mark.text, font=font)
    step_y = int(pixels * 2.2)
    for row, y in enumerate(range(0, big, step_y)):
        x = -(row % 2) * text_width / 2
        while x < big:
            draw.text((x, y), mark.text, font=font, fill=(*mark.color, int(255 * mark.opacity)))
            x += text_width + pixels
    layer = layer.rotate(float(rng.uniform(20, 45)) * rng.choice([-1, 1]), resample=Image.BILINEAR)
    left, top = (big - width) // 2, (big - height) // 2
    return layer.crop((left, top, left + width, top + height))


def watermark_examples(seed: int, count: int, size: int = 96,
                       texts: tuple[str, ...] = TRAIN_TEXTS) -> tuple[list[Image.Image], np.ndarray]:
    """`count` scenes of `seed`, every other one watermarked: (images, labels 0/1)."""
    images, labels = [], []
    for index in range(count):
        image, _ = render_example(seed, index, size)
        marked = index % 2 == 1
        if marked:
            rng = np.random.default_rng([seed, index, 1])
            image = apply_watermark(image, random_watermark(rng, texts), rng)
        images.append(image)
        labels.append(int(marked))
    return images, np.asarray(labels, dtype=np.int64)


def train_watermark_head(output: str, train_count: int = 3000, held_out_count: int = 1000) -> dict:
    """Fits the watermark head on the tiny CLIP's embeddings of rendered scenes and saves it to
    `output`; returns the report (held-out AUC on unseen scenes and unseen watermark words)."""
    # imported here: the overlays above need no torch (the sample crawl draws them too)
    from crawl2clip.models.clip import load_clip, tiny_clip_spec
    from crawl2clip.models.heads import roc_auc, save_head, train_head

    started = time.perf_counter()
    spec = tiny_clip_spec(device="cpu")
    clip = load_clip(spec)

    def embed(images: list[Image.Image]) -> np.ndarray:
        return np.concatenate([clip.encode_images(clip.preprocess_images(images[i:i + 256]))
                               for i in range(0, len(images), 256)])

    train_images, train_labels = watermark_examples(HEAD_SEED, train_count)
    held_images, held_labels = watermark_examples(HEAD_HELD_OUT_SEED, held_out_count, texts=HELD_OUT_TEXTS)
    head = train_head(embed(train_images), train_labels, name=HEAD_NAME, clip_model=spec.model,
                      input_kind="image")
    held_auc = roc_auc(held_labels, head.predict(embed(held_images)))
    train_auc = roc_auc(train_labels, head.predict(embed(train_images)))
    head.metadata["evaluation"] = {
        "train_rows": train_count, "train_auc": round(train_auc, 4),
        "held_out_rows": held_out_count, "held_out_auc": round(held_auc, 4),
        "held_out": f"scenes of seed {HEAD_HELD_OUT_SEED}, watermark words {list(HELD_OUT_TEXTS)} unseen in training",
    }
    save_head(head, output)
    return {"head": output, **head.metadata["evaluation"], "seconds": round(time.perf_counter() - started, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crawl2clip.models.watermark",
                                     description="Rebuild the watermark head on the tiny CLIP.")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets"),
                        help="folder for watermark-head.npz (default: models/assets)")
    parser.add_argument("--report", help="also write the report (JSON) here")
    args = parser.parse_args(argv)
    report = train_watermark_head(os.path.join(args.output, f"{HEAD_NAME}.npz"))
    publish_report(report, args.report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
