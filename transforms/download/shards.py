"""img2dataset's output layout: numbered shards of `.tar` + `.parquet` + `_stats.json`, resumable.

For shard `s` (written `{s:05d}`, more digits past 99999) the output folder holds

    00012.tar         per successful sample: KEY.jpg (or .webp), KEY.txt (the caption), KEY.json
    00012.parquet     EVERY input row of the shard, successes and failures, all input columns
                      plus key, status, error_message, width, height, original_width,
                      original_height, sha256 (the last five null for failures)
    00012_stats.json  counts by status, bytes, seconds

where KEY = `{shard_id:05d}{index:04d}` and index is the row's position in its shard (failures
use up an index too, as in img2dataset), so `000120007` is shard 12's eighth input row.

Completion protocol (what resume relies on), through transforms/files.py, so the folder may be
local or on any Beam filesystem (hdfs://, s3://, gs://):
  * each file is written under a temporary name unique to the attempt (`.NAME.tmp-<attempt>`)
    and committed by a rename: the tar, then the parquet, then the stats file LAST;
  * a shard is FINISHED only when its `_stats.json` exists. A crash mid-shard leaves temporary
    files (or, between commits, a final tar/parquet without stats); `finished_shards` ignores such
    a shard, and the next writer for it redoes it: its commits replace any stale tar/parquet, and
    once its stats are in place it deletes what killed attempts left. Stale finals are replaced
    rather than deleted up front so that two attempts of the same shard running at once (a
    retried or speculative worker) can only write the same bytes over each other, never leave a
    stats file beside a deleted tar; an attempt that finds the stats written when it is about to
    commit gives its own files up.

Determinism: given the same rows in the same order and the same image bytes, a rerun writes a
byte-identical tar (fixed mtime/owner/mode in every member header, JSON with a fixed key order)
and an equal parquet table. Only the stats' timings differ.

The paths, globs and done marker of this layout are defined here and nowhere else (`shard_file`,
`finished_shards`, `finished_files`): every reader (scoring, resume, the report, the progress
line, remove) goes through them. The tar is written directly (`tar_member`, `TAR_END`), byte for byte what `tarfile` writes for these
members but without its per-member Python: a shard holds three members per image.
"""

import json
import re
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from crawl2clip.transforms import files
from crawl2clip.transforms.download.images import OUTPUT_FORMATS, ProcessedImage
from crawl2clip.transforms.schema import TEXT, URL

SUCCESS = "success"

KEY = "key"
STATUS = "status"
ERROR_MESSAGE = "error_message"
WIDTH = "width"
HEIGHT = "height"
ORIGINAL_WIDTH = "original_width"
ORIGINAL_HEIGHT = "original_height"
SHA256 = "sha256"

# Columns the writer adds to every parquet row, in this order. An input column of the same name
# is dropped (the writer's value wins), and `retryable_rows` strips them to give input rows back.
OUTPUT_FIELDS = (
    pa.field(KEY, pa.string(), nullable=False),
    pa.field(STATUS, pa.string(), nullable=False),
    pa.field(ERROR_MESSAGE, pa.string()),
    pa.field(WIDTH, pa.int64()),
    pa.field(HEIGHT, pa.int64()),
    pa.field(ORIGINAL_WIDTH, pa.int64()),
    pa.field(ORIGINAL_HEIGHT, pa.int64()),
    pa.field(SHA256, pa.string()),
)
OUTPUT_COLUMNS = tuple(field.name for field in OUTPUT_FIELDS)

_TAR_MTIME = 0  # fixed, so reruns are byte-identical
_TAR_MODE = 0o444
_TAR_OWNER = "bigdata"  # what webdataset's TarWriter (and so img2dataset) puts there
_TAR_BLOCK = 512
_TAR_RECORD = 20 * _TAR_BLOCK  # tarfile pads the archive to whole records
_TAR_FIXED = {  # the ustar header fields after name and mode that never change here
    "ids": b"0000000\0" * 2,  # uid, gid
    "mtime": b"%011o\0" % _TAR_MTIME,
    "owner": (_TAR_OWNER.encode("ascii").ljust(32, b"\0")) * 2,  # uname, gname
}
TAR_END = b"\0" * (2 * _TAR_BLOCK)  # two zero blocks end the archive

# A shard's files by their suffix, in the order they are committed: the stats file, last, is the
# shard's done marker.
TAR = ".tar"
PARQUET = ".parquet"
STATS = "_stats.json"
SHARD_FILES = (TAR, PARQUET, STATS)
_STATS_RE = re.compile(r"^(\d+)_stats\.json$")


# ---------------------------------------------------------------- tar members


def tar_member(name: str, data: bytes) -> bytes:
    """A regular-file tar member (ustar header, data, padding) with the fixed mode, mtime and
    owner of every member here; `name` must be ASCII and under 100 bytes (keys and extensions)."""
    raw = name.encode("ascii")
    if len(raw) >= 100:
        raise ValueError(f"tar member name too long: {name!r}")
    header = b"".join((
        raw.ljust(100, b"\0"), b"%07o\0" % _TAR_MODE, _TAR_FIXED["ids"], b"%011o\0" % len(data),
        _TAR_FIXED["mtime"], b"        ", b"0", b"\0" * 100, b"ustar\x0000", _TAR_FIXED["owner"],
    )).ljust(_TAR_BLOCK, b"\0")
    checksum = sum(header)  # the checksum field counts as spaces
    header = header[:148] + b"%06o\0 " % checksum + header[156:]
    return header + data + b"\0" * (-len(data) % _TAR_BLOCK)


