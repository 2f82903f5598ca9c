"""Content tags of scored pairs: punsafe, pwatermark and aesthetic from models of the image (heads
on its CLIP embedding, or LAION's watermark detector on its pixels), ptoxic from a toxicity
scorer on the caption. All are columns; filtering on them is optional.

A head is tied to the embedding space it was trained in, so a tag is computed only by a model
given for it, or by the committed head trained for the run's CLIP (the tiny CLIP's watermark
head). Zero-shot prompts are used only when asked for (`--zero-shot-tags`) and say so. Anything
else is "not computed": a null column, and the report says so.
"""

import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from crawl2clip.models import heads, laion_heads, toxicity
from crawl2clip.models.clip import ASSETS, ClipModel, ClipSpec
from crawl2clip.transforms.schema import LANGUAGE, TEXT
from crawl2clip.transforms.score.scoring import ScoredShard
from crawl2clip.transforms.score.settings import AESTHETIC, NOT_COMPUTED, TAG_COLUMNS, TOXIC_COLUMN, WATERMARK

DEFAULT_HEAD_FILES = {WATERMARK: os.path.join(ASSETS, "watermark-head.npz")}
HEAD = "head"              # a head on the image embedding (a file)
IMAGE_MODEL = "image model"  # a model of the pixels (LAION's watermark detector)
ZERO_SHOT = "zero-shot"


@dataclass(frozen=True)
class TagSource:
    """How the run computes `tag`: `kind` HEAD or IMAGE_MODEL (from `path`), ZERO_SHOT, or NOT_COMPUTED."""
    tag: str
    kind: str
    path: str | None = None

    @property
    def computed(self) -> bool:
        return self.kind != NOT_COMPUTED


def load_head(source: TagSource):
    """The image-embedding head of a HEAD source (LAION's formats or the project's .npz)."""
    return laion_heads.load_image_head(source.path, source.tag)


def tag_sources(image: ClipSpec, embed_dim: int, head_files: dict[str, str | None], watermark_model: str | None,
                zero_shot: bool) -> dict[str, TagSource]:
    """Each tag's source: the user's file (checked to take this CLIP's `embed_dim`-d
    embeddings), else the committed head where it was trained for this CLIP, else zero-shot
    prompts when asked for (unsafe, watermark), else not computed."""
    if watermark_model and head_files.get(WATERMARK):
        raise ValueError("give --watermark-model (LAION's detector, on pixels) or --watermark-head (a head on "
                         "CLIP embeddings), not both")
    sources = {}
    for tag in TAG_COLUMNS:
        path = head_files.get(tag)
        if tag == WATERMARK and watermark_model:
            sources[tag] = TagSource(tag, IMAGE_MODEL, watermark_model)
            continue
        if not path:
            default = DEFAULT_HEAD_FILES.get(tag)
            made_for = heads.load_head(default).metadata.get("clip_model") if default and os.path.isfile(default) \
                else None
            if made_for == image.model:
                path = default
        if path:
            source = TagSource(tag, HEAD, path)
            head_dim = load_head(source).embed_dim
            if head_dim != embed_dim:
                raise ValueError(f"{path}: a {tag} head on {head_dim}-d embeddings, but {image.model} embeds images "
                                 f"in {embed_dim}-d (a head belongs to the CLIP it was trained on)")
            sources[tag] = source
        elif zero_shot and tag in heads.DEFAULT_PROMPTS:
            sources[tag] = TagSource(tag, ZERO_SHOT)
        else:
            sources[tag] = TagSource(tag, NOT_COMPUTED)
    return sources


def describe_source(source: TagSource) -> dict:
    """What scoring.json records about a tag's source."""
    if source.kind == HEAD:
        described = load_head(source).describe()
        return {**described, "source": "file", "path": source.path if "://" in source.path
                else os.path.abspath(source.path)}
    if source.kind == IMAGE_MODEL:
        from crawl2clip.models.laion_watermark import WatermarkDetector

        return WatermarkDetector(source.path, device="cpu").describe()
    if source.kind == ZERO_SHOT:
        positive, negative = heads.DEFAULT_PROMPTS[source.tag]
        return {"source": ZERO_SHOT, "positive_prompts": list(positive), "negative_prompts": list(negative)}
    return {"source": NOT_COMPUTED}


def describe_toxicity(path: str | None) -> dict:
    """What scores ptoxic (scoring.json); loading it also checks a user's file before the run."""
    return toxicity.load_toxicity(os.path.abspath(path) if path else None).describe()


class ContentModels:
    """The loaded embedding heads by tag (zero-shot heads included) and the toxicity scorer. It
    also holds the CLIP the zero-shot heads were built with: the process's shared copy then stays
    loaded for the scoring step instead of being dropped and loaded again."""

    def __init__(self, heads_by_tag: dict[str, object], toxicity_scorer, clip: ClipModel | None):
        self.heads = heads_by_tag
        self.toxicity = toxicity_scorer
        self.clip = clip


def load_content_models(sources: dict[str, TagSource], clip: Callable[[], ClipModel],
                        toxicity_model: str | None) -> ContentModels:
    """Loads each embedding head once; `clip()` gives the loaded CLIP for zero-shot heads.
    (IMAGE_MODEL tags are computed by their own step, on the pixels.)"""
    loaded, model = {}, None
    for tag, source in sources.items():
        if source.kind == HEAD:
            loaded[tag] = load_head(source)
        elif source.kind == ZERO_SHOT:
            model = model or clip()
            positive, negative = heads.DEFAULT_PROMPTS[tag]
            loaded[tag] = heads.ZeroShotHead(model, positive, negative, name=f"zero-shot {tag}",
                                             clip_model=model.spec.model)
    return ContentModels(loaded, toxicity.load_toxicity(toxicity_model), model)


def _toxicity(shard: ScoredShard, scorer) -> np.ndarray:
    """A toxicity head reads the caption embeddings already computed; the lexicon reads the
    captions, with their language where known."""
    if isinstance(scorer, toxicity.HeadToxicity):
        return scorer.score_embeddings(shard.text_emb)
    languages = shard.table[LANGUAGE].to_pylist() if LANGUAGE in shard.table.column_names else None
    return scorer.score([str(text) for text in shard.table[TEXT].to_pylist()], languages)


def tag_shard(shard: ScoredShard, models: ContentModels) -> ScoredShard:
    """The shard with each computed tag's values per pair (float32; probabilities in [0, 1],
    aesthetic scores as their model gives them) and None for tags not computed. Tags already
    set (by the watermark detector's step) are kept."""
    count = len(shard)
    tags = dict(shard.tags)
    for tag, column in TAG_COLUMNS.items():
        if column in tags:
            continue
        head = models.heads.get(tag)
        if head is None:
            tags[column] = None
            continue
        values = head.predict(shard.img_emb) if count else np.zeros(0, np.float32)
        tags[column] = values.astype(np.float32) if tag == AESTHETIC else np.clip(values, 0.0, 1.0).astype(np.float32)
    toxic = _toxicity(shard, models.toxicity) if count else np.zeros(0)
    tags[TOXIC_COLUMN] = np.clip(toxic, 0.0, 1.0).astype(np.float32)
    return replace(shard, tags=tags)
