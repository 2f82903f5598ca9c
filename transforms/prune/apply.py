"""Applying a kept list: the pruned embeddings layout, and pruned webdataset shards.

For every part N of the scoring output, the kept rows (kept.parquet's `part`, `row`; their
`uid` must match, so a kept list is never applied to the wrong folder) are written as part N of
the pruned layout. With a download folder, each download shard named in the metadata's `shard`
column is copied member by member (bytes untouched), keeping only the kept keys, to
`PRUNED_DIR/shards/NNNNN.tar` beside its parquet rows, and the pruned metadata's `shard` points
there.
"""

import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crawl2clip.transforms.embeddings import Part, load_embeddings, write_part
from crawl2clip.transforms.errors import count_error, counter, error_record
from crawl2clip.transforms.schema import UID

STAGE = "prune_apply"
SHARDS = "shards"
SHARD_COLUMN = "shard"
KEY_COLUMN = "key"


def kept_rows_by_part(kept_path: str) -> dict[int, tuple[np.ndarray, list | None]]:
    """part number -> (kept rows ascending, their uids or None when kept.parquet has none)."""
    names = pq.read_schema(kept_path).names
    table = pq.read_table(kept_path, columns=["part", "row"] + ([UID] if UID in names else []))
    table = table.sort_by([("part", "ascending"), ("row", "ascending")])
    parts, rows = table["part"].to_numpy(), table["row"].to_numpy()
    uids = table[UID].to_pylist() if UID in names else None
    bounds = [0, *(np.flatnonzero(np.diff(parts)) + 1).tolist(), len(parts)]
    return {int(parts[a]): (rows[a:b], uids[a:b] if uids is not None else None)
            for a, b in zip(bounds, bounds[1:]) if b > a}


def _member_key(name: str) -> str:
    base = os.path.basename(name)
    return base.split(".", 1)[0]


def filter_shard(source: str, keys: set[str], target: str) -> int:
    """Copies the members of `source` whose sample key is in `keys` into `target`; returns how
    many samples it holds."""
    os.makedirs(os.path.dirname(target), exist_ok=True)
    temporary = f"{target}.{os.getpid()}.tmp"
    written = set()
    with tarfile.open(source) as tar_in, tarfile.open(temporary, "w") as tar_out:
        for member in tar_in:
            key = _member_key(member.name)
            if member.isfile() and key in keys:
                tar_out.addfile(member, tar_in.extractfile(member))
                written.add(key)
    os.replace(temporary, target)
    return len(written)


def _prune_shards(metadata: pa.Table, shards_dir: str, output_dir: str) -> tuple[pa.Table, list[dict]]:
    """Writes the pruned copy of every shard the rows name; returns the rows pointing at the copies."""
    errors = []
    targets = []
    shard_paths = metadata[SHARD_COLUMN].to_pylist()
    keys = metadata[KEY_COLUMN].to_pylist()
    for shard in sorted(set(shard_paths)):
        name = os.path.basename(shard)
        source = os.path.join(shards_dir, name)
        target = os.path.abspath(os.path.join(output_dir, SHARDS, name))
        wanted = {k for s, k in zip(shard_paths, keys) if s == shard}
        if not os.path.isfile(source):
            errors.append(count_error(error_record(STAGE, "missing_shard", source=source,
                                                   detail=f"{len(wanted)} kept samples")))
            continue
        found = filter_shard(source, wanted, target)
        download_rows = source[: -len(".tar")] + ".parquet"
        if os.path.isfile(download_rows):
            rows = pq.read_table(download_rows)
            rows = rows.filter(pc.is_in(rows[KEY_COLUMN], value_set=pa.array(sorted(wanted), pa.string())))
            pq.write_table(rows, target[: -len(".tar")] + ".parquet")
        if found < len(wanted):
            errors.append(count_error(error_record(
                STAGE, "missing_samples", source=source,
                detail=f"{len(wanted) - found} of {len(wanted)} kept keys not in the tar")))
        counter(STAGE, "shards").inc()
        targets.append((shard, target))
    renamed = dict(targets)
    paths = [renamed.get(s, s) for s in shard_paths]
    index = metadata.column_names.index(SHARD_COLUMN)
    return metadata.set_column(index, SHARD_COLUMN, pa.array(paths, pa.string())), errors


def apply_part(part: Part, rows: np.ndarray, uids: list | None, output_dir: str,
               shards_dir: str | None = None) -> list[dict]:
    """Writes part N of the pruned layout (and its pruned shards); returns error records."""
    metadata = pq.read_table(part.metadata)
    if len(rows) and rows.max() >= metadata.num_rows:
        return [count_error(error_record(STAGE, "kept_mismatch", source=part.metadata,
                                         detail=f"kept row {int(rows.max())} of a part with {metadata.num_rows} rows"))]
    metadata = metadata.take(pa.array(rows, pa.int64()))
    if uids is not None and UID in metadata.column_names and metadata[UID].to_pylist() != uids:
        return [count_error(error_record(STAGE, "kept_mismatch", source=part.metadata,
                                         detail="the kept uids are not those of this folder's rows"))]
    errors = []
    if shards_dir is not None:
        metadata, errors = _prune_shards(metadata, shards_dir, output_dir)
    img, text = load_embeddings(part.img_emb), load_embeddings(part.text_emb)
    write_part(output_dir, part.number, np.asarray(img[rows]), np.asarray(text[rows]), metadata)
    del img, text
    counter(STAGE, "rows_kept").inc(len(rows))
    counter(STAGE, "parts").inc()
    return errors