def tar_end(size_so_far: int) -> bytes:
    """What closes a tar of `size_so_far` bytes: two zero blocks, then zeros to a whole record."""
    return TAR_END + b"\0" * (-(size_so_far + len(TAR_END)) % _TAR_RECORD)


# ---------------------------------------------------------------- shard planning


def shard_key(shard_id: int, index: int) -> str:
    """img2dataset's sample key: 5-digit shard id then 4-digit index within the shard."""
    return f"{shard_id:05d}{index:04d}"


def shard_name(shard_id: int) -> str:
    return f"{shard_id:05d}"


# ---------------------------------------------------------------- the layout, and resume


def shard_file(output_dir: str, shard_id: int, suffix: str) -> str:
    """One of a shard's files: `suffix` is TAR, PARQUET or STATS."""
    return files.join(output_dir, shard_name(shard_id) + suffix)


def stats_path(output_dir: str, shard_id: int) -> str:
    """The shard's `_stats.json`: written last, so its existence marks the shard finished."""
    return shard_file(output_dir, shard_id, STATS)


def finished_shards(output_dir: str) -> set[int]:
    """Ids of the shards whose `_stats.json` exists, the only mark of a finished shard."""
    found = (files.split(path)[1] for path in files.match(files.join(output_dir, "*" + STATS)))
    return {int(m.group(1)) for name in found if (m := _STATS_RE.match(name))}


def finished_files(output_dir: str, suffix: str) -> list[str]:
    """One kind of file (TAR, PARQUET or STATS) of every finished shard, in shard order: what
    readers of the download's output read (a tar or parquet without stats may be stale)."""
    return [shard_file(output_dir, shard_id, suffix) for shard_id in sorted(finished_shards(output_dir))]


def read_stats(output_dir: str, shard_id: int) -> dict[str, Any]:
    return files.read_marker(stats_path(output_dir, shard_id))


def read_shard_table(output_dir: str, shard_id: int, columns: list[str] | None = None) -> pa.Table:
    with files.open_read(shard_file(output_dir, shard_id, PARQUET)) as f:
        return pq.read_table(f, columns=columns)


def retryable_rows(output_dir: str, retryable_statuses: Iterable[str]) -> list[dict[str, Any]]:
    """The input rows (writer's columns stripped) of every finished shard's parquet whose status is
    in retryable_statuses, in shard then key order: the input of `--retry-failed DIR`.

    Unfinished shards are skipped: their parquet, if any, may be stale, and a resumed run redoes
    them anyway.
    """
    wanted = set(retryable_statuses)
    rows: list[dict[str, Any]] = []
    for shard_id in sorted(finished_shards(output_dir)):
        table = read_shard_table(output_dir, shard_id)
        input_columns = [name for name in table.column_names if name not in OUTPUT_COLUMNS]
        for record in table.to_pylist():
            if record[STATUS] in wanted:
                rows.append({name: record[name] for name in input_columns})
    return rows


# ---------------------------------------------------------------- writing


def _as_dict(row: Any) -> dict[str, Any]:
    if isinstance(row, Mapping):
        return dict(row)
    if hasattr(row, "_asdict"):  # NamedTuple rows (schema.CandidateRow)
        return dict(row._asdict())
    raise TypeError(f"a row must be a mapping or a NamedTuple, not {type(row).__name__}")


