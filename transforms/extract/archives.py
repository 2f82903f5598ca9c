"""Reads records from web archive files: WARC (per-record gzip, uncompressed or one gzip stream),
ARC, and WAT (which is WARC holding JSON metadata records).

`iter_archive` yields `ArchiveRecord`s and `ArchiveError`s and never raises for bad data; each
record read gives one item. Damage costs only itself:
- a broken gzip member or an unparsable record is one `corrupt_record` row, and reading resumes at
  the next gzip member (or `WARC/1.` line) that reads as a record; a file whose first bytes are
  broken is read from the first record that parses;
- a record whose `Content-Length` runs past its gzip member (or into the next record) is one
  `bad_content_length` row, and the record after it is still read;
- a record bigger than `max_record_bytes` is one `record_too_large` row and is never held in
  memory (its member is inflated piece by piece only to find where it ends).
"""

import base64
import hashlib
import io
import re
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from fastwarc.warc import ArchiveIterator as FastWarcIterator
from warcio.archiveiterator import ArchiveIterator as WarcioIterator

GZIP_MAGIC = b"\x1f\x8b"
DEFAULT_MAX_RECORD_BYTES = 64 << 20  # far above any real page (Common Crawl cuts payloads at 1 MiB)
_SNIFF_BYTES = 512
_FIRST_RECORD_WITHIN = 64 << 20  # a file whose first record is not found this early is not an archive
_RESYNC_CHUNK = 1 << 20
_MAX_HEADER_BYTES = 1 << 16  # a WARC header longer than this is not found again by hand
_INFLATE_PIECE = 1 << 20  # decompressed bytes per step when walking a member: memory stays flat
_TRAILER = b"\r\n"


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
Items = Generator[ArchiveRecord | ArchiveError, None, int | None]  # returns where reading goes on

# Record types whose block is never read: skipping them costs nothing but a header parse.
TYPES_WITH_CONTENT = frozenset({"response", "resource", "metadata"})
# An ARC v1/v2 record line: URL, IP address, 14-digit date, ...
_ARC_RECORD_LINE = re.compile(rb"[A-Za-z][A-Za-z0-9+.-]*:\S* \S+ \d{14} ")
# A whole WARC header: the version line, named fields, the blank line.
_RECORD_HEAD = re.compile(rb"WARC/1\.[0-9]\r\n(?:[^\r\n:]{1,100}:[^\r\n]*\r\n){1,200}\r\n")
_RECORD_LINE = b"\r\nWARC/1."  # a WARC version line inside a block: records it may have swallowed


def target_uri(value: str) -> str:
    """A WARC-Target-URI as a plain URI: WARC/1.0 writers and some crawlers write it in angle
    brackets (`<https://example.org/>`), as the 1.0 draft's grammar had it."""
    if value.startswith("<") and value.endswith(">"):
        return value[1:-1].strip()
    return value


def sniff_format(head: bytes) -> str:
    """'warc', 'arc' or 'unknown', from the first bytes of the (decompressed) file or record."""
    if head.startswith(b"WARC/"):
        return "warc"
    if head.startswith(b"filedesc://") or _ARC_RECORD_LINE.match(head):
        return "arc"
    return "unknown"


def _decompressed_head(raw_head: bytes) -> bytes:
    if not raw_head.startswith(GZIP_MAGIC):
        return raw_head
    try:
        return zlib.decompressobj(wbits=31).decompress(raw_head, _SNIFF_BYTES)
    except zlib.error:
        return b""


def iter_archive(path: str, open_fn: OpenFn,
                 max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES) -> Iterator[ArchiveRecord | ArchiveError]:
    """Every record of the archive at `path`, opened with `open_fn` (a seekable binary stream)."""
    try:
        stream = open_fn(path)
        first = _first_record(stream)
    except Exception as exc:  # any filesystem's error: missing, permission, network
        yield ArchiveError(path, -1, "unreadable_file", f"{type(exc).__name__}: {exc}")
        return
    with stream:
        if first is None:
            stream.seek(0)
            yield ArchiveError(path, 0, "unknown_format", f"starts with {stream.read(16)!r}")
            return
        kind, compressed, start = first
        if start > 0:
            yield ArchiveError(path, 0, "corrupt_record", f"no record could be read before offset {start}")
        read = _read_warc if kind == "warc" else _read_arc
        position = start
        while position is not None:
            position = yield from read(path, stream, compressed, position, max_record_bytes)


