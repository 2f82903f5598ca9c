"""Building an index: plan the parts, train on a sample, add in streaming batches, merge shards,
tune the search and measure recall@10 against exact search.

A shard is a run of consecutive parts; its vectors get their global row numbers as ids, so shards
built anywhere merge into the index one would get by adding every part in order.
"""

import shutil
import time
from dataclasses import asdict, dataclass

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crawl2clip.transforms import files
from crawl2clip.transforms.embeddings import EMBEDDING_DTYPE, list_parts, load_embeddings, part_paths
from crawl2clip.transforms.index.choice import IndexChoice
from crawl2clip.transforms.index.search import SearchParams, VectorSearch, exact_search, recall_at_k
from crawl2clip.transforms.index.store import read_index, read_npy, write_npy

ADD_BATCH_ROWS = 65_536  # vectors converted to float32 and added at a time
RECALL_K = 10
RECALL_QUERIES = 500  # per query set (one tunes the search, the other measures recall)
NPROBE_LADDER = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
RERANK = 10  # candidates re-ranked exactly per result wanted, to start with
MAX_RERANK = 80
PLATEAU = 0.005  # a recall gain smaller than this is no gain


@dataclass(frozen=True)
class PartPlan:
    """One part of SCORE_DIR, checked, with where its rows go in the index."""
    number: int
    score_dir: str
    offset: int  # global row number of its first row
    rows: int

    def embeddings(self, modality_prefix: str) -> str:
        part = part_paths(self.score_dir, self.number)
        return part.img_emb if modality_prefix == "img_emb" else part.text_emb

    @property
    def metadata(self) -> str:
        return part_paths(self.score_dir, self.number).metadata

    def as_dict(self) -> dict:
        return asdict(self)


def read_parquet(path: str, columns: list[str] | None = None) -> pa.Table:
    with files.open_read(path) as f:
        return pq.read_table(f, columns=columns)


def parquet_schema(path: str) -> pa.Schema:
    with files.open_read(path) as f:
        return pq.read_schema(f)


