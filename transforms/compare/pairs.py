"""The downloaded pairs of a run, and its held-out split, chosen before any variant is built.

Every variant is a subset of the download stage's successes, so the held-out pairs are taken out
of those first. A pair is held out by a seeded hash of its image's sha256 (its uid when the row
has none): every caption of one image lands on the same side, so no variant trains on a held-out
image under another caption. Re-encoded near-duplicates have other bytes and can still fall on
both sides. At most `max_images` images are held out (those with the smallest hashes; the rest
go back to training), so retrieval is measured among a bounded number of candidates, as on
COCO's 5,000 test images.
"""

import hashlib
import os

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crawl2clip.transforms.download.shards import KEY, PARQUET, STATUS, SUCCESS, TAR, finished_shards, shard_file
from crawl2clip.transforms.errors import error_record
from crawl2clip.transforms.schema import UID

STAGE = "compare"
SHA256 = "sha256"
TEXT = "TEXT"
SHARD = "shard"  # the download tar a row's image is in
COLUMNS = (UID, KEY, TEXT, SHA256)


def group_hash(group: str, seed: int) -> float:
    """A seeded hash of `group` (an image's sha256) in [0, 1), the same on every machine and run."""
    digest = hashlib.blake2b(f"{seed}:{group}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2 ** 64


def is_held_out(group: str, seed: int, fraction: float) -> bool:
    """Whether the pairs of `group` fall in the held-out fraction (before any cap)."""
    return group_hash(group, seed) < fraction


def read_downloaded(download_dir: str) -> tuple[pa.Table, list[dict]]:
    """Every success of the finished download shards: uid, key, TEXT, sha256 and the tar it is
    in (`shard`), in shard and key order; error records for shards that cannot be read."""
    tables, errors = [], []
    for number in sorted(finished_shards(download_dir)):
        parquet = shard_file(download_dir, number, PARQUET)
        tar = os.path.abspath(shard_file(download_dir, number, TAR))
        try:
            table = pq.read_table(parquet, columns=list(COLUMNS) + [STATUS])
        except (OSError, pa.ArrowException) as exc:
            errors.append(error_record(STAGE, "unreadable_shard", source=parquet, offset=number,
                                       detail=f"{type(exc).__name__}: {exc}"))
            continue
        table = table.filter(pc.equal(table[STATUS], SUCCESS)).select(list(COLUMNS)).sort_by(KEY)
        if table.num_rows and not os.path.isfile(tar):
            errors.append(error_record(STAGE, "missing_shard", source=tar, offset=number,
                                       detail=f"{table.num_rows} successes, no tar"))
            continue
        tables.append(table.append_column(SHARD, pa.array([tar] * table.num_rows, pa.string())))
    if not tables:
        schema = pa.schema([(name, pa.string()) for name in (*COLUMNS, SHARD)])
        return schema.empty_table(), errors
    return pa.concat_tables(tables), errors


def split_held_out(pairs: pa.Table, seed: int, fraction: float,
                   max_images: int | None = None) -> tuple[pa.Table, pa.Table]:
    """(training pool, held-out pairs) of `pairs`: the images whose hash is under `fraction`,
    at most `max_images` of them (the smallest hashes), with every pair of each."""
    groups = [sha or uid for sha, uid in zip(pairs[SHA256].to_pylist(), pairs[UID].to_pylist())]
    hashes = {group: group_hash(group, seed) for group in set(groups)}
    held = sorted((h, group) for group, h in hashes.items() if h < fraction)
    chosen = {group for _, group in held[:max_images]}
    mask = pa.array([group in chosen for group in groups], pa.bool_())
    return pairs.filter(pc.invert(mask)), pairs.filter(mask)
