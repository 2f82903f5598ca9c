"""Beam ModelHandlers of the scoring stage, for RunInference.

RunInference loads a handler's model once per worker process and shares it between the
process's threads. Both handlers take their CLIPs from `shared_clip`, so the CLIP the scoring
step loaded is the one the content step's zero-shot heads use, and a spec used for both splits
is loaded once. Elements are whole download shards (`with_no_batching`): a handler batches a
shard's pairs itself with the batch sizes it was given, which keeps every part written once.
"""

import threading
from collections.abc import Iterable, Sequence

from apache_beam.ml.inference.base import ModelHandler
from apache_beam.utils import shared

from crawl2clip.models.clip import ClipModel, ClipSpec, load_clip
from crawl2clip.transforms.score.content import ContentModels, HeadSource, load_content_models, tag_shard
from crawl2clip.transforms.score.scoring import ScoredShard, score_shard
from crawl2clip.transforms.score.settings import BatchSizes
from crawl2clip.transforms.score.shards import ShardPairs

_handles: dict[ClipSpec, shared.Shared] = {}
_handles_lock = threading.Lock()


def shared_clip(spec: ClipSpec) -> ClipModel:
    """The process's one copy of the CLIP `spec`, loaded on first use, kept while anyone holds it."""
    with _handles_lock:
        handle = _handles.setdefault(spec, shared.Shared())
    return handle.acquire(lambda: load_clip(spec), tag=spec)


class RoutedClips(dict):
    """route -> ClipModel (a dict subclass, so RunInference's shared cache can weak-reference it)."""


class ClipHandler(ModelHandler[ShardPairs, ScoredShard, RoutedClips]):
    """ShardPairs -> ScoredShard: image and caption embeddings and their similarity, each pair
    through its split's CLIP."""

    def __init__(self, specs: dict[str, ClipSpec], sizes: BatchSizes = BatchSizes()):
        super().__init__()
        self.specs = dict(specs)
        self.sizes = sizes

    def load_model(self) -> RoutedClips:
        return RoutedClips({route: shared_clip(spec) for route, spec in self.specs.items()})

    def run_inference(self, batch: ShardPairs, model: RoutedClips, inference_args=None) -> Iterable[ScoredShard]:
        return [score_shard(batch, model, self.sizes)]

    def get_num_bytes(self, batch: ShardPairs) -> int:
        return sum(len(image) for image in batch.images)

    def get_metrics_namespace(self) -> str:
        return "score_clip"


class ContentHandler(ModelHandler[ScoredShard, ScoredShard, ContentModels]):
    """ScoredShard -> the same with punsafe, pwatermark (heads on the image embeddings) and
    ptoxic (the toxicity scorer on the captions)."""

    def __init__(self, specs: dict[str, ClipSpec], heads: Sequence[HeadSource], toxicity_model: str | None):
        super().__init__()
        self.specs = dict(specs)
        self.heads = tuple(heads)
        self.toxicity_model = toxicity_model

    def load_model(self) -> ContentModels:
        return load_content_models(self.heads, lambda route: shared_clip(self.specs[route]), self.toxicity_model)

    def run_inference(self, batch: ScoredShard, model: ContentModels, inference_args=None) -> Iterable[ScoredShard]:
        return [tag_shard(batch, model)]

    def get_num_bytes(self, batch: ScoredShard) -> int:
        return batch.img_emb.nbytes

    def get_metrics_namespace(self) -> str:
        return "score_content"
