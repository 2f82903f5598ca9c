"""Parses the HTTP response stored in a WARC/ARC record and undoes transfer and content codings."""

import re
import zlib
from dataclasses import dataclass

try:
    import brotli
except ImportError:  # brotli is a dependency; keep parsing gzip pages if a user removed it
    brotli = None


class HttpParseError(ValueError):
    """A record whose HTTP message cannot be read; `reason` is the error word for the output."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


@dataclass(slots=True)
class HttpResponse:
    status: int
    headers: dict[str, str]  # the headers extraction reads (HEADERS), lower-cased names
    body: bytes


# Only these are looked up: parsing every header of every response is a measurable cost.
HEADERS = ("content-type", "transfer-encoding", "content-encoding")
_HEADER_LINES = {name: re.compile(rb"\n" + name.encode() + rb"[ \t]*:[ \t]*([^\r\n]*)") for name in HEADERS}


def parse_http_response(block: bytes) -> HttpResponse:
    """Status, the HEADERS and the body of a raw HTTP/1.x response (as a WARC block holds it)."""
    end = block.find(b"\r\n\r\n")
    separator = 4
    if end == -1:  # some crawlers wrote bare LF line ends
        end, separator = block.find(b"\n\n"), 2
    if end == -1:
        raise HttpParseError("bad_http_header", "no end of HTTP headers")
    head = block[:end]
    line_end = head.find(b"\n")
    status_line = head if line_end == -1 else head[:line_end]
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise HttpParseError("bad_http_header", f"bad status line {status_line[:80]!r}")
    lowered = head.lower()
    headers = {}
    for name, pattern in _HEADER_LINES.items():
        found = pattern.search(lowered)  # the first of repeated headers, as before
        if found:
            headers[name] = head[found.start(1):found.end(1)].decode("iso-8859-1").strip()
    return HttpResponse(int(parts[1]), headers, block[end + separator:])


def decoded_body(response: HttpResponse) -> bytes:
    """The entity body with `Transfer-Encoding: chunked` and `Content-Encoding` undone.

    Common Crawl stores bodies already decoded (and renames the headers to X-Crawler-*); other
    crawlers (wget, browser captures) keep them as sent, so both must work.
    """
    body = response.body
    if "chunked" in response.headers.get("transfer-encoding", "").lower():
        body = _dechunk(body)
    coding = response.headers.get("content-encoding", "").strip().lower()
    if coding in ("", "identity", "none"):
        return body
    try:
        if coding in ("gzip", "x-gzip"):
            return zlib.decompressobj(wbits=47).decompress(body)  # 47: gzip or zlib header
        if coding == "deflate":
            try:
                return zlib.decompress(body)
            except zlib.error:
                return zlib.decompress(body, -15)  # raw deflate, as some servers send it
        if coding == "br" and brotli is not None:
            return brotli.decompress(body)
    except Exception as exc:
        # Browser captures store the body already decoded but keep the header.
        if _looks_like_markup(body):
            return body
        raise HttpParseError("bad_content_encoding", f"{coding}: {exc}") from exc
    if _looks_like_markup(body):
        return body
    raise HttpParseError("unsupported_content_encoding", coding)


def _looks_like_markup(body: bytes) -> bool:
    return body[:256].lstrip()[:1] == b"<"


def _dechunk(body: bytes) -> bytes:
    """Undoes chunked transfer coding; a body that is not really chunked (crawlers that decoded it
    but kept the header) is returned unchanged."""
    out = []
    position = 0
    while True:
        line_end = body.find(b"\r\n", position)
        if line_end == -1:
            return body
        size_text = body[position:line_end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            return body
        if size == 0:
            return b"".join(out)
        start = line_end + 2
        out.append(body[start:start + size])
        position = start + size + 2
        if position > len(body):  # last chunk cut short: keep what arrived
            return b"".join(out)
