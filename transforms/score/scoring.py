"""Scoring download shards: embeddings of both sides and their cosine similarity.

Plain functions over `ShardPairs` and loaded models (no Beam): the ModelHandlers call them,
tests call them directly. Every image goes through the one image tower; each caption through
its route's text tower (models in the same embedding space). The rows of several shards form
one stream of batches, so batches stay full across shard boundaries and the preparation of the
next batches (images decoded and resized, captions tokenised) never stops at one; the results
are split back into one ScoredShard per download shard.
"""

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch

from crawl2clip.models.clip import ClipModel
from crawl2clip.transforms.download.shards import KEY
from crawl2clip.transforms.errors import error_record
from crawl2clip.transforms.schema import SPLIT, TEXT, URL
from crawl2clip.transforms.score.preparation import ImageBatch, image_preparer, prepared_ahead
from crawl2clip.transforms.score.settings import BatchSizes, route_of
from crawl2clip.transforms.score.shards import STAGE, UNDECODABLE, ScoredShard, ShardPairs


class TextTower(Protocol):
    embed_dim: int

    def text_batches(self, texts: Sequence[str], batch_size: int) -> list[tuple[np.ndarray, Any]]: ...

    def embed_tokens(self, tokens: Any) -> torch.Tensor: ...


class Towers:
    """The run's loaded towers: `image` (a CLIP) and `texts` (route -> text tower)."""

    def __init__(self, image: ClipModel, texts: Mapping[str, TextTower]):
        self.image = image
        self.texts = dict(texts)


def pair_routes(table: pa.Table) -> list[str]:
    splits = table[SPLIT].to_pylist() if SPLIT in table.column_names else [None] * table.num_rows
    return [route_of(split) for split in splits]


def chunks(count: int, size: int) -> list[list[int]]:
    """Rows 0..count-1 in consecutive batches of `size`."""
    return [list(range(start, min(start + size, count))) for start in range(0, count, size)]


@dataclass
class ShardGroup:
    """Download shards scored together, their rows one stream of batches; its length is its rows."""
    shards: list[ShardPairs]

    def __len__(self) -> int:
        return sum(len(shard) for shard in self.shards)


@dataclass
class _Rows:
    """The rows of a group of shards, end to end."""
    images: list[bytes]
    texts: list[str]
    routes: list[str]

    @classmethod
    def of(cls, shards: Sequence[ShardPairs]) -> "_Rows":
        rows = cls([], [], [])
        for shard in shards:
            if len(shard):
                rows.images += shard.images
                rows.texts += [str(text) for text in shard.table[TEXT].to_pylist()]
                rows.routes += pair_routes(shard.table)
        return rows


def _caption_batches(rows: _Rows, chunk: list[int], towers: Towers, size: int) -> list[tuple[str, np.ndarray, Any]]:
    """The chunk's captions tokenised by their route's tower: (route, rows, tokens) batches.
    Every caption is encoded, also where its image will not decode (rare; the row is dropped)."""
    by_route: dict[str, list[int]] = {}
    for i in chunk:
        by_route.setdefault(rows.routes[i], []).append(i)
    batches = []
    for route, members in by_route.items():
        members = np.array(members)
        for positions, tokens in towers.texts[route].text_batches([rows.texts[i] for i in members], size):
            batches.append((route, members[positions], tokens))
    return batches


