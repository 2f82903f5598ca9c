"""Scoring one download shard with CLIP: embeddings of both sides and their cosine similarity.

Plain functions over `ShardPairs` and loaded `ClipModel`s (no Beam): the ModelHandlers call them,
tests call them directly.
"""

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from crawl2clip.models.clip import ClipModel
from crawl2clip.transforms.download.shards import KEY
from crawl2clip.transforms.errors import count_error, counter, error_record
from crawl2clip.transforms.schema import SPLIT, TEXT, URL
from crawl2clip.transforms.score.images import Prepared, prefetched, prepare_image
from crawl2clip.transforms.score.settings import BatchSizes, route_of
from crawl2clip.transforms.score.shards import STAGE, ShardPairs


@dataclass
class ScoredShard:
    """A shard's pairs whose image decoded (`table`), with aligned float32 unit-norm embeddings and
    `similarity`; `tags` (punsafe, pwatermark, ptoxic) and `drop_reasons` are filled by the later
    steps. `errors` holds the shard's error records so far."""
    number: int
    tar_path: str
    table: pa.Table
    img_emb: np.ndarray
    text_emb: np.ndarray
    similarity: np.ndarray
    errors: list[dict] = field(default_factory=list)
    read_failed: bool = False
    tags: dict[str, np.ndarray] = field(default_factory=dict)
    drop_reasons: list[str | None] | None = None

    def __len__(self) -> int:
        return self.table.num_rows


def pair_routes(table: pa.Table) -> list[str]:
    splits = table[SPLIT].to_pylist() if SPLIT in table.column_names else [None] * table.num_rows
    return [route_of(split) for split in splits]


def _chunks(indices: list[int], size: int) -> list[list[int]]:
    return [indices[start:start + size] for start in range(0, len(indices), size)]


@dataclass
class _ShardArrays:
    img_emb: np.ndarray
    text_emb: np.ndarray
    problems: dict[int, str]  # row -> why its image did not decode


def _encode_route(pairs: ShardPairs, rows: list[int], model: ClipModel, texts: list[str], sizes: BatchSizes,
                  pool: ThreadPoolExecutor, out: _ShardArrays) -> None:
    """Fills `out` at `rows` with `model`'s embeddings; records images that do not decode."""
    def prepare(i: int) -> Prepared:
        return prepare_image(pairs.images[i], model.preprocess)

    def encode_texts(batch: list[int]) -> None:
        out.text_emb[batch] = model.encode_texts([texts[i] for i in batch])

    waiting: list[int] = []  # rows whose image is encoded and whose caption is not yet
    for chunk, prepared in prefetched(pool, _chunks(rows, sizes.images), prepare, sizes.prefetch):
        good = [i for i, p in zip(chunk, prepared) if p.pixels is not None]
        out.problems.update((i, p.error) for i, p in zip(chunk, prepared) if p.pixels is None)
        if good:
            out.img_emb[good] = model.encode_images(torch.stack([p.pixels for p in prepared if p.pixels is not None]))
        waiting += good
        while len(waiting) >= sizes.texts:
            batch, waiting = waiting[:sizes.texts], waiting[sizes.texts:]
            encode_texts(batch)
    if waiting:
        encode_texts(waiting)


def score_shard(pairs: ShardPairs, models: Mapping[str, ClipModel], sizes: BatchSizes = BatchSizes()) -> ScoredShard:
    """Embeds every pair of the shard with its route's model; pairs whose image does not decode
    leave the shard as error records."""
    dim = next(iter(models.values())).embed_dim
    count = len(pairs)
    out = _ShardArrays(np.zeros((count, dim), np.float32), np.zeros((count, dim), np.float32), {})
    texts = [str(text) for text in pairs.table[TEXT].to_pylist()] if count else []
    routes = pair_routes(pairs.table) if count else []
    with ThreadPoolExecutor(max_workers=sizes.decode_workers, thread_name_prefix="decode") as pool:
        for route in sorted(set(routes)):
            rows = [i for i, r in enumerate(routes) if r == route]
            _encode_route(pairs, rows, models[route], texts, sizes, pool, out)
    errors = list(pairs.errors)
    if out.problems:
        urls = pairs.table[URL].to_pylist()
        keys = pairs.table[KEY].to_pylist()
        errors += [count_error(error_record(STAGE, "undecodable_image", source=pairs.tar_path, offset=pairs.number,
                                            url=urls[i] or "", detail=f"{keys[i]}: {problem}"))
                   for i, problem in sorted(out.problems.items())]
    keep = np.ones(count, bool)
    keep[list(out.problems)] = False
    img_emb, text_emb = out.img_emb[keep], out.text_emb[keep]
    counter(STAGE, "pairs_scored").inc(int(keep.sum()))
    return ScoredShard(
        number=pairs.number,
        tar_path=pairs.tar_path,
        table=pairs.table.filter(pa.array(keep)) if count else pairs.table,
        img_emb=img_emb,
        text_emb=text_emb,
        similarity=np.einsum("ij,ij->i", img_emb, text_emb).astype(np.float32),
        errors=errors,
        read_failed=pairs.read_failed,
    )
