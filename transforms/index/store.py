"""INDEX_DIR: everything the explorer serves, in one folder it never has to leave.

    index_info.json          index type, sizes, search parameters, recall@10, the CLIP to encode queries
    image.index, text.index  faiss indexes over image (and, optionally, caption) embeddings
    img_emb.npy, text_emb.npy  the float16 vectors, memory-mapped: exact re-ranking, duplicates
    metadata.arrow           every metadata row (LAION columns), an Arrow IPC file memory-mapped
                             by readers, so its pages load only when rows are used
    thumbnails.bin + thumbnails_offsets.npy   JPEG thumbnails packed end to end; row i's bytes are
                             [offsets[i], offsets[i+1]) (empty: no thumbnail)
    errors/, metrics.json    the build's error records and counters

Row i of every file is row i of the embeddings in SCORE_DIR order (parts by increasing N).

INDEX_DIR may be on any Beam filesystem (hdfs://, s3://, gs://): every file is committed whole
through transforms/files.py (faiss indexes streamed, no local file), index_info.json last, so an
index is finished exactly when its info file exists. A reader memory-maps the local copies of a
remote folder's files (files.local_copy).
"""

import io
import json
import os
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa

from crawl2clip.transforms import files
from crawl2clip.transforms.index.search import SearchParams, VectorSearch

INFO = "index_info.json"
METADATA = "metadata.arrow"
THUMBNAILS = "thumbnails.bin"
THUMBNAIL_OFFSETS = "thumbnails_offsets.npy"
WORK = "building"  # shard files while the Beam job runs; removed once merged
# modality -> the embeddings folder/prefix in SCORE_DIR (transforms/embeddings.py)
MODALITIES = {"image": "img_emb", "text": "text_emb"}


def index_path(directory: str, modality: str) -> str:
    return files.join(directory, f"{modality}.index")


def vectors_path(directory: str, modality: str) -> str:
    return files.join(directory, f"{MODALITIES[modality]}.npy")


def write_index(index: faiss.Index, path: str) -> int:
    """Streams a faiss index into `path` on any filesystem, committed whole; returns its bytes."""
    written = 0

    def write(out) -> None:
        def chunk(data: bytes) -> None:
            nonlocal written
            out.write(data)
            written += len(data)

        faiss.write_index(index, faiss.PyCallbackIOWriter(chunk))

    files.write_atomic(path, write)
    return written


def read_index(path: str) -> faiss.Index:
    """A faiss index streamed from `path` on any filesystem."""
    with files.open_read(path) as f:
        return faiss.read_index(faiss.PyCallbackIOReader(f.read))


def write_npy(path: str, array: np.ndarray) -> str:
    return files.write_atomic(path, lambda f: np.save(f, array))


def read_npy(path: str) -> np.ndarray:
    """A small .npy file read whole (large ones are memory-mapped from files.local_copy)."""
    return np.load(io.BytesIO(files.read_bytes(path)))


def write_info(directory: str, info: dict) -> None:
    """Written last: the index is complete."""
    files.write_atomic(files.join(directory, INFO), json.dumps(info, indent=2).encode() + b"\n")


def forget_info(directory: str) -> None:
    """Before a build replaces files of an earlier one: the folder is unfinished until the new
    info is written."""
    files.delete(files.join(directory, INFO))


@dataclass
class Thumbnails:
    """Packed thumbnails: bytes of row i, or None."""
    data: np.ndarray  # uint8, memory-mapped
    offsets: np.ndarray  # int64, rows + 1

    def get(self, row: int) -> bytes | None:
        start, end = int(self.offsets[row]), int(self.offsets[row + 1])
        return bytes(self.data[start:end]) if end > start else None

    def available(self) -> np.ndarray:
        return np.diff(self.offsets) > 0


def _load_thumbnails(directory: str, rows: int) -> Thumbnails | None:
    offsets_file = files.join(directory, THUMBNAIL_OFFSETS)
    if not files.exists(offsets_file):
        return None
    offsets = np.load(files.local_copy(offsets_file), mmap_mode="r")
    if len(offsets) != rows + 1:
        raise ValueError(f"{offsets_file}: {len(offsets) - 1} rows, the index has {rows}")
    data_file = files.join(directory, THUMBNAILS)
    data = (np.memmap(files.local_copy(data_file), dtype=np.uint8, mode="r") if files.size(data_file)
            else np.zeros(0, dtype=np.uint8))
    return Thumbnails(data, offsets)


class IndexStore:
    """A built INDEX_DIR (local or remote), opened for queries: metadata and vectors
    memory-mapped, faiss indexes in memory (their size is what `--max-memory` budgeted)."""

    def __init__(self, directory: str):
        self.directory = os.path.realpath(directory) if files.is_local(directory) else directory
        info_file = files.join(self.directory, INFO)
        if not files.exists(info_file):
            raise FileNotFoundError(f"{directory}: no {INFO} (not a finished `crawl2clip index` output)")
        self.info = files.read_marker(info_file)
        self.metadata: pa.Table = pa.ipc.open_file(
            pa.memory_map(files.local_copy(files.join(self.directory, METADATA)))).read_all()
        self.rows = self.metadata.num_rows
        self.searches: dict[str, VectorSearch] = {}
        for modality, entry in self.info["indexes"].items():
            vectors = np.load(files.local_copy(vectors_path(self.directory, modality)), mmap_mode="r")
            if len(vectors) != self.rows:
                raise ValueError(f"{modality}: {len(vectors)} vectors but {self.rows} metadata rows")
            self.searches[modality] = VectorSearch(read_index(index_path(self.directory, modality)), vectors,
                                                   SearchParams(**entry["search"]))
        # as its info says: a folder rebuilt without thumbnails may still hold an older build's
        self.thumbnails = _load_thumbnails(self.directory, self.rows) if self.info.get("thumbnails") else None

    @property
    def dim(self) -> int:
        return int(self.info["dim"])