def parquet_rows(path: str) -> int:
    with files.open_read(path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def embeddings_shape(path: str) -> tuple[int, ...]:
    """The shape of a .npy file from its header alone (nothing copied from a remote filesystem);
    ValueError when it is no .npy file or shorter than its header says."""
    with files.open_read(path) as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        needed = f.tell() + int(np.prod(shape)) * dtype.itemsize
    if files.size(path) < needed:
        raise ValueError(f"{path}: {files.size(path)} bytes, its header promises {needed}")
    return shape


def plan_parts(score_dir: str, prefixes: list[str]) -> tuple[list[PartPlan], int, list[tuple[int, str, str]]]:
    """The usable parts (global offsets assigned), the dimension, and the parts left out as
    (number, reason, detail): unreadable, misaligned with their metadata, or of another dimension."""
    plans: list[PartPlan] = []
    problems: list[tuple[int, str, str]] = []
    dim = 0
    offset = 0
    for part in list_parts(score_dir):
        try:
            rows = parquet_rows(part.metadata)
            shapes = [embeddings_shape(PartPlan(part.number, score_dir, 0, 0).embeddings(p)) for p in prefixes]
        except (OSError, ValueError) as exc:
            problems.append((part.number, "part_unreadable", f"{part.metadata}: {exc}"))
            continue
        if any(len(shape) != 2 or shape[0] != rows for shape in shapes):
            problems.append((part.number, "part_misaligned",
                             f"embeddings {shapes} for {rows} metadata rows"))
            continue
        part_dim = shapes[0][1]
        if any(shape[1] != part_dim for shape in shapes) or (dim and part_dim != dim):
            problems.append((part.number, "dim_mismatch", f"embedding shapes {shapes}, index dim {dim or part_dim}"))
            continue
        dim = dim or part_dim
        if rows:
            plans.append(PartPlan(part.number, score_dir, offset, rows))
            offset += rows
    return plans, dim, problems


def split_shards(parts: list[PartPlan], shards: int) -> list[list[PartPlan]]:
    """Consecutive runs of parts with about the same number of rows each."""
    total = sum(p.rows for p in parts)
    groups: list[list[PartPlan]] = [[] for _ in range(max(1, min(shards, len(parts))))]
    for part in parts:
        groups[min(len(groups) - 1, part.offset * len(groups) // max(total, 1))].append(part)
    return [g for g in groups if g]


class RowReader:
    """Rows by global number from the parts' memory-mapped embeddings, as float32: the vectors
    of the index without a copy of them (indexing takes a slice or an array of row numbers)."""

    def __init__(self, parts: list[PartPlan], prefix: str):
        self.parts = parts
        self.starts = np.array([p.offset for p in parts], dtype=np.int64)
        self.arrays = [load_embeddings(p.embeddings(prefix)) for p in parts]
        self.rows = sum(p.rows for p in parts)
        self.dim = self.arrays[0].shape[1] if self.arrays else 0

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows, self.dim

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(self.rows))
        return self.take(np.asarray(rows, dtype=np.int64))

    def take(self, ids: np.ndarray) -> np.ndarray:
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        which = np.searchsorted(self.starts, ids, side="right") - 1
        for p in np.unique(which):
            mask = which == p
            out[mask] = self.arrays[p][ids[mask] - self.starts[p]]
        return out


def sample_ids(rows: int, train_rows: int, query_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint random row numbers for training and for the held-out recall queries, sorted."""
    rng = np.random.default_rng(seed)
    query_rows = min(query_rows, max(rows - train_rows, 0) if train_rows else rows)
    chosen = rng.choice(rows, size=train_rows + query_rows, replace=False)
    return np.sort(chosen[:train_rows]), np.sort(chosen[train_rows:])


def new_index(choice: IndexChoice) -> faiss.Index:
    return faiss.index_factory(choice.dim, choice.factory, faiss.METRIC_INNER_PRODUCT)


def train_index(choice: IndexChoice, sample: np.ndarray) -> faiss.Index:
    """An empty index of the chosen type, trained on `sample` (nothing to train for Flat)."""
    index = new_index(choice)
    if not index.is_trained:
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def add_parts(index: faiss.Index, parts: list[PartPlan], prefix: str, batch_rows: int = ADD_BATCH_ROWS) -> int:
    """Adds every row of `parts` in batches of float32; ids are global row numbers. Returns rows."""
    added = 0
    exact = faiss.try_extract_index_ivf(index) is None
    for part in parts:
        vectors = load_embeddings(part.embeddings(prefix))
        for start in range(0, part.rows, batch_rows):
            batch = np.ascontiguousarray(vectors[start:start + batch_rows], dtype=np.float32)
            if exact:  # Flat stores rows in order: shards are merged in order
                index.add(batch)
            else:
                index.add_with_ids(batch, np.arange(part.offset + start, part.offset + start + len(batch)))
            added += len(batch)
    return added


def merge_indexes(paths: list[str]) -> faiss.Index:
    """The shards' indexes, in order, as one index (IVF lists and Flat rows appended)."""
    merged = read_index(paths[0])
    for path in paths[1:]:
        merged.merge_from(read_index(path), 0)
    return merged


def _ladder(search: VectorSearch, tune_queries: np.ndarray, true_scores: np.ndarray,
            target_recall: float) -> tuple[SearchParams, list[dict]]:
    """Walks up nprobe (more lists visited); where recall stops growing, the PQ codes are what
    limits it, so the re-ranked candidates double instead. First parameters reaching the
    target win; otherwise the best seen."""
    nprobes = [n for n in NPROBE_LADDER if n <= search.ivf.nlist] or [search.ivf.nlist]
    step, rerank, last = 0, RERANK, -1.0
    tuning: list[dict] = []
    best: tuple[float, SearchParams] | None = None
    while True:
        params = SearchParams(nprobe=nprobes[step], ef_search=max(64, 2 * nprobes[step]), rerank=rerank)
        found = search.search(tune_queries, RECALL_K, params=params)[1]
        recall = recall_at_k(found, true_scores, tune_queries, search.vectors)
        tuning.append({**params.as_dict(), "recall_at_10": round(recall, 4)})
        if best is None or recall > best[0] + PLATEAU:
            best = (recall, params)
        if recall >= target_recall:
            return params, tuning
        if recall - last < PLATEAU and rerank < MAX_RERANK:
            rerank *= 2
        elif step + 1 < len(nprobes):
            step += 1
        else:
            return best[1], tuning
        last = recall


def tune_search(search: VectorSearch, tune_queries: np.ndarray, test_queries: np.ndarray,
                target_recall: float) -> tuple[SearchParams, dict]:
    """The cheapest search parameters reaching `target_recall` on one query set, and the
    recall@10 they give on the other (held-out) set, against exact search."""
    started = time.time()
    params, tuning = SearchParams(rerank=1), []
    if not search.exact:
        params, tuning = _ladder(search, tune_queries, exact_search(search.vectors, tune_queries, RECALL_K)[0],
                                 target_recall)
    true_scores, _ = exact_search(search.vectors, test_queries, RECALL_K)
    found = search.search(test_queries, RECALL_K, params=params)[1]
    recall = recall_at_k(found, true_scores, test_queries, search.vectors)
    return params, {"recall_at_10": round(recall, 4), "recall_queries": len(test_queries),
                    "target_recall": target_recall, "tuning": tuning,
                    "seconds": round(time.time() - started, 3)}


def write_metadata(parts: list[PartPlan], path: str) -> int:
    """Every part's metadata rows, in order, as one uncompressed Arrow IPC file (memory-mappable),
    streamed into `path`. Columns missing from some parts come out null there; types are unified
    across parts."""
    schema = pa.unify_schemas([parquet_schema(p.metadata) for p in parts], promote_options="permissive")
    rows = 0

    def write(out) -> None:
        nonlocal rows
        with pa.ipc.new_file(pa.PythonFile(out, mode="w"), schema) as writer:
            for part in parts:
                table = read_parquet(part.metadata)
                columns = [table[f.name].cast(f.type) if f.name in table.column_names
                           else pa.nulls(table.num_rows, f.type) for f in schema]
                writer.write_table(pa.Table.from_arrays(columns, schema=schema))
                rows += table.num_rows

    files.write_atomic(path, write)
    return rows


def write_vectors(parts: list[PartPlan], prefix: str, dim: int, path: str, batch_rows: int = ADD_BATCH_ROWS) -> None:
    """The parts' float16 vectors, in order, streamed into `path` as one .npy file."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(EMBEDDING_DTYPE)), "fortran_order": False,
              "shape": (sum(p.rows for p in parts), dim)}

    def write(out) -> None:
        np.lib.format.write_array_header_1_0(out, header)
        for part in parts:
            vectors = load_embeddings(part.embeddings(prefix))
            for start in range(0, part.rows, batch_rows):
                batch = np.ascontiguousarray(vectors[start:start + batch_rows], dtype=EMBEDDING_DTYPE)
                out.write(memoryview(batch).cast("B"))  # bytes: a writer may count len()

    files.write_atomic(path, write)


def pack_thumbnails(pieces: list[tuple[str, str]], data_path: str, offsets_path: str) -> int:
    """Concatenates the shards' (bytes file, lengths .npy) into one file and its offsets;
    returns how many rows have a thumbnail."""
    lengths = [read_npy(lengths_file) for _, lengths_file in pieces]
    all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    write_npy(offsets_path, np.concatenate([[0], np.cumsum(all_lengths)]).astype(np.int64))

    def write(out) -> None:
        for data_file, _ in pieces:
            with files.open_read(data_file) as f:
                shutil.copyfileobj(f, out, 1 << 20)

    files.write_atomic(data_path, write)
    return int((all_lengths > 0).sum())
