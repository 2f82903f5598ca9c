"""Answering kNN queries: faiss candidates, exact re-ranking from the memory-mapped vectors,
filters as a bitmap of allowed rows, and removal of near-duplicate results.

Vectors are L2-normalised, so inner product is cosine similarity. A compressed (PQ) index finds
`rerank`·k candidates; their float16 vectors, read from the memory-mapped embeddings file, give
the exact scores the results are ranked by. Filters are applied inside faiss (IDSelectorBitmap),
so a selective filter still returns k results when k matching rows exist in the probed lists.
"""

from dataclasses import asdict, dataclass

import faiss
import numpy as np

EXACT_BATCH_ROWS = 65_536  # rows per block of brute-force search


@dataclass(frozen=True)
class SearchParams:
    nprobe: int = 1  # IVF lists visited per query
    ef_search: int = 64  # HNSW breadth when finding those lists
    rerank: int = 10  # candidates per result re-ranked exactly (compressed indexes only)

    def as_dict(self) -> dict:
        return asdict(self)


def allowed_selector(allowed: np.ndarray) -> tuple[faiss.IDSelector, np.ndarray]:
    """A faiss selector of the rows where `allowed` is True; keep the returned bitmap alive
    while the selector is used (faiss reads it through a raw pointer)."""
    bitmap = np.packbits(np.ascontiguousarray(allowed, dtype=bool), bitorder="little")
    return faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bitmap)), bitmap


class VectorSearch:
    """One faiss index and the memory-mapped (rows, dim) vectors it was built from."""

    def __init__(self, index: faiss.Index, vectors: np.ndarray, params: SearchParams = SearchParams()):
        if index.ntotal != len(vectors):
            raise ValueError(f"the index holds {index.ntotal} vectors, the embeddings file {len(vectors)}")
        self.index = index
        self.vectors = vectors
        self.params = params
        self.ivf = faiss.try_extract_index_ivf(index)

    @property
    def exact(self) -> bool:
        return self.ivf is None

    def _faiss_params(self, selector: faiss.IDSelector | None, params: SearchParams):
        if self.exact:
            return faiss.SearchParameters(sel=selector) if selector is not None else None
        ivf = faiss.SearchParametersIVF(nprobe=params.nprobe, max_codes=0)
        if selector is not None:
            ivf.sel = selector
        if isinstance(self.ivf.quantizer, faiss.IndexHNSW):
            hnsw = faiss.SearchParametersHNSW(efSearch=max(params.ef_search, params.nprobe))
            ivf.quantizer_params = hnsw
            ivf._hnsw = hnsw  # keep the Python object alive as long as ivf
        return ivf

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               params: SearchParams | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (queries, k), best first; id -1 (score -inf) where fewer than k
        rows were found."""
        params = params or self.params
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.vectors.shape[1])
        selector, bitmap = allowed_selector(allowed) if allowed is not None else (None, None)
        fetch = k if self.exact else k * max(params.rerank, 1)
        fetch = min(fetch, self.index.ntotal)
        scores, ids = self.index.search(queries, fetch, params=self._faiss_params(selector, params))
        del bitmap  # faiss is done with it
        if self.exact:
            return _pad(scores, ids, k)
        return self._rerank(queries, ids, k)

    def _rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        for q, row in enumerate(candidates):
            found = np.unique(row[row >= 0])  # sorted: reads the mapped file in order
            if not len(found):
                continue
            exact = self.vectors[found].astype(np.float32) @ queries[q]
            best = np.argsort(-exact, kind="stable")[:k]
            scores[q, :len(best)] = exact[best]
            ids[q, :len(best)] = found[best]
        return scores, ids


def _pad(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    if ids.shape[1] < k:
        extra = k - ids.shape[1]
        scores = np.pad(scores, ((0, 0), (0, extra)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, extra)), constant_values=-1)
    return scores, ids.astype(np.int64)


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The true top-k (scores, ids) by brute force, block by block over memory-mapped vectors."""
    queries = np.asarray(queries, dtype=np.float32)
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(vectors), EXACT_BATCH_ROWS):
        block = np.asarray(vectors[start:start + EXACT_BATCH_ROWS], dtype=np.float32)
        scores = np.concatenate([best_scores, queries @ block.T], axis=1)
        ids = np.concatenate([best_ids, np.broadcast_to(np.arange(start, start + len(block)),
                                                        (len(queries), len(block)))], axis=1)
        top = np.argpartition(-scores, min(k, scores.shape[1]) - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        best_scores = np.take_along_axis(scores, top, axis=1)
        best_ids = np.take_along_axis(ids, top, axis=1)
    return best_scores, best_ids


def recall_at_k(found: np.ndarray, true_scores: np.ndarray, queries: np.ndarray, vectors: np.ndarray,
                tolerance: float = 1e-4) -> float:
    """Mean share of the true top-k that was found (autofaiss' recall@k), ties counted: a found
    row scoring at least the true k-th score is a hit, so equal vectors (copies of an image,
    repeated captions) do not count as misses."""
    k = true_scores.shape[1]
    hits = 0
    for ids, kth, query in zip(found, true_scores[:, -1], np.asarray(queries, dtype=np.float32)):
        ids = ids[ids >= 0]
        if len(ids):
            hits += min(k, int((np.asarray(vectors[np.sort(ids)], dtype=np.float32) @ query >= kth - tolerance).sum()))
    return hits / (len(true_scores) * k) if len(true_scores) else 0.0


def remove_near_duplicates(ids: np.ndarray, vectors: np.ndarray, threshold: float) -> np.ndarray:
    """`ids` (best first) without any result whose cosine to a better-ranked kept result is at
    least `threshold`: copies of one image under different URLs show once."""
    ids = ids[ids >= 0]
    if len(ids) < 2:
        return ids
    found = np.asarray(vectors[np.sort(ids)], dtype=np.float32)
    rows = found[np.searchsorted(np.sort(ids), ids)]
    similar = rows @ rows.T >= threshold
    kept: list[int] = []
    for i in range(len(ids)):
        if not any(similar[i, j] for j in kept):
            kept.append(i)
    return ids[kept]
