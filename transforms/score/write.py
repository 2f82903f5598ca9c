"""Writing one scored shard, and the score stage's layout beside the embeddings parts:

    DIR/metadata/, img_emb/, text_emb/   the kept pairs: part N (transforms/embeddings.py)
    DIR/dropped/dropped_N.parquet        the pairs set aside, with their drop_reason
    DIR/errors/errors_N.parquet          the shard's error rows (none: no file)
    DIR/counters/counters_N.json         what the run counted for the shard (counts.py)
    DIR/scoring.json                     the run's settings (settings.py)

N is the download shard's number. The part's metadata file is committed last (after errors,
dropped, counters and the arrays), so a shard counts as scored exactly when
`metadata/metadata_N.parquet` exists: a rerun into the same folder skips it, and what it reads
back of it (its counters) is whole. Every path goes through transforms/files.py, so DIR may be
on any Beam filesystem.
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crawl2clip.transforms import files
from crawl2clip.transforms.download.shards import KEY, ORIGINAL_HEIGHT, ORIGINAL_WIDTH, OUTPUT_COLUMNS, SHA256
from crawl2clip.transforms.embeddings import part_paths, write_part
from crawl2clip.transforms.errors import ERRORS_FOLDER
from crawl2clip.transforms.extract.rules import pair_uid
from crawl2clip.transforms.schema import ERROR_SCHEMA, LANGUAGE, SPLIT, TEXT, UID, URL
from crawl2clip.transforms.score.counts import part_counters, unreadable_counters
from crawl2clip.transforms.score.settings import AESTHETIC, TAG_COLUMNS, TOXIC_COLUMN, UNSAFE, WATERMARK
from crawl2clip.transforms.score.shards import ScoredShard

SHARD = "shard"  # the download tar holding the image (a local one by its absolute path)
WIDTH = "WIDTH"  # LAION's: the original image's size
HEIGHT = "HEIGHT"
SIMILARITY = "similarity"
HASH = "hash"
DROP_REASON = "drop_reason"
DROPPED = "dropped"
COUNTERS_DIR = "counters"

# The LAION columns and ours, first and in this order; the input's other columns follow.
METADATA_FIELDS = (
    pa.field(KEY, pa.string()),
    pa.field(SHARD, pa.string()),
    pa.field(URL, pa.string()),
    pa.field(TEXT, pa.string()),
    pa.field(WIDTH, pa.int64()),
    pa.field(HEIGHT, pa.int64()),
    pa.field(LANGUAGE, pa.string()),
    pa.field(SPLIT, pa.string()),
    pa.field(SIMILARITY, pa.float32()),
    pa.field(TAG_COLUMNS[UNSAFE], pa.float32()),
    pa.field(TAG_COLUMNS[WATERMARK], pa.float32()),
    pa.field(TOXIC_COLUMN, pa.float32()),
    pa.field(TAG_COLUMNS[AESTHETIC], pa.float32()),
    pa.field(HASH, pa.int64()),
    pa.field(UID, pa.string()),
    pa.field(SHA256, pa.string()),
)
_NAMED = {f.name for f in METADATA_FIELDS}


def uid_hash(uid: str) -> int:
    """LAION's int64 `hash` column, from the first 8 bytes of the uid."""
    return int.from_bytes(bytes.fromhex(uid[:16]), "big", signed=True)


def _nullable(values: np.ndarray | None, count: int) -> pa.Array:
    """A tag's float32 column: null everywhere when it was not computed, null where NaN."""
    if values is None:
        return pa.nulls(count, pa.float32())
    values = np.asarray(values, np.float32)
    return pa.array(values, pa.float32(), mask=np.isnan(values))


def metadata_table(shard: ScoredShard) -> pa.Table:
    """One row per scored pair, aligned with the shard's embeddings."""
    table, count = shard.table, len(shard)

    def column(name: str) -> list:
        return table[name].to_pylist() if name in table.column_names else [None] * count

    uids = [uid or pair_uid(str(url), str(text)) for uid, url, text in zip(column(UID), column(URL), column(TEXT))]
    values = {
        KEY: column(KEY), SHARD: [shard.tar_path] * count, URL: column(URL), TEXT: column(TEXT),
        WIDTH: column(ORIGINAL_WIDTH), HEIGHT: column(ORIGINAL_HEIGHT), LANGUAGE: column(LANGUAGE),
        SPLIT: column(SPLIT), SIMILARITY: shard.similarity,
        **{name: _nullable(shard.tags.get(name), count) for name in (*TAG_COLUMNS.values(), TOXIC_COLUMN)},
        HASH: [uid_hash(uid) for uid in uids], UID: uids, SHA256: column(SHA256),
    }
    named = [values[f.name] if isinstance(values[f.name], pa.Array) else pa.array(values[f.name], f.type)
             for f in METADATA_FIELDS]
    carried = [name for name in table.column_names if name not in _NAMED and name not in OUTPUT_COLUMNS]
    return pa.Table.from_arrays(named + [table[name] for name in carried],
                                schema=pa.schema(list(METADATA_FIELDS) + [table.schema.field(n) for n in carried]))


def _write_table(table: pa.Table, path: str) -> None:
    files.write_atomic(path, lambda f: pq.write_table(table, f))


def dropped_path(output_dir: str, number: int) -> str:
    return files.join(output_dir, DROPPED, f"{DROPPED}_{number}.parquet")


def errors_path(output_dir: str, number: int) -> str:
    return files.join(output_dir, ERRORS_FOLDER, f"errors_{number}.parquet")


def counters_path(output_dir: str, number: int) -> str:
    return files.join(output_dir, COUNTERS_DIR, f"counters_{number}.json")


def is_scored(output_dir: str, number: int) -> bool:
    return files.exists(part_paths(output_dir, number).metadata)


def read_counters(output_dir: str, number: int) -> dict[str, int]:
    """The counters kept with scored part `number`."""
    path = counters_path(output_dir, number)
    if not files.exists(path):
        raise ValueError(f"{output_dir}: part {number} has no {COUNTERS_DIR}/counters_{number}.json (scored by an "
                         "earlier version, which did not keep them): score into a new --output")
    return files.read_marker(path)


def write_scored_shard(output_dir: str, shard: ScoredShard, watermark_model: bool = False) -> dict[str, int]:
    """Writes the shard's errors, dropped pairs, counters, then its part (metadata last); returns
    its counters (`watermark_model`: it went through the watermark detector). A shard that could
    not be read gets its errors only: no part, so a later run tries it again."""
    errors = errors_path(output_dir, shard.number)
    if shard.errors:
        _write_table(pa.Table.from_pylist(shard.errors, schema=ERROR_SCHEMA), errors)
    else:
        files.delete(errors)  # an earlier attempt's, which is no longer true
    if shard.read_failed:
        return unreadable_counters(shard)
    metadata = metadata_table(shard)
    reasons = shard.drop_reasons if shard.drop_reasons is not None else [None] * len(shard)
    kept = np.array([reason is None for reason in reasons], bool)
    dropped = metadata.filter(pa.array(~kept)).append_column(
        DROP_REASON, pa.array([r for r in reasons if r is not None], pa.string()))
    _write_table(dropped, dropped_path(output_dir, shard.number))
    counts = part_counters(shard, reasons, watermark_model)
    files.write_marker(counters_path(output_dir, shard.number), counts)
    write_part(output_dir, shard.number, shard.img_emb[kept], shard.text_emb[kept], metadata.filter(pa.array(kept)))
    return counts
