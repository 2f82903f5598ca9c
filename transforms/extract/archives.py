"""Reads records from web archive files: WARC (per-record gzip, uncompressed or one gzip stream),
ARC, and WAT (which is WARC holding JSON metadata records).

`iter_archive` yields `ArchiveRecord`s and `ArchiveError`s and never raises for bad data: a broken
gzip member or a record with a bad header becomes an `ArchiveError` and reading resumes at the
next gzip member (or WARC record) that parses, so one bad byte does not cost the rest of the file.
"""

import io
import re
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
        last_offset = None  # start of the last record that parsed in this attempt
        item = None
        try:
            for record in FastWarcIterator(stream, parse_http=False):
                last_offset = record.stream_pos
                item = _warc_record(path, record)
                yield item
            if isinstance(item, ArchiveError):  # the last record was short: already said
                return
            tail = _unread_tail(stream, position if last_offset is None else last_offset, compressed)
            if tail is not None:
                yield ArchiveError(path, tail, "truncated_record", "the file ends inside a record")
            return
        except Exception as exc:  # fastwarc raises OSError/ValueError subclasses on bad data
            if last_offset is None and position > 0:
                # The member we resumed at is itself broken: same damage, already reported.
                search_from = position + 1
            else:
                search_from = 0 if last_offset is None else last_offset + 1
                broken_at = _next_start(stream, search_from, compressed, validate=False)
                yield ArchiveError(path, search_from if broken_at is None else broken_at,
                                   "corrupt_record", f"{type(exc).__name__}: {exc}")
                if last_offset is None:
                    search_from = 1
            resume = _next_start(stream, search_from, compressed, validate=True)
            if resume is None:
                return
            position = resume


def _warc_record(path: str, record) -> ArchiveRecord | ArchiveError:
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


def _next_start(stream: BinaryIO, start: int, compressed: bool, validate: bool) -> int | None:
    """Offset of the first gzip member (or `WARC/` record line) at or after `start`. With
    `validate`, a gzip member must also decompress to the start of a WARC record."""
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
            elif not validate or _member_starts_a_record(stream, candidate):
                return candidate
            at = chunk.find(marker, at + 1)
        if len(chunk) <= _RESYNC_CHUNK:
            return None
        position += _RESYNC_CHUNK


def _unread_tail(stream: BinaryIO, last_offset: int, compressed: bool) -> int | None:
    """Where bytes the reader silently stopped at begin (a file cut inside a record's header),
    or None when the last record ends the file. Reads only the last record."""
    stream.seek(last_offset)
    data = stream.read()
    if not data:  # a whole-file gzip stream reports the end of the file as its position
        return None
    if compressed:
        inflater = zlib.decompressobj(wbits=31)
        try:
            inflater.decompress(data)
        except zlib.error:
            return last_offset
        if not inflater.eof:
            return last_offset
        rest = inflater.unused_data
        return None if not rest.strip(b"\x00\r\n ") else last_offset + len(data) - len(rest)
    header_end = data.find(b"\r\n\r\n")
    length = re.search(rb"\r\nContent-Length:\s*(\d+)", data[:header_end], re.IGNORECASE)
    if header_end == -1 or length is None:
        return last_offset
    record_end = header_end + 4 + int(length.group(1))
    return None if not data[record_end:].strip(b"\r\n ") else last_offset + record_end


def _member_starts_a_record(stream: BinaryIO, offset: int) -> bool:
    stream.seek(offset)
    return _decompressed_head(stream.read(4096)).startswith(b"WARC/")


def _iter_arc(path: str, stream: BinaryIO) -> Iterator[ArchiveRecord | ArchiveError]:
    """ARC files, through warcio's ARC reader (fastwarc reads WARC only). A corrupt ARC record
    ends the file: ARC has no record-type line to resynchronise on."""
    iterator = WarcioIterator(stream, arc2warc=True)
    try:
        for record in iterator:
            block = record.raw_stream.read()
            offset = iterator.get_record_offset()  # valid only once the record is read
            if record.rec_type == "warcinfo":
                continue
            http = record.http_headers
            # warcio has parsed the HTTP head off the block: put it back so ARC and WARC records
            # go through the same HTTP parser.
            head = _http_head(http) if http is not None else b""
            yield ArchiveRecord(path, offset, "response", record.rec_headers.get_header("WARC-Target-URI", ""),
                                "application/http; msgtype=response", head + block, "")
    except Exception as exc:
        yield ArchiveError(path, iterator.offset, "corrupt_record", f"{type(exc).__name__}: {exc}")


def _http_head(http) -> bytes:
    lines = [f"{http.protocol} {http.statusline}"] + [f"{name}: {value}" for name, value in http.headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1", "replace")


def open_local(path: str) -> BinaryIO:
    return io.open(path, "rb", buffering=1 << 20)


__all__ = ["ArchiveRecord", "ArchiveError", "iter_archive", "sniff_format", "open_local"]
