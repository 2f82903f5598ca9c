"""The embeddings layout of clip-retrieval, which the scoring stage writes and prune/index read.

    DIR/img_emb/img_emb_{N}.npy         (rows, dim) float16, L2-normalised image embeddings
    DIR/text_emb/text_emb_{N}.npy       (rows, dim) float16, L2-normalised caption embeddings
    DIR/metadata/metadata_{N}.parquet   one row per embedding row, same order (LAION columns)

N is the number of the download shard the rows came from, so numbers may have gaps; parts are
always taken in increasing N. A part exists only once its metadata file does: writers put the
arrays in place first and the metadata last (each committed whole by transforms/files.py), so
readers never see a half-written part. autofaiss and clip-retrieval read this layout as it is.

DIR may be local or on any Beam filesystem (hdfs://, s3://, gs://): every path is made, listed
and read through transforms/files.py.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crawl2clip.transforms import files

IMG_EMB = "img_emb"
TEXT_EMB = "text_emb"
METADATA = "metadata"
EMBEDDING_DTYPE = np.float16  # clip-retrieval's; halves disk and page cache at no cost to ranking

_METADATA_NAME = re.compile(r"^metadata_(\d+)\.parquet$")


@dataclass(frozen=True)
class Part:
    number: int
    img_emb: str
    text_emb: str
    metadata: str


def part_paths(directory: str, number: int) -> Part:
    return Part(
        number=number,
        img_emb=files.join(directory, IMG_EMB, f"img_emb_{number}.npy"),
        text_emb=files.join(directory, TEXT_EMB, f"text_emb_{number}.npy"),
        metadata=files.join(directory, METADATA, f"metadata_{number}.parquet"),
    )


def list_parts(directory: str) -> list[Part]:
    """The finished parts of DIR (those whose metadata file exists), in increasing N."""
    found = (files.split(path)[1] for path in files.match(files.join(directory, METADATA, "metadata_*.parquet")))
    numbers = sorted(int(m.group(1)) for name in found if (m := _METADATA_NAME.match(name)))
    return [part_paths(directory, n) for n in numbers]


def write_part(directory: str, number: int, img_emb: np.ndarray, text_emb: np.ndarray,
               metadata: pa.Table) -> Part:
    """Writes one part; the metadata goes last, so the part counts as written only when whole."""
    if not (len(img_emb) == len(text_emb) == metadata.num_rows):
        raise ValueError(f"part {number}: {len(img_emb)} image, {len(text_emb)} text embeddings and "
                         f"{metadata.num_rows} metadata rows must be aligned")
    part = part_paths(directory, number)
    for path, array in ((part.img_emb, img_emb), (part.text_emb, text_emb)):
        files.write_atomic(path, lambda f, a=array: np.save(f, np.asarray(a, dtype=EMBEDDING_DTYPE)))
    files.write_atomic(part.metadata, lambda f: pq.write_table(metadata, f))
    return part


def load_embeddings(path: str) -> np.ndarray:
    """A part's embeddings, memory-mapped (read-only): pages load as they are used. A remote
    file is mapped from this process's local copy of it (files.local_copy)."""
    return np.load(files.local_copy(path), mmap_mode="r")


def iter_image_embeddings(directory: str) -> Iterator[tuple[Part, np.ndarray]]:
    for part in list_parts(directory):
        yield part, load_embeddings(part.img_emb)


def read_part_metadata(part: Part, columns: list[str] | None = None) -> pa.Table:
    with files.open_read(part.metadata) as f:
        return pq.read_table(f, columns=columns)


def read_metadata(directory: str, columns: list[str] | None = None) -> pa.Table:
    """All metadata rows of DIR, in embedding order."""
    tables = [read_part_metadata(part, columns) for part in list_parts(directory)]
    if not tables:
        raise FileNotFoundError(f"{directory}: no {METADATA}/metadata_N.parquet (not a scoring output)")
    return pa.concat_tables(tables, promote_options="default")
