"""The byte-level <img> tokenizer, unit by unit and against a real HTML5 parser (lexbor)."""

import glob
import os

import pytest
from fastwarc.warc import ArchiveIterator
from selectolax.lexbor import LexborHTMLParser

from crawl2clip.transforms.extract.html import (
    decode_value,
    detect_charset,
    iter_tags,
    looks_binary,
    parse_attributes,
    to_ascii_compatible,
    unescape_attribute,
)
from crawl2clip.transforms.extract.http import decoded_body, parse_http_response
from crawl2clip.transforms.extract.pairs import is_html


def images(page: bytes) -> list[dict[bytes, bytes]]:
    return [attributes for tag, attributes in iter_tags(page) if tag == b"img"]


def test_attribute_forms_follow_html5():
    (attrs,) = images(b"<img SRC=a.jpg alt='it&#39;s' data-x=\"q\" hidden ALT=second/>")
    assert attrs == {b"src": b"a.jpg", b"alt": b"it&#39;s", b"data-x": b"q", b"hidden": b""}
    (attrs,) = images(b'<img\nsrc = "b c.png"\talt=x>')
    assert attrs == {b"src": b"b c.png", b"alt": b"x"}
    # An unquoted value runs to whitespace or '>', so a trailing slash belongs to it.
    (attrs,) = images(b"<img src=a.jpg/>")
    assert attrs[b"src"] == b"a.jpg/"


def test_quoted_gt_does_not_end_the_tag():
    (attrs,) = images(b'<img alt="1 > 0" src="x.jpg">')
    assert attrs == {b"alt": b"1 > 0", b"src": b"x.jpg"}


def test_tags_that_are_not_img():
    assert images(b"<imgx src=a alt=b><image src=a alt=b><img-slider alt=b>") == []


def test_comments_scripts_and_rcdata_hide_tags():
    page = (
        b"<!-- <img src=1.jpg alt=hidden> --><script>x='<img src=2.jpg alt=hidden>'</script>"
        b"<textarea><img src=3.jpg alt=hidden></textarea><title><img src=4.jpg></title>"
        b"<style>/*<img src=5.jpg>*/</style><!--><img src=6.jpg alt=shown><SCRIPT type=x></SCRIPT >"
        b"<img src=7.jpg alt=shown>"
    )
    assert [a[b"src"] for a in images(page)] == [b"6.jpg", b"7.jpg"]


def test_unterminated_comment_hides_the_rest():
    assert images(b"<img src=a.jpg alt=x><!-- <img src=b.jpg alt=y>") == [{b"src": b"a.jpg", b"alt": b"x"}]


def test_base_tag_is_reported():
    tags = list(iter_tags(b'<base href="/root/"><img src=a alt=b>'))
    assert tags[0] == (b"base", {b"href": b"/root/"})


def test_tag_cut_at_end_of_input():
    attributes, end = parse_attributes(b'<img src="a.jpg" alt', 4)
    assert attributes == {b"src": b"a.jpg", b"alt": b""} and end == len(b'<img src="a.jpg" alt')


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Tom &amp; Jerry", "Tom & Jerry"),
        ("&lt;b&gt;", "<b>"),
        ("caf&eacute;", "café"),
        ("&#233;&#xE9;", "éé"),
        ("a.jpg?x=1&copy=2", "a.jpg?x=1&copy=2"),  # legacy name followed by '=': not decoded
        ("a.jpg?x=1&copy2", "a.jpg?x=1&copy2"),  # followed by alphanumeric: not decoded
        ("&copy 2024", "© 2024"),
        ("&notaname;", "&notaname;"),
    ],
)
def test_attribute_character_references(raw, expected):
    assert unescape_attribute(raw) == expected


def test_charset_detection_order():
    assert detect_charset(b"\xef\xbb\xbf<html>", "text/html; charset=iso-8859-1") == "utf-8"
    assert detect_charset(b"<html>", "text/html; charset=windows-1251") == "cp1251"
    assert detect_charset(b'<meta charset="shift_jis"><html>', "text/html") == "shift_jis"
    assert detect_charset(b'<meta http-equiv="Content-Type" content="text/html; charset=koi8-r">', "") == "koi8-r"
    assert detect_charset(b"<html>", "text/html; charset=ISO-8859-1") == "cp1252"  # WHATWG
    assert detect_charset(b"<html>", "text/html; charset=bogus") == "utf-8"
    assert detect_charset(b"<html>", "") == "utf-8"


def test_values_decode_with_fallbacks():
    assert decode_value("Привет".encode("cp1251"), "cp1251") == "Привет"
    assert decode_value("café".encode("cp1252"), "utf-8") == "café"  # mislabelled legacy page
    assert decode_value(b"\x81ok", "utf-8") == "\ufffdok"  # neither UTF-8 nor windows-1252


def test_utf16_pages_become_ascii_compatible():
    page = '\ufeff<img src="a.jpg" alt="日本語のテキスト">'.encode("utf-16")
    page, charset = to_ascii_compatible(page, detect_charset(page))
    (attrs,) = images(page)
    assert decode_value(attrs[b"alt"], charset) == "日本語のテキスト"


def test_binary_bodies_are_recognised():
    assert looks_binary(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    assert not looks_binary(b"<html>plain</html>")
    text = b"<html><body>" + b"<p>some text</p>" * 100
    assert not looks_binary(text[:50] + b"\x00" + text[50:])  # a stray NUL
    assert not looks_binary(text.replace(b"some", b"so\x00e", 20))  # 20 in 1.6 KiB: under 5%
    assert looks_binary(text.replace(b"some", b"s\x00\x01e"))  # control bytes all through
    assert not looks_binary("\ufeff<html>".encode("utf-16"))


@pytest.mark.parametrize("label", ["undefined", "utf-7", "unicode_escape", "base64", "rot13", "idna", "bogus"])
def test_labels_of_no_web_encoding_get_the_default(label):
    """Python knows these codecs; the web does not, and some raise on every byte or decode to lone
    surrogates (which no parquet writer takes)."""
    assert detect_charset(b"<html>", f"text/html; charset={label}") == "utf-8"
    assert detect_charset(f'<meta charset="{label}"><html>'.encode(), "") == "utf-8"
    assert decode_value(b"+2AA-caf\xe9", label) == "+2AA-café"


def _real_html_pages(warc_dir: str) -> list[tuple[str, bytes]]:
    pages = []
    for path in sorted(glob.glob(os.path.join(warc_dir, "*.warc*"))):
        if path.endswith((".wat.gz", ".wet.gz")) or "clipped" in path:
            continue
        for record in ArchiveIterator(path, parse_http=False):
            if record.headers.get("WARC-Type") != "response":
                continue
            response = parse_http_response(record.reader.read())
            if is_html(response.headers.get("content-type", ""), response.body):
                pages.append((record.headers.get("WARC-Target-URI"), decoded_body(response)))
    return pages


def test_same_images_as_the_lexbor_html5_parser_on_every_real_page(warc_dir):
    pages = _real_html_pages(warc_dir)
    assert len(pages) >= 40
    compared = 0
    for url, page in pages:
        charset = detect_charset(page)
        ours = [
            {k.decode(): decode_value(v, charset) for k, v in attrs.items() if k in (b"src", b"alt")}
            for attrs in images(page)
        ]
        tree = LexborHTMLParser(page.decode(charset, "replace"))
        theirs = [
            {k: (v or "") for k, v in node.attributes.items() if k in ("src", "alt")}
            for node in tree.css("img")
        ]
        assert ours == theirs, url
        compared += len(ours)
    assert compared > 300  # the real pages hold hundreds of <img> tags
