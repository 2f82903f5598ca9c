"""Reading the download stage's output: one element per finished download shard; and the shape of
a scored shard (no torch here: writing and resuming need it without the models).

A shard `N` is finished when `NNNNN_stats.json` exists (transforms/download/shards.py); its
parquet lists every input row with a `status`, and its tar holds `KEY.jpg`/`KEY.webp` for the
successes. Only successes are scored; a success whose image is missing from the tar is an error.
Both are read through the download layout's definitions, so the folder may be on any Beam
filesystem.
"""

import os
import tarfile
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crawl2clip.transforms.download.images import OUTPUT_FORMATS
from crawl2clip.transforms import files
from crawl2clip.transforms.download.shards import KEY, STATUS, SUCCESS, TAR, finished_shards, read_shard_table, shard_file
from crawl2clip.transforms.errors import error_record

STAGE = "score"
# The stage's error reasons (`score:error_<reason>` counters)
UNREADABLE_SHARD = "unreadable_shard"
MISSING_IMAGE = "missing_image"
UNDECODABLE = "undecodable_image"  # read from the tar, but not an image the decoders take
IMAGE_EXTENSIONS = tuple(OUTPUT_FORMATS)  # what the downloader writes: jpg, webp


@dataclass
class ShardPairs:
    """The scorable pairs of one download shard: `table` (parquet rows, successes whose image was
    found) aligned with `images` (their encoded bytes). `read_failed` marks a shard that could not
    be read at all: its errors are written, but no part, so a later run tries it again."""
    number: int
    tar_path: str
    table: pa.Table
    images: list[bytes]
    errors: list[dict] = field(default_factory=list)
    read_failed: bool = False

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class ScoredShard:
    """A shard's pairs whose image decoded (`table`), with aligned float32 unit-norm embeddings and
    `similarity`; `tags` (punsafe, pwatermark, aesthetic, ptoxic: None where not computed) and
    `drop_reasons` are filled by the later steps. `errors` holds the shard's error records so far;
    `images` the rows' encoded images when a later step needs the pixels (the watermark detector)."""
    number: int
    tar_path: str
    table: pa.Table
    img_emb: np.ndarray
    text_emb: np.ndarray
    similarity: np.ndarray
    errors: list[dict] = field(default_factory=list)
    read_failed: bool = False
    tags: dict[str, np.ndarray | None] = field(default_factory=dict)
    drop_reasons: list[str | None] | None = None
    images: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return self.table.num_rows


def download_shards(download_dir: str) -> list[int]:
    """The finished shards of a download folder, in increasing number."""
    return sorted(finished_shards(download_dir))


def _tar_images(tar_path: str, wanted: set[str]) -> dict[str, bytes]:
    images = {}
    with files.open_read(tar_path) as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
        for member in tar:
            key, _, extension = member.name.rpartition(".")
            if member.isfile() and extension in IMAGE_EXTENSIONS and key in wanted:
                images[key] = tar.extractfile(member).read()
    return images


def read_shard(download_dir: str, number: int) -> ShardPairs:
    """Reads shard `number`: its successful rows and their image bytes, in key order."""
    tar_path = shard_file(download_dir, number, TAR)
    tar_path = os.path.abspath(tar_path) if files.is_local(tar_path) else tar_path
    try:
        table = read_shard_table(download_dir, number)
        table = table.filter(pc.equal(table[STATUS], SUCCESS)).sort_by(KEY)
        keys = table[KEY].to_pylist()
        found = _tar_images(tar_path, set(keys))
    except (OSError, tarfile.TarError, pa.ArrowException, KeyError) as exc:
        record = error_record(STAGE, UNREADABLE_SHARD, source=tar_path, offset=number,
                              detail=f"{type(exc).__name__}: {exc}")
        return ShardPairs(number, tar_path, pa.table({}), [], [record], read_failed=True)
    present = [key in found for key in keys]
    urls = table["URL"].to_pylist() if "URL" in table.column_names else [""] * len(keys)
    errors = [error_record(STAGE, MISSING_IMAGE, source=tar_path, offset=number, url=url or "",
                           detail=f"{key}: a success in the parquet without an image in the tar")
              for key, url, ok in zip(keys, urls, present) if not ok]
    table = table.filter(pa.array(present, pa.bool_())) if errors else table
    return ShardPairs(number, tar_path, table, [found[key] for key in keys if key in found], errors)
