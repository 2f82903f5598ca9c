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
"""

import json
import os
from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa

from crawl2clip.transforms.index.search import SearchParams, VectorSearch

INFO = "index_info.json"
METADATA = "metadata.arrow"
THUMBNAILS = "thumbnails.bin"
THUMBNAIL_OFFSETS = "thumbnails_offsets.npy"
WORK = "building"  # shard files while the Beam job runs; removed once merged
# modality -> the embeddings folder/prefix in SCORE_DIR (transforms/embeddings.py)
MODALITIES = {"image": "img_emb", "text": "text_emb"}


def index_path(directory: str, modality: str) -> str:
    return os.path.join(directory, f"{modality}.index")


def vectors_path(directory: str, modality: str) -> str:
    return os.path.join(directory, f"{MODALITIES[modality]}.npy")


def write_info(directory: str, info: dict) -> None:
    temporary = os.path.join(directory, INFO + ".tmp")
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    os.replace(temporary, os.path.join(directory, INFO))  # last: the index is complete


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
    offsets_file = os.path.join(directory, THUMBNAIL_OFFSETS)
    if not os.path.exists(offsets_file):
        return None
    offsets = np.load(offsets_file, mmap_mode="r")
    if len(offsets) != rows + 1:
        raise ValueError(f"{offsets_file}: {len(offsets) - 1} rows, the index has {rows}")
    size = os.path.getsize(os.path.join(directory, THUMBNAILS))
    data = (np.memmap(os.path.join(directory, THUMBNAILS), dtype=np.uint8, mode="r") if size
            else np.zeros(0, dtype=np.uint8))
    return Thumbnails(data, offsets)


class IndexStore:
    """A built INDEX_DIR, opened for queries: metadata and vectors memory-mapped, faiss indexes
    in memory (their size is what `--max-memory` budgeted)."""

    def __init__(self, directory: str):
        self.directory = os.path.realpath(directory)
        info_file = os.path.join(self.directory, INFO)
        if not os.path.isfile(info_file):
            raise FileNotFoundError(f"{directory}: no {INFO} (not a finished `crawl2clip index` output)")
        with open(info_file, encoding="utf-8") as f:
            self.info = json.load(f)
        self.metadata: pa.Table = pa.ipc.open_file(
            pa.memory_map(os.path.join(self.directory, METADATA))).read_all()
        self.rows = self.metadata.num_rows
        self.searches: dict[str, VectorSearch] = {}
        for modality, entry in self.info["indexes"].items():
            vectors = np.load(vectors_path(self.directory, modality), mmap_mode="r")
            index = faiss.read_index(index_path(self.directory, modality))
            self.searches[modality] = VectorSearch(index, vectors, SearchParams(**entry["search"]))
            if len(vectors) != self.rows:
                raise ValueError(f"{modality}: {len(vectors)} vectors but {self.rows} metadata rows")
        self.thumbnails = _load_thumbnails(self.directory, self.rows)

    @property
    def dim(self) -> int:
        return int(self.info["dim"])