def _first_record(stream: BinaryIO) -> tuple[str, bool, int] | None:
    """(format, compressed, offset) of the file's first record: at 0 unless the first bytes are
    damaged, then the first gzip member or record line further on that reads as a record."""
    raw_head = stream.read(4096)
    kind = sniff_format(_decompressed_head(raw_head))
    if kind != "unknown":
        return kind, raw_head.startswith(GZIP_MAGIC), 0
    # Not an archive at all (a parquet file given by mistake) unless a record begins early on.
    return next(_record_starts(stream, 1, compressed=None, kind=None, until=_FIRST_RECORD_WITHIN), None)


# Where a record may begin: a gzip member header; uncompressed, a WARC version line (anywhere:
# damage may have taken the line end before it; a whole header must follow) or, after a line end,
# an ARC file or record line.
_GZIP_START = re.compile(re.escape(GZIP_MAGIC + b"\x08"))
_LINE_START = re.compile(rb"WARC/1\.|(?<=\n)(?:filedesc://|[A-Za-z][A-Za-z0-9+.-]*:\S* \S+ \d{14} )")
_ANY_START = re.compile(_GZIP_START.pattern + rb"|" + _LINE_START.pattern)


def _record_starts(stream: BinaryIO, start: int, compressed: bool | None, kind: str | None,
                   until: float = float("inf")) -> Iterator[tuple[str, bool, int]]:
    """(format, compressed, offset) of every place from `start` (to about `until`) where a record of
    `kind` (any format when None) begins: a gzip member that decompresses to one, or, in
    uncompressed data, a line that starts one. `compressed` None looks for both."""
    pattern = _ANY_START if compressed is None else _GZIP_START if compressed else _LINE_START
    position = max(start, 1)
    while position < until:
        stream.seek(position - 1)  # one byte before, for the line-end look-behind
        chunk = stream.read(_RESYNC_CHUNK + 64)
        if len(chunk) <= 1:
            return
        for match in pattern.finditer(chunk, 1, _RESYNC_CHUNK + 1):
            offset = position - 1 + match.start()
            if match.group().startswith(GZIP_MAGIC):
                stream.seek(offset)
                found, is_gzip = sniff_format(_decompressed_head(stream.read(4096))), True
            elif match.group().startswith(b"WARC/"):
                stream.seek(offset)
                found, is_gzip = ("warc" if _RECORD_HEAD.match(stream.read(_MAX_HEADER_BYTES)) else "unknown"), False
            else:
                found, is_gzip = sniff_format(match.group()), False
            if found != "unknown" and kind in (None, found):
                yield found, is_gzip, offset
        if len(chunk) <= _RESYNC_CHUNK + 1:
            return
        position += _RESYNC_CHUNK


def _next_start(stream: BinaryIO, start: int, compressed: bool, kind: str = "warc") -> int | None:
    found = next(_record_starts(stream, start, compressed, kind), None)
    return None if found is None else found[2]


# --------------------------------------------------------------------------------------------
# WARC


@dataclass(slots=True)
class _Read:
    """The last record FastWARC returned. Its item is held back (`pending`) until the next record
    parses: FastWARC reads a wrong Content-Length without complaint and fails one record later."""

    offset: int
    headers: object  # FastWARC's header map (the record id is looked up only when needed)
    declared: int | None
    item: ArchiveRecord | ArchiveError | None  # None while its block is being read
    pending: bool = False

    @property
    def record_id(self) -> str:
        return self.headers.get("WARC-Record-ID", "")


@dataclass(slots=True)
class _Extent:
    """Where a record really ends, found by hand. `verdict`: 'fits' (its declared block ends where
    the record does), 'overruns' (the member or file ends inside the declared block), 'misplaced'
    (something other than the next record follows the declared block), 'corrupt' (its gzip member
    does not decompress) or 'unknown' (the record cannot be found at its offset: several records
    share one gzip member). `end`: with 'fits', where the next record starts, when known."""

    verdict: str
    end: int | None = None


