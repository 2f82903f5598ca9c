"""Beam ModelHandlers of the scoring stage, for RunInference.

RunInference loads a handler's model once per worker process and shares it between the
process's threads. Every handler takes its models from `shared_model`, so the CLIP the scoring
step loaded is the one the content step's zero-shot heads use, and a model named twice is
loaded once. The CLIP handler's elements are groups of download shards (transform.py groups
them): it runs their rows as one stream of batches and gives back one result per shard, so every
part is still written once. The other handlers take one scored shard at a time.
"""

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import numpy as np
import torch
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.utils import shared

from crawl2clip.models.clip import ClipModel, ClipSpec, load_clip
from crawl2clip.models.mclip import MClipSpec, load_mclip
from crawl2clip.transforms.score.content import ContentModels, TagSource, load_content_models, tag_shard
from crawl2clip.transforms.score.counts import CLIP_STEP, CONTENT_STEP, WATERMARK_STEP
from crawl2clip.transforms.score.images import prefetched, prepare_image
from crawl2clip.transforms.score.scoring import ScoredShard, ShardGroup, Towers, chunks, score_shards
from crawl2clip.transforms.score.settings import TAG_COLUMNS, WATERMARK, BatchSizes

_handles: dict[object, shared.Shared] = {}
_handles_lock = threading.Lock()


def shared_model(spec, load: Callable):
    """The process's one copy of the model `spec` (a hashable spec), loaded on first use with
    `load(spec)`, kept while anyone holds it."""
    with _handles_lock:
        handle = _handles.setdefault(spec, shared.Shared())
    return handle.acquire(lambda: load(spec), tag=repr(spec))


def shared_clip(spec: ClipSpec) -> ClipModel:
    return shared_model(spec, load_clip)


def load_towers(image: ClipSpec, texts: dict[str, MClipSpec | None]) -> Towers:
    """The image CLIP and each route's text tower (None: the CLIP's own), from the shared copies."""
    clip = shared_clip(image)
    return Towers(clip, {route: clip if spec is None else shared_model(spec, load_mclip)
                         for route, spec in texts.items()})


class ClipHandler(ModelHandler[ShardGroup, ScoredShard, Towers]):
    """ShardGroup -> a ScoredShard per shard: image embeddings (one image tower), caption
    embeddings (each route's text tower) and their similarity. `keep_images` passes the images
    on to a later step that needs the pixels."""

    def __init__(self, image: ClipSpec, texts: dict[str, MClipSpec | None], sizes: BatchSizes = BatchSizes(),
                 keep_images: bool = False):
        super().__init__()
        self.image = image
        self.texts = dict(texts)
        self.sizes = sizes
        self.keep_images = keep_images

    def load_model(self) -> Towers:
        return load_towers(self.image, self.texts)

    def run_inference(self, batch: ShardGroup, model: Towers, inference_args=None) -> Iterable[ScoredShard]:
        return score_shards(batch.shards, model, self.sizes, self.keep_images)

    def get_num_bytes(self, batch: ShardGroup) -> int:
        return sum(len(image) for shard in batch.shards for image in shard.images)

    def get_metrics_namespace(self) -> str:
        return CLIP_STEP


class WatermarkHandler(ModelHandler[ScoredShard, ScoredShard, object]):
    """ScoredShard (with its images) -> the same with pwatermark from LAION's watermark detector
    on the pixels; the images are dropped afterwards."""

    def __init__(self, path: str, device: str, precision: str, sizes: BatchSizes = BatchSizes()):
        super().__init__()
        self.path = path
        self.device = device
        self.precision = precision
        self.sizes = sizes

    def load_model(self):
        from crawl2clip.models.laion_watermark import WatermarkDetector

        return shared_model((self.path, self.device, self.precision), lambda key: WatermarkDetector(*key))

    def run_inference(self, batch: ScoredShard, model, inference_args=None) -> Iterable[ScoredShard]:
        values = np.full(len(batch), np.nan, np.float32)

        def prepare(i: int):
            return prepare_image(batch.images[i], model.preprocess)

        with ThreadPoolExecutor(max_workers=self.sizes.decode_workers, thread_name_prefix="decode") as pool:
            batches = chunks(len(batch), self.sizes.images)
            for chunk, prepared in prefetched(pool, batches, prepare, self.sizes.prefetch):
                good = [i for i, p in zip(chunk, prepared) if p.pixels is not None]
                if good:
                    values[good] = model.predict(torch.stack([p.pixels for p in prepared if p.pixels is not None]))
        # These images decoded for CLIP a moment ago; should one not here, its pwatermark is null
        # (counted when the shard is written: counts.py).
        return [replace(batch, tags={**batch.tags, TAG_COLUMNS[WATERMARK]: values}, images=[])]

    def get_num_bytes(self, batch: ScoredShard) -> int:
        return sum(len(image) for image in batch.images)

    def get_metrics_namespace(self) -> str:
        return WATERMARK_STEP


class ContentHandler(ModelHandler[ScoredShard, ScoredShard, ContentModels]):
    """ScoredShard -> the same with the embedding heads' tags (punsafe, pwatermark, aesthetic;
    null where not computed) and ptoxic (the toxicity scorer on the captions)."""

    def __init__(self, image: ClipSpec, sources: dict[str, TagSource], toxicity_model: str | None):
        super().__init__()
        self.image = image
        self.sources = dict(sources)
        self.toxicity_model = toxicity_model

    def load_model(self) -> ContentModels:
        return load_content_models(self.sources, lambda: shared_clip(self.image), self.toxicity_model)

    def run_inference(self, batch: ScoredShard, model: ContentModels, inference_args=None) -> Iterable[ScoredShard]:
        return [tag_shard(batch, model)]

    def get_num_bytes(self, batch: ScoredShard) -> int:
        return batch.img_emb.nbytes

    def get_metrics_namespace(self) -> str:
        return CONTENT_STEP
