"""Rendered scenes with captions that are true by construction: the tiny CLIP's training data.

No CLIP weights can be downloaded where this project is built and tested, so the project renders
its own image-text pairs: one to three shapes of a named colour and size on a plain or patterned
background, e.g. "two small red stars on a striped blue background". Every attribute in the
caption is visible in the image, so a model trained on them can be checked honestly: matched
pairs must score higher than shuffled ones on scenes rendered with a seed never used in training.

Scene `i` of seed `s` depends on (s, i) only, so any subset renders the same on every machine
with the same Pillow (the default font is Pillow's bundled one).
"""

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35), "green": (40, 155, 50), "blue": (35, 70, 215), "yellow": (240, 215, 40),
    "orange": (245, 135, 25), "purple": (135, 45, 175), "pink": (245, 125, 185),
    "brown": (120, 75, 35), "black": (25, 25, 25), "white": (240, 240, 240),
    "gray": (128, 128, 128), "cyan": (40, 200, 215),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "hexagon")
PATTERNS = ("plain", "striped", "checkered", "dotted", "gradient")
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
_PLURALS = {"cross": "crosses"}


@dataclass(frozen=True)
class Scene:
    """What a rendered image shows; `caption()` says it in words."""
    shape: str
    color: str
    count: int
    size: str          # "small" or "large"
    background: str    # a colour name
    pattern: str       # one of PATTERNS
    template: int      # which caption wording

    def caption(self) -> str:
        noun = self.shape if self.count == 1 else _PLURALS.get(self.shape, self.shape + "s")
        count = COUNT_WORDS[self.count]
        pattern = "" if self.pattern == "plain" else self.pattern + " "
        ground = f"{pattern}{self.background} background"
        return [
            f"{count} {self.size} {self.color} {noun} on a {ground}",
            f"a photo of {count} {self.color} {noun}",
            f"{self.color} {noun} on {ground}",
            f"{count} {self.color} {noun}, {ground}",
        ][self.template]


def random_scene(rng: np.random.Generator) -> Scene:
    shape_color, background = rng.choice(list(COLORS), size=2, replace=False)
    count = int(rng.integers(1, 4))
    return Scene(shape=str(rng.choice(SHAPES)), color=str(shape_color), count=count,
                 size="large" if count == 1 and rng.random() < 0.5 else "small",
                 background=str(background), pattern=str(rng.choice(PATTERNS)),
                 template=int(rng.integers(0, 4)))


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of scene `index` of `seed`: independent of every other scene."""
    return np.random.default_rng([seed, index])


def _jitter(color: tuple[int, int, int], rng: np.random.Generator, amount: int = 18) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in color)


def _shade(color: tuple[int, ...], factor: float) -> tuple[int, ...]:
    return tuple(int(np.clip(c * factor + (255 - c) * max(0.0, factor - 1), 0, 255)) for c in color)


def _background(scene: Scene, size: int, rng: np.random.Generator) -> Image.Image:
    base = _jitter(COLORS[scene.background], rng)
    other = _shade(base, 0.7 if sum(base) > 300 else 1.6)
    image = Image.new("RGB", (size, size), base)
    draw = ImageDraw.Draw(image)
    step = int(rng.integers(size // 12, size // 6))
    if scene.pattern == "striped":
        horizontal = rng.random() < 0.5
        for offset in range(0, size, 2 * step):
            box = (0, offset, size, offset + step) if horizontal else (offset, 0, offset + step, size)
            draw.rectangle(box, fill=other)
    elif scene.pattern == "checkered":
        for y in range(0, size, step):
            for x in range(0, size, step):
                if (x // step + y // step) % 2:
                    draw.rectangle((x, y, x + step, y + step), fill=other)
    elif scene.pattern == "dotted":
        radius = max(1, step // 4)
        for y in range(step // 2, size, step):
            for x in range(step // 2, size, step):
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=other)
    elif scene.pattern == "gradient":
        for y in range(size):
            t = y / max(1, size - 1)
            draw.line((0, y, size, y), fill=tuple(int(a * (1 - t) + b * t) for a, b in zip(base, other)))
    return image


def _polygon(cx: float, cy: float, radius: float, corners: int, rotation: float,
             inner: float | None = None) -> list[tuple[float, float]]:
    points = []
    steps = corners * 2 if inner else corners
    for k in range(steps):
        r = radius * (inner if inner and k % 2 else 1.0)
        angle = rotation + 2 * np.pi * k / steps
        points.append((cx + r * np.sin(angle), cy - r * np.cos(angle)))
    return points


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, radius: float,
               fill: tuple[int, ...], rotation: float = 0.0) -> None:
    box = (cx - radius, cy - radius, cx + radius, cy + radius)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(radius * 0.35)))
    elif shape == "square":
        draw.polygon(_polygon(cx, cy, radius * 1.2, 4, np.pi / 4 + rotation * 0.3), fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - radius), (cx + radius * 0.65, cy), (cx, cy + radius), (cx - radius * 0.65, cy)],
                     fill=fill)
    elif shape == "triangle":
        draw.polygon(_polygon(cx, cy, radius, 3, rotation * 0.3), fill=fill)
    elif shape == "hexagon":
        draw.polygon(_polygon(cx, cy, radius, 6, rotation), fill=fill)
    elif shape == "star":
        draw.polygon(_polygon(cx, cy, radius, 5, rotation * 0.3, inner=0.45), fill=fill)
    elif shape == "cross":
        arm = radius * 0.33
        draw.rectangle((cx - arm, cy - radius, cx + arm, cy + radius), fill=fill)
        draw.rectangle((cx - radius, cy - arm, cx + radius, cy + arm), fill=fill)
    else:
        raise ValueError(f"unknown shape {shape!r}")


def render_scene(scene: Scene, rng: np.random.Generator, size: int = 96) -> Image.Image:
    """The scene as an RGB image of size x size pixels; positions, jitter and rotation from `rng`."""
    image = _background(scene, size, rng)
    draw = ImageDraw.Draw(image)
    fraction = rng.uniform(0.26, 0.38) if scene.size == "large" else rng.uniform(0.11, 0.16)
    radius = fraction * size
    centres: list[tuple[float, float]] = []
    for _ in range(scene.count):
        for _attempt in range(30):  # keep shapes apart so each stays countable
            cx, cy = rng.uniform(radius + 2, size - radius - 2, size=2)
            if all((cx - x) ** 2 + (cy - y) ** 2 > (2.1 * radius) ** 2 for x, y in centres):
                break
        centres.append((cx, cy))
        draw_shape(draw, scene.shape, cx, cy, radius, _jitter(COLORS[scene.color], rng),
                   rotation=float(rng.uniform(-0.5, 0.5)))
    return image


def render_example(seed: int, index: int, size: int = 96) -> tuple[Image.Image, Scene]:
    """Scene `index` of `seed`, rendered: the same pair on every call."""
    rng = scene_rng(seed, index)
    scene = random_scene(rng)
    return render_scene(scene, rng, size), scene
