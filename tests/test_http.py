"""HTTP messages as crawlers stored them."""

import gzip
import zlib

import brotli
import pytest

from crawl2clip.transforms.extract.http import HttpParseError, decoded_body, parse_http_response

PAGE = b"<html><img src=a.jpg alt='a picture'></html>"


def response(headers: list[str], body: bytes, line_end: bytes = b"\r\n") -> bytes:
    head = line_end.join([b"HTTP/1.1 200 OK", *(h.encode() for h in headers)])
    return head + line_end + line_end + body


def test_status_headers_body():
    parsed = parse_http_response(response(["Content-Type: text/html", "content-type: ignored", "X-A:  b ",
                                            "Content-Encoding :  gzip "], PAGE))
    assert parsed.status == 200
    assert parsed.headers == {"content-type": "text/html", "content-encoding": "gzip"}  # only those read
    assert parsed.body == PAGE


def test_bare_newlines_are_accepted():
    assert parse_http_response(response(["A: b"], PAGE, b"\n")).body == PAGE


@pytest.mark.parametrize("block", [b"HTTP/1.1 200 OK\r\nA: b", b"garbage\r\n\r\nbody", b"HTTP/1.1 OK\r\n\r\n"])
def test_bad_heads_raise_with_reason(block):
    with pytest.raises(HttpParseError) as error:
        parse_http_response(block)
    assert error.value.reason == "bad_http_header"


def chunked(data: bytes, size: int = 7) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(data[i:i + size]), data[i:i + size]) for i in range(0, len(data), size)]
    return b"".join(parts) + b"0\r\n\r\n"


@pytest.mark.parametrize(
    "headers, body",
    [
        (["Transfer-Encoding: chunked"], chunked(PAGE)),
        (["Transfer-Encoding: chunked"], PAGE),  # header kept, body already de-chunked
        (["Content-Encoding: gzip"], gzip.compress(PAGE)),
        (["Content-Encoding: deflate"], zlib.compress(PAGE)),
        (["Content-Encoding: deflate"], zlib.compress(PAGE)[2:-4]),  # raw deflate
        (["Content-Encoding: br"], brotli.compress(PAGE)),
        (["Content-Encoding: br"], PAGE),  # browser capture: decoded, header kept
        (["Transfer-Encoding: chunked", "Content-Encoding: gzip"], chunked(gzip.compress(PAGE))),
    ],
)
def test_codings_are_undone(headers, body):
    assert decoded_body(parse_http_response(response(headers, body))) == PAGE


def test_broken_coding_is_an_error():
    with pytest.raises(HttpParseError) as error:
        decoded_body(parse_http_response(response(["Content-Encoding: gzip"], b"\x1f\x8b\x08garbage")))
    assert error.value.reason == "bad_content_encoding"
    with pytest.raises(HttpParseError) as error:
        decoded_body(parse_http_response(response(["Content-Encoding: zstd"], b"\x28\xb5\x2f\xfd")))
    assert error.value.reason == "unsupported_content_encoding"
