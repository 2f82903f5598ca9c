"""A selection of downloaded pairs as webdataset shards, for open_clip_train's `--train-data`.

Each download shard that holds selected pairs gives one shard, numbered from 00000 in download
order, so the set reads as one brace pattern (`DIR/{00000..00041}.tar`); members are copied byte
for byte by prune-apply's shard filter. `rows.parquet` lists what was written. Each file is
committed whole (transforms/files.py); OUT_DIR is local, as open_clip_train reads it.
"""

import os
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq

from crawl2clip.transforms import files
from crawl2clip.transforms.compare.pairs import SHARD, STAGE
from crawl2clip.transforms.download.shards import KEY, shard_name
from crawl2clip.transforms.errors import error_record
from crawl2clip.transforms.prune.apply import filter_shard

ROWS = "rows.parquet"
TRAIN_SHARD = "train_shard"  # the written shard a row is in


def write_shards(rows: pa.Table, out_dir: str) -> tuple[pa.Table, list[dict]]:
    """Writes the pairs of `rows` (pairs.py's columns) as OUT_DIR/NNNNN.tar and OUT_DIR/rows.parquet;
    returns the rows written (with `train_shard`) and error records for pairs a tar lacked."""
    written, errors = [], []
    by_source: dict[str, list[int]] = {}
    for index, source in enumerate(rows[SHARD].to_pylist()):
        by_source.setdefault(source, []).append(index)
    for source in sorted(by_source, key=os.path.basename):
        mine = rows.take(pa.array(by_source[source], pa.int64()))
        keys = set(mine[KEY].to_pylist())
        target = os.path.join(out_dir, f"{shard_name(len(written))}.tar")
        try:
            found = filter_shard(source, keys, target)
        except (OSError, tarfile.TarError) as exc:  # nothing is left: the shard is committed whole or not at all
            errors.append(error_record(STAGE, "unreadable_shard", source=source,
                                       detail=f"{len(keys)} selected pairs skipped: {type(exc).__name__}: {exc}"))
            continue
        if found < len(keys):
            errors.append(error_record(STAGE, "missing_samples", source=source,
                                       detail=f"{len(keys) - found} of {len(keys)} selected keys not in the tar"))
        if found == 0:
            files.delete(target)
            continue
        present = _keys_in(target)
        mine = mine.filter(pa.array([k in present for k in mine[KEY].to_pylist()], pa.bool_()))
        written.append(mine.append_column(TRAIN_SHARD, pa.array([target] * mine.num_rows, pa.string())))
    table = pa.concat_tables(written) if written else \
        rows.schema.append(pa.field(TRAIN_SHARD, pa.string())).empty_table()
    files.write_atomic(os.path.join(out_dir, ROWS), lambda f: pq.write_table(table, f))
    return table, errors


def _keys_in(tar_path: str) -> set[str]:
    with tarfile.open(tar_path) as tar:
        return {os.path.basename(name).split(".", 1)[0] for name in tar.getnames()}


def brace_pattern(out_dir: str, count: int) -> str:
    """The brace pattern open_clip_train (and webdataset) expand to shards 0 .. count-1."""
    if count == 1:
        return os.path.join(out_dir, f"{shard_name(0)}.tar")
    return os.path.join(out_dir, f"{{{shard_name(0)}..{shard_name(count - 1)}}}.tar")
