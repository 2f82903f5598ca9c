"""Property-based tests of the extract stage's readers (hypothesis, derandomized: the same examples
every run). For any bytes, the archive reader, the record-to-pairs function, the WAT reader and the
HTML scanner never raise and give only text a parquet writer takes; an archive of good records
with random damage gives each record either its pairs or one error row, and every record the
damage did not touch is read as written."""

import gzip
import io
import json
from dataclasses import dataclass

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from crawl2clip.transforms.extract.archives import ArchiveError, ArchiveRecord, iter_archive
from crawl2clip.transforms.extract.html import iter_tags
from crawl2clip.transforms.extract.pairs import RecordPairs, pairs_from_html, pairs_from_record, pairs_from_wat
from crawl2clip.transforms.extract.rules import ExtractionRules
from tests.archive_files import html_response, page_with_images, warc_record

RULES = ExtractionRules()
SETTINGS = settings(derandomize=True, deadline=None, max_examples=400,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def in_memory(data: bytes):
    return lambda path: io.BytesIO(data)


def assert_parquet_safe(result: RecordPairs) -> None:
    """Every string a row or an error row will hold encodes as UTF-8 (no lone surrogates)."""
    for url, text, page_url in result.pairs:
        url.encode("utf-8"), text.encode("utf-8"), page_url.encode("utf-8")
    if result.error is not None:
        result.error[0].encode("utf-8"), result.error[1].encode("utf-8")


# --- Building blocks of hostile input -------------------------------------------------------------

_CHARSETS = ["utf-8", "iso-8859-1", "windows-1251", "shift_jis", "utf-16", "utf-7", "unicode_escape", "undefined",
             "base64", "rot13", "idna", "punycode", "bogus", ""]
_HTML_PIECES = [
    b"<img", b"<IMG", b" src=", b" alt=", b" data-src=", b'"', b"'", b">", b"/>", b"<base href=", b"<!--", b"-->",
    b"<script>", b"</script>", b"<title>", b"</title>", b"<plaintext>", b"&amp;", b"&#xD800;", b"&copy", b"\x00",
    b"a.jpg", b"http://[oops/", b"//cdn.example/x.png", b"javascript:x", b"data:image/png;base64,AA", b"\xff\xfe",
    b"\xef\xbb\xbf", b"\r\n", b"  ", b"a long enough alt text", b"<meta charset=", b"utf-7", b"undefined",
    # whole tags, so that the rare combinations come up in a few hundred examples
    b'<base href="http://[oops/">', b'<meta charset="undefined">', b'<meta charset="unicode_escape">',
    b'<img alt="a caption long enough" src="', b'<img src="http://[::1/a.jpg" alt="a caption long enough">',
    b"\\ud800", b"+2AA-",
]
_URIS = ["http://example.org/a/b.html", "<https://example.org/>", "http://[oops/", "", "no scheme", "http://h:99999/",
         "https://xn--e1afmkfd.xn--p1ai/", "ftp://x/", "<>", "http://example.org/\ufffd"]

_html_noise = st.lists(st.one_of(st.sampled_from(_HTML_PIECES), st.binary(max_size=12)), max_size=20).map(b"".join)
_good_tag = st.sampled_from([b'<img src="a.jpg" alt="a caption long enough">', b"<IMG alt='caption two' src=/b.png>"])
# Noise, or noise around a tag that gives a pair unless the noise hides it.
html_bytes = st.one_of(_html_noise, st.tuples(_html_noise, _good_tag, _html_noise).map(b"".join))


@st.composite
def http_blocks(draw) -> bytes:
    """An HTTP response head with hostile headers and an HTML-ish body, or plain bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=300))
    charset = draw(st.sampled_from(_CHARSETS))
    media = draw(st.sampled_from(["text/html"] * 4 + ["application/xhtml+xml", "", "text/plain", "text/html;;"]))
    headers = [f"Content-Type: {media}" + (f"; charset={charset}" if charset else "")]
    body = draw(html_bytes)
    coding = draw(st.sampled_from(["", "gzip", "deflate", "br", "x-bogus"]))
    if coding:
        headers.append(f"Content-Encoding: {coding}")
        if coding == "gzip" and draw(st.booleans()):
            body = gzip.compress(body)
    if draw(st.booleans()):
        headers.append("Transfer-Encoding: chunked")
        body = draw(st.sampled_from([b"", b"5\r\n", b"zz\r\n", f"{len(body):x}\r\n".encode()])) + body
    status = draw(st.sampled_from(["200 OK"] * 4 + ["404 Not Found", "abc", "200"]))
    head = "\r\n".join([f"HTTP/1.1 {status}", *headers])
    return f"{head}\r\n\r\n".encode("latin-1") + body


def _records(record_type, content_type, block):
    """Records of those kinds; page URLs mostly good, so that pairs come out (and odd ones too)."""
    return st.builds(ArchiveRecord, source=st.just("fuzz.warc"), offset=st.just(0), record_type=record_type,
                     target_uri=st.one_of(st.sampled_from(_URIS[:2]), st.sampled_from(_URIS[:2]),
                                          st.sampled_from(_URIS), st.text(max_size=30)),
                     content_type=content_type, block=block, warc_truncated=st.just(""))


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
              st.text(max_size=20), st.sampled_from(["IMG@/src", "\ud800", "http://[oops/", "200"])),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(["path", "url", "alt", "Base", "x"]), children,
                                               max_size=4)),
    max_leaves=12,
)


@st.composite
def wat_documents(draw):
    """A WAT record's JSON shaped like the real thing, with any field swapped for any JSON value."""
    def maybe(value):  # about half the records keep the real shape throughout
        return draw(json_values) if draw(st.integers(0, 15)) == 0 else value

    links = [maybe({"path": maybe("IMG@/src"), "url": maybe(draw(st.sampled_from(_URIS))),
                    "alt": maybe(draw(st.text(max_size=20)))}) for _ in range(draw(st.integers(0, 4)))]
    return maybe({"Envelope": maybe({
        "WARC-Header-Metadata": maybe({"WARC-Target-URI": maybe(draw(st.sampled_from(_URIS)))}),
        "Payload-Metadata": maybe({"HTTP-Response-Metadata": maybe({
            "Response-Message": maybe({"Status": maybe("200")}),
            "Headers": maybe({"Content-Type": maybe("text/html")}),
            "HTML-Metadata": maybe({"Head": maybe({"Base": maybe(draw(st.sampled_from(["/base/", "\ud800/"]))),
                                                   "Metas": maybe([maybe({"name": maybe("robots"),
                                                                          "content": maybe("noai")})])}),
                                    "Links": maybe(links)}),
        })}),
    })})


records = st.one_of(
    _records(st.just("response"), st.just("application/http; msgtype=response"), http_blocks()),
    _records(st.just("resource"), st.sampled_from(["text/html"] * 3 + [""]), html_bytes),
    _records(st.just("metadata"), st.just("application/json"), wat_documents().map(lambda d: json.dumps(d).encode())),
    _records(st.sampled_from(["response", "resource", "metadata", "request", "revisit", ""]),
             st.sampled_from(["application/http; msgtype=response", "application/json", "text/html", ""]),
             st.one_of(http_blocks(), html_bytes, st.binary(max_size=200))),
)


# --- Never raises ---------------------------------------------------------------------------------


@SETTINGS
@given(st.binary(max_size=2000))
def test_html_scanner_never_raises_on_any_bytes(page):
    for _ in iter_tags(page):
        pass


@SETTINGS
@given(html_bytes, st.sampled_from(_URIS), st.sampled_from(_CHARSETS))
def test_pairs_from_html_never_raises(page, page_url, charset):
    result = pairs_from_html(page, page_url, f"text/html; charset={charset}", RULES)
    assert_parquet_safe(result)


@SETTINGS
@given(records)
def test_pairs_from_record_never_raises(record):
    result = pairs_from_record(record, RULES)
    assert_parquet_safe(result)
    assert result.error is None or result.error[0] != "internal_error"


@SETTINGS
@given(st.one_of(wat_documents().map(lambda d: json.dumps(d).encode()), st.binary(max_size=200),
                 json_values.map(lambda d: json.dumps(d).encode())))
def test_pairs_from_wat_never_raises(block):
    result = pairs_from_wat(block, RULES)
    assert_parquet_safe(result)
    assert result.error is None or result.error[0] in ("bad_wat_json", "bad_wat_structure")


_ARCHIVE_PIECES = [
    b"WARC/1.0\r\n", b"WARC-Type: response\r\n", b"WARC-Type: request\r\n", b"Content-Length: 10\r\n",
    b"Content-Length: 99999999999999\r\n", b"Content-Length: -3\r\n", b"Content-Length: x\r\n",
    b"WARC-Target-URI: <http://a.example/>\r\n", b"\r\n\r\n", b"\r\n", b"\x1f\x8b\x08", b"filedesc://x 0.0.0.0 ",
    b"http://a.example/ 1.2.3.4 20240101000000 text/html 12\n", b"HTTP/1.1 200 OK\r\n",
]
archive_bytes = st.lists(
    st.one_of(st.sampled_from(_ARCHIVE_PIECES), st.binary(max_size=16),
              st.sampled_from(_ARCHIVE_PIECES).map(gzip.compress),
              st.just(gzip.compress(warc_record("http://a.example/", html_response(page_with_images("a")))))),
    max_size=20,
).map(b"".join)


@SETTINGS
@given(st.one_of(archive_bytes, st.binary(max_size=500)), st.sampled_from([1, 50, 1 << 20]))
def test_archive_reader_never_raises(data, limit):
    for item in iter_archive("fuzz.warc", in_memory(data), max_record_bytes=limit):
        if isinstance(item, ArchiveRecord):
            item.target_uri.encode("utf-8")
            assert len(item.block) <= limit
        else:
            assert item.reason in ("unknown_format", "corrupt_record", "truncated_record", "bad_content_length",
                                   "bad_record_header", "record_too_large")


# --- Good records plus damage: each record gives its pairs or one error row ----------------------


@dataclass
class Piece:
    data: bytes  # a record as it sits in the file (its gzip member when compressed), or garbage
    record: int | None  # which good record it holds; None for garbage between records
    damage: str = ""  # what was done to it


def _good_records(n: int) -> list[bytes]:
    return [warc_record(f"http://site{i}.example/p.html", _block(i)) for i in range(n)]


def _block(i: int) -> bytes:
    return html_response(page_with_images(f"site{i}", 2))


def _with_length(record: bytes, length: int) -> bytes:
    head, rest = record.split(b"\r\n\r\n", 1)
    lines = [line if not line.startswith(b"Content-Length:") else f"Content-Length: {length}".encode()
             for line in head.split(b"\r\n")]
    return b"\r\n".join(lines) + b"\r\n\r\n" + rest


damage = st.lists(st.tuples(
    st.sampled_from(["flip", "length", "garbage", "cut"]),
    st.integers(0, 7),  # which record
    st.integers(0, 10_000),  # where in it (modulo its size), or the new Content-Length
    st.binary(min_size=1, max_size=40),  # garbage bytes, or the flip mask
), min_size=1, max_size=3)


def _lands_on_a_later_record_end(records: list[bytes], index: int, length: int) -> bool:
    """Whether a Content-Length for record `index` ends its block exactly where a later record
    ends (give or take the trailer FastWARC tolerates): a gzip file cannot tell that from a
    record holding records (archives.py, _swallows_records)."""
    block_start = len(records[index]) - len(records[index].split(b"\r\n\r\n", 1)[1])
    end = len(records[index])
    for later in records[index + 1:]:
        end += len(later)
        if 0 <= end - (block_start + length) <= 4:
            return True
    return False


def _damaged_archive(n: int, compress: bool, changes) -> tuple[list[Piece], bytes, list[int]]:
    """The file of `n` good records with the changes made; its pieces and where each starts."""
    records = _good_records(n)
    pieces = [Piece(gzip.compress(r, mtime=0) if compress else r, i) for i, r in enumerate(records)]
    cut = None
    for kind, index, where, extra in changes:
        piece = next(p for p in pieces if p.record == index % n)
        if kind == "length" and compress:
            assume(not _lands_on_a_later_record_end(records, piece.record, where))
        if kind == "flip":
            at = where % len(piece.data)
            piece.data = piece.data[:at] + bytes([piece.data[at] ^ (extra[0] or 1)]) + piece.data[at + 1:]
        elif kind == "length":
            record = _with_length(records[piece.record], where)
            piece.data = gzip.compress(record, mtime=0) if compress else record
        elif kind == "garbage":  # lines (uncompressed) or bytes (between gzip members) after the record
            pieces.insert(pieces.index(piece) + 1, Piece(extra if compress else extra + b"\r\n", None, "garbage"))
            continue
        else:
            cut = (piece, where % len(piece.data))
        piece.damage = piece.damage or kind
    starts, data = [], b""
    for piece in pieces:
        starts.append(len(data))
        if cut is not None and piece is cut[0]:
            data += piece.data[:cut[1]]
            return pieces[:len(starts)], data, starts
        data += piece.data
    return pieces, data, starts


@SETTINGS
@given(st.integers(2, 8), st.booleans(), damage)
def test_each_record_gives_its_pairs_or_one_error_row(n, compress, changes):
    pieces, data, starts = _damaged_archive(n, compress, changes)
    items = list(iter_archive("damaged.warc", in_memory(data)))  # never raises
    ends = starts[1:] + [len(data)]
    errors = [item for item in items if isinstance(item, ArchiveError)]
    assert len({item.offset for item in items}) == len(items)  # one row per place in the file
    assert len(errors) <= len(changes)
    for piece, start, end in zip(pieces, starts, ends):
        found = [item for item in items if start <= item.offset < end]
        if not piece.damage:  # untouched: read exactly as written
            (item,) = found
            assert isinstance(item, ArchiveRecord) and item.block == _block(piece.record)
            assert len(pairs_from_record(item, RULES).pairs) == 2
        elif piece.damage == "garbage":
            assert all(isinstance(item, ArchiveError) for item in found) and len(found) <= 1
        elif found:  # a damaged record: its row (its pairs, or an error), one only; or, in an
            # uncompressed file, the record then one row for bytes after it that are not a record
            # (a broken trailer; a Content-Length cut short just before a CRLF reads the same).
            assert len(found) == 1 or (not compress and [type(i) for i in found] == [ArchiveRecord, ArchiveError])
        elif start < end:  # lost with the damage just before it, which has its error row
            before = [item for item in items if item.offset < start]
            assert before and isinstance(before[-1], ArchiveError), (start, items)