class ShardWriter:
    """Writes one shard; add rows in input order with `write`, then `close` (or use `with`).

        with ShardWriter(out, shard_id, input_schema=schema) as writer:
            for row in rows:
                try:
                    writer.write(row, process_image(download(row[URL]), spec))
                except ImageRejected as error:
                    writer.write(row, status=error.reason, error_message=error.detail)

    A finished shard (stats present) raises FileExistsError unless overwrite=True, which first
    deletes its stats (so it reads as unfinished until this writer closes). Leaving the `with`
    block on an exception aborts: the temporary files are deleted and nothing final is touched.

    fsync: on a local disk, make each file durable before its rename (remote filesystems do).

    input_schema: Arrow schema of the input columns, so every shard's parquet has the same types
    (inferred from the shard's rows when None: an all-null column then comes out as type null).
    """

    def __init__(
        self,
        output_dir: str,
        shard_id: int,
        output_format: str = "jpg",
        *,
        input_schema: pa.Schema | None = None,
        overwrite: bool = False,
        fsync: bool = True,
    ):
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {tuple(OUTPUT_FORMATS)}, not {output_format!r}")
        if shard_id < 0:
            raise ValueError("shard_id must not be negative")
        self.output_dir = output_dir
        self.shard_id = shard_id
        self.output_format = output_format
        self.input_schema = input_schema
        self._fsync = fsync

        self.tar_path = shard_file(output_dir, shard_id, TAR)
        self.parquet_path = shard_file(output_dir, shard_id, PARQUET)
        self.stats_path = stats_path(output_dir, shard_id)
        if files.marker_exists(self.stats_path):
            if not overwrite:
                raise FileExistsError(f"shard {shard_name(shard_id)} is already finished: {self.stats_path}")
            files.delete(self.stats_path)

        self._tar = files.PendingFile(self.tar_path, durable=fsync)  # written as rows come
        self._tar_size = 0
        self._records: list[dict[str, Any]] = []
        self._status_counts: Counter = Counter()
        self._image_bytes = 0
        self._start = time.time()
        self._start_monotonic = time.monotonic()
        self._closed = False

    # -- context manager

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    # -- writing

    @property
    def count(self) -> int:
        return len(self._records)

    def write(
        self,
        row: Any,
        image: ProcessedImage | None = None,
        *,
        status: str = SUCCESS,
        error_message: str | None = None,
    ) -> str:
        """Records the next input row of the shard; returns its key.

        A success needs the processed image (its bytes go to the tar with the caption and JSON);
        any other status is an error category, written to the parquet only.
        """
        if self._closed:
            raise ValueError("the shard writer is closed")
        if status == SUCCESS and image is None:
            raise ValueError("a successful row needs its ProcessedImage")
        if status != SUCCESS and image is not None:
            raise ValueError(f"a row with status {status!r} cannot carry an image")
        columns = {name: value for name, value in _as_dict(row).items() if name not in OUTPUT_COLUMNS}
        key = shard_key(self.shard_id, len(self._records))
        record = {
            **columns,
            KEY: key,
            STATUS: status,
            ERROR_MESSAGE: error_message,
            WIDTH: image.width if image else None,
            HEIGHT: image.height if image else None,
            ORIGINAL_WIDTH: image.original_width if image else None,
            ORIGINAL_HEIGHT: image.original_height if image else None,
            SHA256: image.sha256 if image else None,
        }
        if image is not None:
            caption = columns.get(TEXT)
            sample_json = {**record, "url": columns.get(URL)}
            self._add_member(f"{key}.{self.output_format}", image.data)
            self._add_member(f"{key}.txt", ("" if caption is None else str(caption)).encode("utf-8"))
            self._add_member(
                f"{key}.json", json.dumps(sample_json, ensure_ascii=False, default=str).encode("utf-8")
            )
            self._image_bytes += len(image.data)
        self._records.append(record)
        self._status_counts[status] += 1
        return key

    def _add_member(self, name: str, data: bytes) -> None:
        member = tar_member(name, data)
        self._tar.file.write(member)
        self._tar_size += len(member)

    # -- finishing

    def table(self) -> pa.Table:
        """The shard's parquet table: input columns then OUTPUT_COLUMNS, one row per input row."""
        if self.input_schema is not None:
            input_fields = [f for f in self.input_schema if f.name not in OUTPUT_COLUMNS]
        else:
            names: dict[str, None] = {}  # first-seen order
            for record in self._records:
                names.update((name, None) for name in record if name not in OUTPUT_COLUMNS)
            rows = [{name: record.get(name) for name in names} for record in self._records]
            input_fields = list(pa.Table.from_pylist(rows).schema) if names else []
        schema = pa.schema(input_fields + list(OUTPUT_FIELDS))
        return pa.Table.from_pylist(
            [{field.name: record.get(field.name) for field in schema} for record in self._records],
            schema=schema,
        )

    def stats(self) -> dict[str, Any]:
        counts = dict(sorted(self._status_counts.items()))
        successes = counts.get(SUCCESS, 0)
        return {
            "shard_id": self.shard_id,
            "count": self.count,
            "successes": successes,
            "failures": self.count - successes,
            "status_counts": counts,
            "image_bytes": self._image_bytes,
            "tar_bytes": self._tar_size,
            "start_time": self._start,
            "end_time": time.time(),
            "seconds": time.monotonic() - self._start_monotonic,
        }

    def close(self) -> dict[str, Any]:
        """Finishes the shard: tar, then parquet, then stats committed; returns the stats."""
        if self._closed:
            raise ValueError("the shard writer is closed")
        self._closed = True
        try:
            if files.marker_exists(self.stats_path):  # another attempt finished it meanwhile
                self._tar.discard()
                return read_stats(self.output_dir, self.shard_id)
            end = tar_end(self._tar_size)
            self._tar.file.write(end)
            self._tar_size += len(end)
            self._tar.commit()
            files.write_atomic(self.parquet_path, lambda out: pq.write_table(self.table(), out), self._fsync)
            stats = self.stats()
            files.write_marker(self.stats_path, stats, self._fsync)  # LAST: from now on the shard is finished
        except BaseException:
            self._tar.discard()
            raise
        for path in (self.tar_path, self.parquet_path, self.stats_path):  # what killed attempts left
            for leftover in files.temporaries(path):
                files.delete(leftover)
        return stats

    def abort(self) -> None:
        """Gives the shard up: deletes the temporary files, touches nothing final."""
        if self._closed:
            return
        self._closed = True
        self._tar.discard()
