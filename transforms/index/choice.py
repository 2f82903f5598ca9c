"""Which faiss index fits the data and the memory budget, chosen the way autofaiss does.

Small sets get an exact `Flat` index. Larger ones get `IVF{nlist}_HNSW32,PQ{m}x8np`: an inverted
file with about 4·sqrt(n) lists (a power of two) whose centroids are found through an HNSW graph,
and product-quantised codes of m bytes per vector, m as large as the budget allows (better
recall) up to dim/4. The full float16 vectors stay on disk, memory-mapped, and re-rank the PQ
candidates exactly (`search`), so the budget covers only what faiss holds in RAM.
"""

import math
import re
from dataclasses import dataclass

EXACT_MAX_ROWS = 100_000  # above this a Flat scan costs more per query than IVF + re-ranking
HNSW_M = 32
MIN_TRAIN_PER_CENTROID = 39  # faiss warns below this many training points per k-means centroid
PQ_TRAIN_ROWS = 256 * MIN_TRAIN_PER_CENTROID  # 8-bit PQ: 256 centroids per sub-quantiser
MAX_TRAIN_ROWS = 300_000

_UNITS = {"": 1, "B": 1, "K": 2**10, "KB": 2**10, "M": 2**20, "MB": 2**20, "G": 2**30, "GB": 2**30,
          "T": 2**40, "TB": 2**40}
_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?B?)\s*$", re.IGNORECASE)


def parse_memory(text: str) -> int:
    """'4GB', '512MB', '1.5G' or a byte count -> bytes (binary units, as autofaiss reads them)."""
    match = _MEMORY.match(text or "")
    if not match:
        raise ValueError(f"{text!r} is not a memory size (e.g. 4GB, 512MB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


@dataclass(frozen=True)
class IndexChoice:
    factory: str  # faiss.index_factory string
    rows: int
    dim: int
    memory_bytes: int  # estimated RAM of the filled index
    train_rows: int  # 0 for Flat: nothing to train
    nlist: int = 0
    pq_bytes: int = 0

    @property
    def exact(self) -> bool:
        return self.factory == "Flat"


def flat_memory(rows: int, dim: int) -> int:
    return rows * dim * 4


def ivf_pq_memory(rows: int, dim: int, nlist: int, m: int) -> int:
    codes = rows * (m + 8)  # PQ code + int64 id per vector
    quantizer = nlist * (dim * 4 + HNSW_M * 2 * 4)  # centroids + HNSW level-0 links
    codebooks = 256 * dim * 4
    return codes + quantizer + codebooks + nlist * 64  # + inverted-list headers


def ivf_lists(rows: int) -> int:
    """A power of two near 4·sqrt(n), with enough rows per list to train on."""
    target = 2 ** round(math.log2(max(4 * math.sqrt(rows), 1)))
    while target > 1 and rows // target < MIN_TRAIN_PER_CENTROID:
        target //= 2
    return max(target, 1)


def pq_sizes(dim: int) -> list[int]:
    """Code sizes m (bytes) that divide dim, largest first, at most dim/4 and 64."""
    return [m for m in range(min(dim // 4, 64), 3, -1) if dim % m == 0]


def choose_index(rows: int, dim: int, max_memory: int, exact_max_rows: int = EXACT_MAX_ROWS) -> IndexChoice:
    """The index for `rows` vectors of `dim` within `max_memory` bytes; ValueError if none fits."""
    if rows < 1 or dim < 1:
        raise ValueError("no embeddings to index")
    flat = flat_memory(rows, dim)
    if rows <= exact_max_rows and flat <= max_memory:
        return IndexChoice("Flat", rows, dim, flat, 0)
    if rows < PQ_TRAIN_ROWS:
        raise ValueError(f"{rows:,} vectors need {flat:,} bytes for an exact index, over the memory budget "
                         f"of {max_memory:,}; too few to train a compressed one ({PQ_TRAIN_ROWS:,} needed)")
    nlist = ivf_lists(rows)
    train_rows = min(rows, max(nlist * MIN_TRAIN_PER_CENTROID, PQ_TRAIN_ROWS), MAX_TRAIN_ROWS)
    for m in pq_sizes(dim):
        memory = ivf_pq_memory(rows, dim, nlist, m)
        if memory <= max_memory:
            # np: no polysemous training (it only serves Hamming-filtered search, and is 7x slower)
            return IndexChoice(f"IVF{nlist}_HNSW{HNSW_M},PQ{m}x8np", rows, dim, memory, train_rows, nlist, m)
    smallest = ivf_pq_memory(rows, dim, nlist, min(pq_sizes(dim) or [dim]))
    raise ValueError(f"{rows:,} vectors of dim {dim} need at least {smallest:,} bytes; the memory budget "
                     f"is {max_memory:,}")