class _Results:
    """Embeddings on their way from the device into `target` arrays. A GPU's are copied out
    without waiting (pinned memory, an event) and read one batch later, so the towers' next
    batch is queued while this one still runs; a CPU's are stored at once."""

    def __init__(self):
        self.pending: list[tuple[int, np.ndarray, np.ndarray, torch.Tensor, torch.cuda.Event]] = []

    def add(self, batch: int, target: np.ndarray, rows, features: torch.Tensor) -> None:
        if not features.is_cuda:
            target[rows] = features.numpy()
            return
        host = torch.empty(features.shape, dtype=features.dtype, pin_memory=True)
        host.copy_(features, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record(torch.cuda.current_stream(features.device))
        self.pending.append((batch, target, rows, host, copied))

    def store(self, before: int | None = None) -> None:
        """Stores the copies of the batches before `before` (None: all)."""
        waiting = []
        for batch, target, rows, host, copied in self.pending:
            if before is None or batch < before:
                copied.synchronize()
                target[rows] = host.numpy()
            else:
                waiting.append((batch, target, rows, host, copied))
        self.pending = waiting


def score_shards(shards: Sequence[ShardPairs], towers: Towers, sizes: BatchSizes = BatchSizes(),
                 keep_images: bool = False) -> list[ScoredShard]:
    """Embeds every pair of the shards (see score_shard), in batches of `sizes` that run across
    shard boundaries, the next batches prepared ahead while the towers work."""
    rows = _Rows.of(shards)
    count, dim = len(rows.images), towers.image.embed_dim
    img_emb, text_emb = np.zeros((count, dim), np.float32), np.zeros((count, dim), np.float32)
    problems: dict[int, str] = {}  # row -> why its image did not decode
    with ThreadPoolExecutor(max_workers=sizes.decode_workers, thread_name_prefix="decode") as pool, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="prepare") as ahead:
        prepare_images = image_preparer(towers.image, pool)

        def prepare(chunk: list[int]) -> tuple[ImageBatch, list]:
            return (prepare_images([rows.images[i] for i in chunk]),
                    _caption_batches(rows, chunk, towers, sizes.texts))

        results = _Results()
        batches = prepared_ahead(ahead, chunks(count, sizes.images), prepare, sizes.prefetch)
        for number, (chunk, (images, captions)) in enumerate(batches):
            problems.update((chunk[i], error) for i, error in images.errors.items())
            if images.good:
                results.add(number, img_emb, [chunk[i] for i in images.good],
                            towers.image.embed_images(images.model_input()))
                prepare_images.recycle(images)
            for route, members, tokens in captions:
                results.add(number, text_emb, members, towers.texts[route].embed_tokens(tokens))
            results.store(before=number)
        results.store()
    scored, start = [], 0
    for shard in shards:
        end = start + len(shard)
        scored.append(_scored_shard(shard, img_emb[start:end], text_emb[start:end],
                                    {i - start: problems[i] for i in range(start, end) if i in problems}, keep_images))
        start = end
    return scored


def score_shard(pairs: ShardPairs, towers: Towers, sizes: BatchSizes = BatchSizes(),
                keep_images: bool = False) -> ScoredShard:
    """Embeds every pair of the shard: its image with the image tower, its caption with its
    route's text tower. Pairs whose image does not decode leave the shard as error records.
    With `keep_images` the scored rows keep their encoded images (for a later image model)."""
    return score_shards([pairs], towers, sizes, keep_images)[0]


def _scored_shard(pairs: ShardPairs, img_emb: np.ndarray, text_emb: np.ndarray, problems: dict[int, str],
                  keep_images: bool) -> ScoredShard:
    count = len(pairs)
    errors = list(pairs.errors)
    if problems:
        urls = pairs.table[URL].to_pylist()
        keys = pairs.table[KEY].to_pylist()
        errors += [error_record(STAGE, UNDECODABLE, source=pairs.tar_path, offset=pairs.number, url=urls[i] or "",
                                detail=f"{keys[i]}: {problem}")
                   for i, problem in sorted(problems.items())]
    keep = np.ones(count, bool)
    keep[list(problems)] = False
    img_emb, text_emb = img_emb[keep], text_emb[keep]
    return ScoredShard(
        number=pairs.number,
        tar_path=pairs.tar_path,
        table=pairs.table.filter(pa.array(keep)) if count else pairs.table,
        img_emb=img_emb,
        text_emb=text_emb,
        similarity=np.einsum("ij,ij->i", img_emb, text_emb).astype(np.float32),
        errors=errors,
        read_failed=pairs.read_failed,
        images=[image for image, kept in zip(pairs.images, keep) if kept] if keep_images else [],
    )
