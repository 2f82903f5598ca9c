"""The scoring stage's settings and names, with no heavy imports (the command line reads them).

Routing: LAION scored English captions with ViT-B/32 and every other caption (the `multi` and
`nolang` splits) with a multilingual CLIP, each with its own similarity threshold.
"""

from dataclasses import dataclass, field

EN = "en"
MULTI = "multi"
ROUTES = (EN, MULTI)
# LAION-5B's: 0.28 for English with ViT-B/32, 0.26 for the rest with multilingual CLIP.
DEFAULT_MIN_SIMILARITY = {EN: 0.28, MULTI: 0.26}

UNSAFE = "unsafe"
WATERMARK = "watermark"
TAG_COLUMNS = {UNSAFE: "punsafe", WATERMARK: "pwatermark"}  # content head -> its column
TOXIC_COLUMN = "ptoxic"


def route_of(split: str | None) -> str:
    """`en` for English captions; `multi` for the rest, including pairs with no split at all
    (language identification off): the multilingual model reads English too."""
    return EN if split == EN else MULTI


@dataclass(frozen=True)
class Thresholds:
    """`min_similarity` per route; `max_tags` maps a tag column (punsafe, pwatermark, ptoxic) to
    the highest value kept. `score_only` keeps every pair."""
    min_similarity: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIN_SIMILARITY))
    max_tags: dict[str, float] = field(default_factory=dict)
    score_only: bool = False


@dataclass(frozen=True)
class BatchSizes:
    """Pairs per forward pass of each tower, and the threads decoding images ahead of the model
    (None: the thread pool's default for the machine's cores)."""
    images: int = 64
    texts: int = 64
    decode_workers: int | None = None
    prefetch: int = 2  # image batches prepared ahead of the model