def _read_warc(path: str, stream: BinaryIO, compressed: bool, position: int, limit: int) -> Items:
    """Records from `position` until FastWARC stops; returns where reading goes on, or None."""
    stream.seek(position)
    last: _Read | None = None
    failure = ""
    try:
        for record in FastWarcIterator(stream, parse_http=False):
            if last is not None and last.pending:
                yield last.item
            headers = record.headers
            declared = headers.get("Content-Length")
            if declared is not None and not (declared.isascii() and declared.isdigit()
                                             and int(declared) == record.content_length):
                declared = None  # FastWARC reads "x", "-3" or a "content-length" line as 0: unusable
            last = _Read(record.stream_pos, headers, record.content_length if declared is not None else None, None)
            record_type = headers.get("WARC-Type")
            block = None
            if not compressed and last.declared is not None and last.declared <= limit:
                # Uncompressed, a length that runs over whole records shows only in the block.
                block = record.reader.read()
                if _RECORD_LINE in block and _swallows_records(last, block):
                    return (yield from _wrong_length(path, stream, compressed, last, None, _Extent("misplaced")))
            if record_type is None or declared is None:
                last.item = ArchiveError(path, last.offset, "bad_record_header",
                                         "missing WARC-Type, or a Content-Length FastWARC cannot read")
                yield last.item
                continue
            if record_type not in TYPES_WITH_CONTENT:
                uri = target_uri(headers.get("WARC-Target-URI", ""))
                last.item = ArchiveRecord(path, last.offset, record_type, uri, "", b"", "")
                last.pending = True
                continue
            if last.declared > limit:
                resume = yield from _too_large(path, stream, compressed, last, limit)
                if resume is not _GO_ON:
                    return resume
                continue
            if block is None:
                block = record.reader.read()
            if len(block) < last.declared:  # the file (or, read as one stream, the files' rest) ended
                return (yield from _wrong_length(path, stream, compressed, last, len(block)))
            last.item = ArchiveRecord(
                source=path,
                offset=last.offset,
                record_type=record_type,
                target_uri=target_uri(headers.get("WARC-Target-URI", "")),
                content_type=headers.get("Content-Type", ""),
                block=block,
                warc_truncated=headers.get("WARC-Truncated", ""),
            )
            last.pending = True
    except Exception as exc:  # fastwarc raises OSError/ValueError subclasses on bad data
        failure = f"{type(exc).__name__}: {exc}"
    return (yield from _after_stop(path, stream, compressed, position, last, failure))


_GO_ON = object()  # _too_large: the iterator skips the record itself


def _swallows_records(last: _Read, block: bytes) -> bool:
    """Whether an uncompressed block holding a whole WARC header is the records after it (a
    declared length that runs over them and ends just where one ends: FastWARC reads on without
    complaint), unless its WARC-Block-Digest says the block is right (a page quoting a record).

    In gzip files member ends are the boundaries: a length running past its member is found when
    FastWARC stops. One ending exactly where a later member ends (it would have to equal the byte
    count of the records it swallows, which damage does not write) is not: checking every record
    for it (a scan of every block, or a read of every member's size) costs a tenth of the reading."""
    at = block.find(_RECORD_LINE)
    while at != -1:
        head = _RECORD_HEAD.match(block, at + 2)
        if head is not None and b"\r\ncontent-length:" in head.group().lower():
            break
        at = block.find(_RECORD_LINE, at + 1)
    else:
        return False
    digest = last.headers.get("WARC-Block-Digest", "")
    if digest.lower().startswith("sha1:"):
        return base64.b32encode(hashlib.sha1(block).digest()).decode() != digest[5:].strip().upper()
    return True


def _too_large(path: str, stream: BinaryIO, compressed: bool, last: _Read, limit: int) -> Items:
    """A block over the limit is not read: its end is found by hand (the stream position is
    restored, FastWARC shares the stream) and reading goes on after it."""
    here = stream.tell()
    extent = _extent(stream, last, compressed)
    stream.seek(here)
    if extent.verdict in ("overruns", "misplaced"):
        return (yield from _wrong_length(path, stream, compressed, last, None, extent))
    last.item = ArchiveError(path, last.offset, "record_too_large",
                             f"content block of {last.declared} bytes, over the limit of {limit}")
    yield last.item
    if extent.verdict == "corrupt":
        return _next_start(stream, last.offset + 1, compressed)
    return _GO_ON if extent.end is None else extent.end


def _wrong_length(path: str, stream: BinaryIO, compressed: bool, last: _Read, got: int | None,
                  extent: _Extent | None = None) -> Items:
    """A record whose declared length is not where it ends: `bad_content_length` when a record
    follows (reading goes on there), `truncated_record` when the file ends inside it."""
    resume = _next_start(stream, last.offset + 1, compressed)
    if extent is not None and extent.verdict == "misplaced":
        reason, detail = "bad_content_length", f"Content-Length {last.declared} does not end where the record does"
    elif resume is None:
        reason = "truncated_record"
        detail = ("the file ends inside the content block" if got is None
                  else f"content block has {got} of {last.declared} bytes")
    else:
        reason, detail = "bad_content_length", f"Content-Length {last.declared} runs past the end of the record"
    last.item, last.pending = ArchiveError(path, last.offset, reason, detail), False
    yield last.item
    return resume


