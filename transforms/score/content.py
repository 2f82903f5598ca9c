"""Content tags of scored pairs: punsafe and pwatermark from heads on the image embeddings,
ptoxic from a toxicity scorer on the captions. All are columns; filtering on them is optional.

A head is tied to the embedding space it was trained in, so each split's CLIP gets its own: the
head file when one is given (or, for watermarks, the committed head when it was trained for that
CLIP), else a zero-shot head built from prompts with that CLIP's text tower.
"""

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import open_clip

from crawl2clip.models import heads, toxicity
from crawl2clip.models.clip import ASSETS, ClipModel, ClipSpec, register_project_models
from crawl2clip.transforms.schema import LANGUAGE, TEXT
from crawl2clip.transforms.score.scoring import ScoredShard, pair_routes
from crawl2clip.transforms.score.settings import ROUTES, TAG_COLUMNS, TOXIC_COLUMN, WATERMARK

DEFAULT_HEAD_FILES = {WATERMARK: os.path.join(ASSETS, "watermark-head.npz")}


@dataclass(frozen=True)
class HeadSource:
    """Where a split's head for `tag` comes from: a head file, or zero-shot prompts (path None)."""
    tag: str
    route: str
    path: str | None

    def describe(self) -> dict:
        if self.path:
            return {**heads.load_head(self.path).describe(), "path": os.path.abspath(self.path)}
        positive, negative = heads.DEFAULT_PROMPTS[self.tag]
        return {"source": "zero-shot", "positive_prompts": list(positive), "negative_prompts": list(negative)}


def embed_dim(spec: ClipSpec) -> int | None:
    """The CLIP's embedding size from its config, without loading weights."""
    register_project_models()
    return (open_clip.get_model_config(spec.model) or {}).get("embed_dim")


def head_sources(specs: dict[str, ClipSpec], files: dict[str, str | None]) -> list[HeadSource]:
    """Every (tag, route)'s head: the user's file (which must take that CLIP's image embeddings),
    else the committed default where it was trained for that route's CLIP, else zero-shot."""
    sources = []
    for tag in TAG_COLUMNS:
        for route, spec in specs.items():
            path = files.get(tag)
            if path:
                head = heads.load_head(path)
                if head.metadata.get("input", "image") != "image" or head.embed_dim != embed_dim(spec):
                    raise ValueError(f"{path}: a head on {head.metadata.get('input')} embeddings of size "
                                     f"{head.embed_dim}, but {spec.model} embeds images in {embed_dim(spec)}")
            default = DEFAULT_HEAD_FILES.get(tag)
            if not path and default and os.path.isfile(default) \
                    and heads.load_head(default).metadata.get("clip_model") == spec.model:
                path = default
            sources.append(HeadSource(tag, route, path))
    return sources


def describe_toxicity(path: str | None) -> dict:
    """What scores ptoxic (scoring.json); loading it also checks a user's file before the run."""
    return toxicity.load_toxicity(os.path.abspath(path) if path else None).describe()


class ContentModels:
    """The loaded heads, by (tag, route), and the toxicity scorer. It also holds the CLIPs the
    zero-shot heads were built with: the process's shared copy then stays loaded for the scoring
    step instead of being dropped and loaded again."""

    def __init__(self, heads_by_key: dict[tuple[str, str], object], toxicity_scorer, clips: Sequence[ClipModel]):
        self.heads = heads_by_key
        self.toxicity = toxicity_scorer
        self.clips = list(clips)


def load_content_models(sources: Sequence[HeadSource], clip: Callable[[str], ClipModel],
                        toxicity_model: str | None) -> ContentModels:
    """Loads each head once; `clip(route)` gives the route's loaded CLIP for zero-shot heads,
    which are built once per (tag, CLIP): encoding the prompts costs as much as a batch."""
    loaded, zero_shot, clips = {}, {}, []
    for source in sources:
        if source.path:
            loaded[(source.tag, source.route)] = heads.load_head(source.path)
            continue
        model = clip(source.route)
        if (source.tag, model.spec) not in zero_shot:
            positive, negative = heads.DEFAULT_PROMPTS[source.tag]
            zero_shot[(source.tag, model.spec)] = heads.ZeroShotHead(
                model, positive, negative, name=f"zero-shot {source.tag}", clip_model=model.spec.model)
            clips.append(model)
        loaded[(source.tag, source.route)] = zero_shot[(source.tag, model.spec)]
    return ContentModels(loaded, toxicity.load_toxicity(toxicity_model), clips)


def _toxicity(shard: ScoredShard, scorer) -> np.ndarray:
    """A toxicity head reads the caption embeddings already computed; the lexicon reads the
    captions, with their language where known."""
    if isinstance(scorer, toxicity.HeadToxicity):
        return scorer.score_embeddings(shard.text_emb)
    languages = shard.table[LANGUAGE].to_pylist() if LANGUAGE in shard.table.column_names else None
    return scorer.score([str(text) for text in shard.table[TEXT].to_pylist()], languages)


def tag_shard(shard: ScoredShard, models: ContentModels) -> ScoredShard:
    """The shard with a probability per pair for each tag, as float32 in [0, 1]."""
    count = len(shard)
    routes = np.array(pair_routes(shard.table) if count else [], dtype=object)
    tags = {}
    for tag, column in TAG_COLUMNS.items():
        values = np.zeros(count, np.float32)
        for route in ROUTES:
            rows = np.flatnonzero(routes == route)
            if len(rows):
                values[rows] = models.heads[(tag, route)].predict(shard.img_emb[rows])
        tags[column] = values
    tags[TOXIC_COLUMN] = _toxicity(shard, models.toxicity) if count else np.zeros(0, np.float32)
    return replace(shard, tags={name: np.clip(v, 0.0, 1.0).astype(np.float32) for name, v in tags.items()})
