"""Reads records from web archive files: WARC (per-record gzip, uncompressed or one gzip stream),
ARC, and WAT (which is WARC holding JSON metadata records).

`iter_archive` yields `ArchiveRecord`s and `ArchiveError`s and never raises for bad data: a broken
gzip member or a record with a bad header becomes an `ArchiveError` and reading resumes at the
next gzip member (or WARC record) that parses, so one bad byte does not cost the rest of the file.
"""

import io
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from fastwarc.warc import ArchiveIterator as FastWarcIterator
from warcio.archiveiterator import ArchiveIterator as WarcioIterator

GZIP_MAGIC = b"\x1f\x8b"
_SNIFF_BYTES = 64
_RESYNC_CHUNK = 1 << 20


@dataclass(slots=True)
class ArchiveRecord:
    source: str
    offset: int  # gzip member start (compressed files) or record start (uncompressed)
    record_type: str  # WARC-Type: response, resource, metadata, revisit, request, ...
    target_uri: str
    content_type: str  # the WARC record's Content-Type, e.g. application/http; msgtype=response
    block: bytes  # the record's content block (HTTP message, JSON, ...)
    warc_truncated: str  # the WARC-Truncated header: the crawler cut the payload on purpose


@dataclass(slots=True)
class ArchiveError:
    source: str
    offset: int
    reason: str
    detail: str


OpenFn = Callable[[str], BinaryIO]

# Record types whose block is never read: skipping them costs nothing but a header parse.
TYPES_WITH_CONTENT = frozenset({"response", "resource", "metadata"})


def sniff_format(head: bytes) -> str:
    """'warc', 'arc' or 'unknown', from the first bytes of the (decompressed) file."""
    if head.startswith(b"WARC/"):
        return "warc"
    if head.startswith(b"filedesc://"):
        return "arc"
    return "unknown"


def _decompressed_head(raw_head: bytes) -> bytes:
    if not raw_head.startswith(GZIP_MAGIC):
        return raw_head
    try:
        return zlib.decompressobj(wbits=31).decompress(raw_head, _SNIFF_BYTES)
    except zlib.error:
        return b""


def iter_archive(path: str, open_fn: OpenFn) -> Iterator[ArchiveRecord | ArchiveError]:
    """Every record of the archive at `path`, opened with `open_fn` (a seekable binary stream)."""
    try:
        stream = open_fn(path)
        raw_head = stream.read(4096)
        stream.seek(0)
    except Exception as exc:  # any filesystem's error: missing, permission, network
        yield ArchiveError(path, -1, "unreadable_file", f"{type(exc).__name__}: {exc}")
        return
    with stream:
        kind = sniff_format(_decompressed_head(raw_head))
        if kind == "warc":
            yield from _iter_warc(path, stream, compressed=raw_head.startswith(GZIP_MAGIC))
        elif kind == "arc":
            yield from _iter_arc(path, stream)
        else:
            yield ArchiveError(path, 0, "unknown_format", f"starts with {raw_head[:16]!r}")


def _iter_warc(path: str, stream: BinaryIO, compressed: bool) -> Iterator[ArchiveRecord | ArchiveError]:
    position = 0
    while True:
        stream.seek(position)
        last_offset = position - 1
        try:
            for record in FastWarcIterator(stream, parse_http=False):
                last_offset = record.stream_pos
                item = _warc_record(path, record)
                if item is not None:
                    yield item
            return
        except Exception as exc:  # fastwarc raises OSError/ValueError subclasses on bad data
            # The failure is in the member (or record) after the last one that parsed.
            bad_offset = _next_start(stream, last_offset + 1, compressed)
            yield ArchiveError(path, bad_offset if bad_offset is not None else last_offset + 1,
                               "corrupt_record", f"{type(exc).__name__}: {exc}")
            resume = None if bad_offset is None else _next_start(stream, bad_offset + 1, compressed)
            if resume is None:
                return
            position = resume


def _warc_record(path: str, record) -> ArchiveRecord | ArchiveError | None:
    headers = record.headers
    offset = record.stream_pos
    record_type = headers.get("WARC-Type")
    declared = headers.get("Content-Length")
    if record_type is None or declared is None:
        return ArchiveError(path, offset, "bad_record_header", "missing WARC-Type or Content-Length")
    if record_type not in TYPES_WITH_CONTENT:
        return ArchiveRecord(path, offset, record_type, headers.get("WARC-Target-URI", ""), "", b"", "")
    block = record.reader.read()
    if len(block) < record.content_length:
        return ArchiveError(path, offset, "truncated_record",
                            f"content block has {len(block)} of {record.content_length} bytes")
    return ArchiveRecord(
        source=path,
        offset=offset,
        record_type=record_type,
        target_uri=headers.get("WARC-Target-URI", ""),
        content_type=headers.get("Content-Type", ""),
        block=block,
        warc_truncated=headers.get("WARC-Truncated", ""),
    )


def _next_start(stream: BinaryIO, start: int, compressed: bool) -> int | None:
    """Offset of the first gzip member (or `WARC/` record line) at or after `start` that looks
    valid: a gzip member must decompress to the start of a WARC record."""
    marker = GZIP_MAGIC + b"\x08" if compressed else b"WARC/1."
    position = start
    while True:
        stream.seek(position)
        chunk = stream.read(_RESYNC_CHUNK + len(marker))
        if not chunk:
            return None
        at = chunk.find(marker)
        while at != -1:
            candidate = position + at
            if not compressed:
                if candidate == 0 or chunk[at - 1:at] == b"\n":
                    return candidate
            elif _decompressed_head(chunk[at:at + 4096]).startswith(b"WARC/"):
                return candidate
            at = chunk.find(marker, at + 1)
        if len(chunk) <= _RESYNC_CHUNK:
            return None
        position += _RESYNC_CHUNK


def _iter_arc(path: str, stream: BinaryIO) -> Iterator[ArchiveRecord | ArchiveError]:
    """ARC files, through warcio's ARC reader (fastwarc reads WARC only). A corrupt ARC record
    ends the file: ARC has no record-type line to resynchronise on."""
    iterator = WarcioIterator(stream, arc2warc=True)
    try:
        for record in iterator:
            offset = iterator.get_record_offset()
            if record.rec_type == "warcinfo":
                continue
            block = record.raw_stream.read()
            http = record.http_headers
            # warcio has parsed the HTTP head off the block: put it back so ARC and WARC records
            # go through the same HTTP parser.
            head = http.to_str().encode("iso-8859-1") if http is not None else b""
            yield ArchiveRecord(path, offset, "response", record.rec_headers.get_header("WARC-Target-URI", ""),
                                "application/http; msgtype=response", head + block, "")
    except Exception as exc:
        yield ArchiveError(path, iterator.offset, "corrupt_record", f"{type(exc).__name__}: {exc}")


def open_local(path: str) -> BinaryIO:
    return io.open(path, "rb", buffering=1 << 20)


__all__ = ["ArchiveRecord", "ArchiveError", "iter_archive", "sniff_format", "open_local"]
