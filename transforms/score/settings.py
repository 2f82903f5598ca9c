"""The scoring stage's settings and names, with no heavy imports (the command line reads them).

One image embedding space per run, as LAION-5B had: every image goes through one CLIP's image
tower. Captions are routed by split: `en` through that CLIP's own text tower, every other
caption (the `multi` and `nolang` splits) through a multilingual text tower trained into the
same space (M-CLIP), each route with its own similarity threshold.

A run's settings are recorded in its output folder (DIR/scoring.json, through transforms/files.py):
a rerun into the same folder, to resume, must use the same ones.
"""

import json
from dataclasses import dataclass, field

from crawl2clip.transforms import files

SCORING_JSON = "scoring.json"  # the stage's models, tag sources and thresholds (its settings file)
EN = "en"
MULTI = "multi"
ROUTES = (EN, MULTI)
# LAION-5B's: 0.28 for English with ViT-B/32, 0.26 for the rest with multilingual CLIP.
DEFAULT_MIN_SIMILARITY = {EN: 0.28, MULTI: 0.26}
CLIP_TEXT_TOWER = "clip"  # --multi-text-model value: the CLIP's own text tower for every split
DEFAULT_MULTI_TEXT_MODEL = "M-CLIP/XLM-Roberta-Large-Vit-B-32"  # LAION's multilingual tower for ViT-B/32

UNSAFE = "unsafe"
WATERMARK = "watermark"
AESTHETIC = "aesthetic"
# content tag -> its column; a tag with no model for the run's CLIP is a null column
TAG_COLUMNS = {UNSAFE: "punsafe", WATERMARK: "pwatermark", AESTHETIC: "aesthetic"}
TOXIC_COLUMN = "ptoxic"
NOT_COMPUTED = "not computed"


def settings_path(output_dir: str) -> str:
    return files.join(output_dir, SCORING_JSON)


def read_settings(output_dir: str) -> dict | None:
    """The settings a scoring output was made with; None when there is none yet."""
    path = settings_path(output_dir)
    return files.read_marker(path) if files.exists(path) else None


def record_settings(output_dir: str, settings: dict) -> None:
    """Writes DIR/scoring.json; refuses settings other than those DIR was scored with, since its
    parts would disagree."""
    recorded = read_settings(output_dir)
    if recorded is None:
        files.makedirs(output_dir)
        files.write_marker(settings_path(output_dir), settings)
    elif recorded != json.loads(json.dumps(settings)):  # as JSON reads it back: lists, not tuples
        raise ValueError(f"{output_dir} was scored with other settings ({settings_path(output_dir)}); "
                         "use a new --output or the same options")


def route_of(split: str | None) -> str:
    """`en` for English captions; `multi` for the rest, including pairs with no split at all
    (language identification off): the multilingual tower reads English too."""
    return EN if split == EN else MULTI


@dataclass(frozen=True)
class Thresholds:
    """`min_similarity` per route; `max_tags` maps a tag column (punsafe, pwatermark, ptoxic) to
    the highest value kept. `score_only` keeps every pair."""
    min_similarity: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIN_SIMILARITY))
    max_tags: dict[str, float] = field(default_factory=dict)
    score_only: bool = False


# Rows per forward pass when not given: a GPU wants large batches, a CPU gains nothing from them.
GPU_BATCH = 1024
CPU_BATCH = 64


def default_batch(device: str, cuda_available: bool) -> int:
    """The batch size for `--clip-device` `device` (auto: where the driver sees CUDA)."""
    on_gpu = device.startswith("cuda") or (device == "auto" and cuda_available)
    return GPU_BATCH if on_gpu else CPU_BATCH


@dataclass(frozen=True)
class BatchSizes:
    """Pairs per forward pass of each tower, and the threads decoding images ahead of the model
    (None: the thread pool's default for the machine's cores). Batches run across download
    shards: up to `batches_per_call` image batches' worth of shards are scored together."""
    images: int = CPU_BATCH
    texts: int = CPU_BATCH
    decode_workers: int | None = None
    prefetch: int = 2  # image batches prepared ahead of the model
    batches_per_call: int = 8

    @property
    def rows_per_call(self) -> int:
        """Rows of the shards scored together (a larger shard is scored alone)."""
        return self.images * self.batches_per_call