def _after_stop(path: str, stream: BinaryIO, compressed: bool, position: int, last: _Read | None,
                failure: str) -> Items:
    """FastWARC stopped (the end of the file, damage, or the record after a wrong Content-Length):
    judges the last record by where it really ends, then says where the unread bytes begin."""
    if last is None:
        damage_at = position
    else:
        extent = _extent(stream, last, compressed)
        unsaid = last.item is None or last.pending  # the last record has no row out yet
        if unsaid and extent.verdict in ("overruns", "misplaced"):
            return (yield from _wrong_length(path, stream, compressed, last, None, extent))
        if unsaid and (last.item is None or extent.verdict == "corrupt"):
            # It broke while its block was read, or its member fails its checksum.
            yield ArchiveError(path, last.offset, "corrupt_record", failure or "the gzip member does not decompress")
            return _next_start(stream, last.offset + 1, compressed)
        if last.pending:
            yield last.item
        if extent.verdict == "corrupt":  # its row (an error) is out already
            return _next_start(stream, last.offset + 1, compressed)
        if extent.end is None:  # records sharing one gzip member: the damage is in that member
            if failure and isinstance(last.item, ArchiveRecord):
                yield ArchiveError(path, last.offset, "corrupt_record", f"after the record at this offset: {failure}")
            return _next_start(stream, last.offset + 1, compressed) if failure else None
        damage_at = extent.end
    if not failure and _only_padding_from(stream, damage_at):
        return None
    resume = _next_start(stream, damage_at + 1, compressed)
    if failure or resume is not None:
        yield ArchiveError(path, damage_at, "corrupt_record", failure or "bytes that are not a record")
    else:
        yield ArchiveError(path, damage_at, "truncated_record", "the file ends inside a record")
    return resume


def _only_padding_from(stream: BinaryIO, offset: int) -> bool:
    stream.seek(offset)
    while chunk := stream.read(1 << 16):
        if chunk.strip(b"\x00\r\n \t"):
            return False
    return True


_CONTENT_LENGTH = re.compile(rb"\nContent-Length:[ \t]*([0-9]+)", re.IGNORECASE)


def _same_record(header: bytes, last: _Read) -> bool:
    """Whether the header found at the record's offset is that record's (several records in one
    gzip member all report the member's offset): its Content-Length and record id."""
    length = _CONTENT_LENGTH.search(header)
    return (length is not None and int(length.group(1)) == last.declared
            and last.record_id in header.decode("utf-8", "replace"))


def _extent(stream: BinaryIO, last: _Read, compressed: bool) -> _Extent:
    if last.declared is None:
        return _Extent("unknown")
    if compressed:
        return _member_extent(stream, last)
    stream.seek(last.offset)  # uncompressed, the offset is the record's own: no need to check whose
    header_end = stream.read(_MAX_HEADER_BYTES).find(b"\r\n\r\n")
    if header_end == -1:
        return _Extent("unknown")
    block_start = last.offset + header_end + 4
    block_end = block_start + last.declared
    if block_end > stream.seek(0, io.SEEK_END):
        return _Extent("overruns")
    stream.seek(block_end)
    after = stream.read(64)
    # The verdict from the bytes after the declared block. Part of the trailer (FastWARC takes a
    # block that ate some of it) then the next record or the end: right.
    rest = after.lstrip(_TRAILER)
    trailer = len(after) - len(rest)
    if not rest:
        return _Extent("fits", block_end + len(after) if len(after) < 64 else None)
    if rest.startswith(b"WARC/"):
        return _Extent("fits", block_end + trailer)
    # The trailer (two CRLF; some writers put one) then something else: garbage after a record of
    # the right length, unless the block holds the start of a record it should not.
    if after.startswith(b"\r\n") and not _holds_record_line(stream, block_start, block_end):
        return _Extent("fits", block_end + trailer)
    return _Extent("misplaced")


def _holds_record_line(stream: BinaryIO, start: int, end: int) -> bool:
    """Whether the file between `start` and `end` holds a WARC version line, read in pieces."""
    overlap = len(_RECORD_LINE) - 1
    position = start
    while position < end:
        stream.seek(position)
        chunk = stream.read(min(_RESYNC_CHUNK, end - position) + overlap)
        if _RECORD_LINE in chunk[:end - position + overlap]:
            return True
        position += _RESYNC_CHUNK
    return False


