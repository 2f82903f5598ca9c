"""Applying a kept list: the pruned embeddings layout, and pruned webdataset shards.

For every part N of the scoring output, the kept rows (kept.parquet's `part`, `row`; their
`uid` must match, so a kept list is never applied to the wrong folder) are written as part N of
the pruned layout. With a download folder, each download shard named in the metadata's `shard`
column is copied member by member (bytes untouched), keeping only the kept keys, to
`PRUNED_DIR/shards/NNNNN.tar` beside its parquet rows, and the pruned metadata's `shard` points
there. Every file is read and written through transforms/files.py (committed whole), so each
folder may be local or on any Beam filesystem.
"""

import os
import tarfile

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from crawl2clip.transforms import files
from crawl2clip.transforms.download.shards import KEY, PARQUET, TAR
from crawl2clip.transforms.embeddings import Part, load_embeddings, write_part
from crawl2clip.transforms.errors import ERRORS, count_error, counter, error_record
from crawl2clip.transforms.tables import column_names, read_table, write_table
from crawl2clip.transforms.schema import UID
from crawl2clip.transforms.score.write import SHARD

STAGE = "prune_apply"
SHARDS = "shards"  # PRUNED_DIR/shards/: the pruned copies of the download shards


def kept_rows_by_part(kept_path: str) -> dict[int, tuple[np.ndarray, list | None]]:
    """part number -> (kept rows ascending, their uids or None when kept.parquet has none)."""
    names = column_names(kept_path)
    table = read_table(kept_path, columns=["part", "row"] + ([UID] if UID in names else []))
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
    """Copies the members of `source` whose sample key is in `keys` into `target` (committed
    whole, any filesystem); returns how many samples it holds."""
    written = set()

    def copy(out) -> None:
        # Stream modes: the source is read once, front to back, and the target written the same way.
        with files.open_read(source) as raw, tarfile.open(fileobj=raw, mode="r|*") as tar_in, \
                tarfile.open(fileobj=out, mode="w|") as tar_out:
            for member in tar_in:
                key = _member_key(member.name)
                if member.isfile() and key in keys:
                    tar_out.addfile(member, tar_in.extractfile(member))
                    written.add(key)

    files.write_atomic(target, copy)
    return len(written)


def _pruned_shard_path(output_dir: str, name: str) -> str:
    target = files.join(output_dir, SHARDS, name)
    return os.path.abspath(target) if files.is_local(target) else target  # the metadata names it


def _prune_shards(metadata: pa.Table, shards_dir: str, output_dir: str) -> tuple[pa.Table, list[dict]]:
    """Writes the pruned copy of every shard the rows name; returns the rows pointing at the copies."""
    errors = []
    targets = []
    shard_paths = metadata[SHARD].to_pylist()
    keys = metadata[KEY].to_pylist()
    for shard in sorted(set(shard_paths)):
        name = files.split(shard)[1]
        source = files.join(shards_dir, name)
        target = _pruned_shard_path(output_dir, name)
        wanted = {k for s, k in zip(shard_paths, keys) if s == shard}
        if not files.exists(source):
            errors.append(count_error(error_record(STAGE, "missing_shard", source=source,
                                                   detail=f"{len(wanted)} kept samples")))
            continue
        found = filter_shard(source, wanted, target)
        download_rows = source[: -len(TAR)] + PARQUET
        if files.exists(download_rows):
            rows = read_table(download_rows)
            rows = rows.filter(pc.is_in(rows[KEY], value_set=pa.array(sorted(wanted), pa.string())))
            write_table(target[: -len(TAR)] + PARQUET, rows)
        if found < len(wanted):
            errors.append(count_error(error_record(
                STAGE, "missing_samples", source=source,
                detail=f"{len(wanted) - found} of {len(wanted)} kept keys not in the tar")))
        counter(STAGE, "shards").inc()
        targets.append((shard, target))
    renamed = dict(targets)
    paths = [renamed.get(s, s) for s in shard_paths]
    index = metadata.column_names.index(SHARD)
    return metadata.set_column(index, SHARD, pa.array(paths, pa.string())), errors


def apply_part(part: Part, rows: np.ndarray, uids: list | None, output_dir: str,
               shards_dir: str | None = None) -> list[dict]:
    """Writes part N of the pruned layout (and its pruned shards); returns error records."""
    metadata = read_table(part.metadata)
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


class _ApplyPart(beam.DoFn):
    def __init__(self, output_dir: str, shards_dir: str | None):
        self.output_dir, self.shards_dir = output_dir, shards_dir

    def process(self, item):
        part, (rows, uids) = item
        for error in apply_part(part, rows, uids, self.output_dir, self.shards_dir):
            yield beam.pvalue.TaggedOutput(ERRORS, error)


class WritePrunedParts(beam.PTransform):
    """(scoring output part, (kept rows, their uids)) -> the pruned parts (and shards) written,
    one part per element, spread over the workers; returns the error records."""

    def __init__(self, output_dir: str, shards_dir: str | None):
        super().__init__()
        self.output_dir, self.shards_dir = output_dir, shards_dir

    def expand(self, kept_parts):
        return (kept_parts
                | "SpreadParts" >> beam.Reshuffle()
                | "WriteParts" >> beam.ParDo(_ApplyPart(self.output_dir, self.shards_dir)).with_outputs(ERRORS)
                )[ERRORS]
