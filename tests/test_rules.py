"""LAION's candidate rules, one function at a time."""

from urllib.parse import urljoin

import pytest

from crawl2clip.transforms.extract.rules import (
    ExtractionRules,
    candidate,
    choose_src,
    clean_alt,
    clean_url_text,
    join_url,
    pair_uid,
    resolve_image_url,
)

RULES = ExtractionRules()
PAGE = "https://example.org/dir/page.html"


def test_alt_whitespace_length_and_cut():
    assert clean_alt("  A  red\n\tfox  ", RULES) == "A red fox"
    assert clean_alt("abcd", RULES) is None
    assert clean_alt("abcde", RULES) == "abcde"
    assert clean_alt("x" * 5000, RULES) == "x" * 2000
    assert clean_alt(" \n ", RULES) is None


@pytest.mark.parametrize(
    "src, expected",
    [
        ("img/a.jpg", ("https://example.org/dir/img/a.jpg", "")),
        ("/a.jpg#top", ("https://example.org/a.jpg", "")),
        ("//cdn.example.net/a.png", ("https://cdn.example.net/a.png", "")),
        ("data:image/png;base64,AAAA", (None, "data_uri")),
        ("JavaScript:void(0)", (None, "javascript_uri")),
        ("ftp://example.org/a.jpg", (None, "scheme_not_http")),
        ("https://" + "h" * 61 + ".com/a.jpg", (None, "host_too_long")),
        ("logo.SVG", (None, "svg_gif")),
        ("anim.gif", (None, "svg_gif")),
        ("http://[::1/a.jpg", (None, "bad_url")),
    ],
)
def test_resolve_image_url(src, expected):
    assert resolve_image_url(src, PAGE, RULES) == expected


def test_svg_gif_kept_when_asked():
    assert resolve_image_url("anim.gif", PAGE, ExtractionRules(keep_svg_gif=True))[0] == "https://example.org/dir/anim.gif"


def test_lazy_src_used_only_when_src_is_missing_or_a_placeholder():
    assert choose_src({"src": "a.jpg", "data-src": "b.jpg"}, RULES) == ("a.jpg", False)
    assert choose_src({"src": "data:image/gif;base64,R0", "data-src": "b.jpg"}, RULES) == ("b.jpg", True)
    assert choose_src({"data-lazy-src": " c.jpg "}, RULES) == ("c.jpg", True)
    assert choose_src({"data-src": "b.jpg"}, ExtractionRules(lazy_src=False)) == (None, False)


def test_candidate_reasons():
    assert candidate({"src": "a.jpg"}, PAGE, RULES) == (None, "no_alt", False)
    assert candidate({"src": "a.jpg", "alt": "hi"}, PAGE, RULES) == (None, "alt_too_short", False)
    assert candidate({"alt": "a long alt"}, PAGE, RULES) == (None, "no_src", False)
    assert candidate({"src": "a.jpg", "alt": " A red  fox "}, PAGE, RULES) == (
        "https://example.org/dir/a.jpg", "A red fox", False)


def test_uid_is_stable_and_separates_fields():
    assert pair_uid("u", "t") == pair_uid("u", "t")
    assert len(pair_uid("u", "t")) == 32
    assert pair_uid("ab", "c") != pair_uid("a", "bc")
    # Pinned: uids join outputs of different runs and versions, so they must never change.
    assert pair_uid("https://example.org/a.jpg", "A red fox") == "64eac5364f17913daaaf96b64f713657"


@pytest.mark.parametrize(
    "base",
    ["https://example.org/dir/page.html?q=1#top", "http://example.org", "http://example.org/", "https://u:p@h.com:8080/a/b/"],
)
@pytest.mark.parametrize(
    "src",
    ["a.jpg", "/a.jpg", "//cdn.x.net/a.png", "img/b c.jpg?x=1&y=2", "../up.jpg", "./here.jpg", "?only=query",
     "#frag", "https://other.org/a.jpg", "mailto:x@y.z", "a:b/c.jpg", "..", "sub/../x.jpg", "", "é/ü.jpg"],
)
def test_join_url_equals_urljoin(base, src):
    assert join_url(base, src) == urljoin(base, src)


def test_join_url_on_every_real_image_address(warc_dir):
    from tests.test_html import _real_html_pages, images

    checked = 0
    for url, page in _real_html_pages(warc_dir):
        for attributes in images(page):
            src = clean_url_text(attributes.get(b"src", b"").decode("utf-8", "replace"))
            assert join_url(url, src) == urljoin(url, src), (url, src)
            checked += 1
    assert checked > 300