def _member_extent(stream: BinaryIO, last: _Read) -> _Extent:
    member = _Member(stream, last.offset)
    head = member.read(_MAX_HEADER_BYTES)
    header_end = head.find(b"\r\n\r\n")
    if header_end == -1 or not _same_record(head[:header_end], last):
        return _Extent("corrupt" if member.broken else "unknown")
    block_end = header_end + 4 + last.declared
    if block_end < len(head):
        after = head[block_end:]
    else:
        member.skip(block_end - len(head))
        after = b""
    after += member.read(64)
    if member.broken:
        return _Extent("corrupt")
    if member.position < block_end:
        return _Extent("overruns")
    rest = after.lstrip(_TRAILER)
    if not rest and member.done:
        return _Extent("fits", member.end)
    # More in this member: the next record of a multi-record member, or a wrong length (damage
    # between members is not inside one).
    return _Extent("fits") if not rest or rest.startswith(b"WARC/") else _Extent("misplaced")


class _Member:
    """The decompressed bytes of the gzip member at `offset`, read forward in bounded pieces."""

    def __init__(self, stream: BinaryIO, offset: int):
        self._stream = stream
        self._offset = offset
        self._inflater = zlib.decompressobj(wbits=31)
        self._fed = 0
        stream.seek(offset)
        self.position = 0  # decompressed bytes delivered so far
        self.done = False  # the member ended (or broke, or the file ended)
        self.broken = False  # not a gzip member, corrupt data or a wrong checksum

    @property
    def end(self) -> int:
        """Where the member ends in the file (once `done`): what was fed, less what lay past its end."""
        return self._offset + self._fed - len(self._inflater.unused_data)

    def read(self, n: int) -> bytes:
        """Up to `n` bytes; fewer only at the end of the member."""
        pieces = []
        while n > 0 and not self.done:
            piece = self._inflate(min(n, _INFLATE_PIECE))
            pieces.append(piece)
            n -= len(piece)
        return b"".join(pieces)

    def skip(self, n: int) -> None:
        while n > 0 and not self.done:
            n -= len(self._inflate(min(n, _INFLATE_PIECE)))

    def _inflate(self, n: int) -> bytes:
        data = self._inflater.unconsumed_tail
        if not data:
            data = self._stream.read(1 << 16)
            self._fed += len(data)
            if not data:  # the file ends inside the member
                self.done = True
                return b""
        try:
            piece = self._inflater.decompress(data, n)
        except zlib.error:
            self.done = self.broken = True
            return b""
        self.position += len(piece)
        self.done = self._inflater.eof
        return piece


# --------------------------------------------------------------------------------------------
# ARC


def _read_arc(path: str, stream: BinaryIO, compressed: bool, position: int, limit: int) -> Items:
    """ARC files, through warcio's ARC reader (fastwarc reads WARC only), from `position`; after a
    corrupt record reading goes on at the next record line (or gzip member) that parses."""
    stream.seek(position)
    iterator = WarcioIterator(stream, arc2warc=True)
    try:
        for record in iterator:
            if record.rec_type == "warcinfo":
                continue
            uri = target_uri(record.rec_headers.get_header("WARC-Target-URI", ""))
            http = record.http_headers
            # warcio has parsed the HTTP head off the block: put it back so ARC and WARC records
            # go through the same HTTP parser.
            head = _http_head(http) if http is not None else b""
            block = head + record.raw_stream.read(max(limit + 1 - len(head), 0))  # warcio skips the rest in pieces
            if len(block) > limit:
                yield ArchiveError(path, iterator.offset, "record_too_large",
                                   f"content block over the limit of {limit}")
                continue
            offset = iterator.get_record_offset()  # valid only once the record is read
            yield ArchiveRecord(path, offset, "response", uri, "application/http; msgtype=response", block, "")
    except Exception as exc:
        broken_at = iterator.offset or position
        yield ArchiveError(path, broken_at, "corrupt_record", f"{type(exc).__name__}: {exc}")
        return _next_start(stream, broken_at + 1, compressed, kind="arc")
    return None


def _http_head(http) -> bytes:
    lines = [f"{http.protocol} {http.statusline}"] + [f"{name}: {value}" for name, value in http.headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("iso-8859-1", "replace")


def open_local(path: str) -> BinaryIO:
    return io.open(path, "rb", buffering=1 << 20)


__all__ = ["ArchiveRecord", "ArchiveError", "iter_archive", "sniff_format", "target_uri", "open_local",
           "DEFAULT_MAX_RECORD_BYTES"]
