"""A page's machine-readable reservations against AI/TDM use: plain functions, no Beam.

What a page can say, and where extraction finds it:

    <meta name="robots" content="noai, noimageai">      (or name="crawl2clip": our own token)
    <meta name="tdm-reservation" content="1">            TDMRep, HTML technique
    X-Robots-Tag: noai        X-Robots-Tag: crawl2clip: noimageai   (the page's HTTP response)
    tdm-reservation: 1                                    TDMRep, HTTP technique

A WARC keeps the page's response headers; a WAT keeps them under `HTTP-Response-Metadata.Headers`
and the meta tags under `HTML-Metadata.Head.Metas`, so both give the same answer. TDMRep's
processing order is followed: the page's meta tag supersedes its header (`0` in the meta tag
lifts a header's `1`); any value but `0` or `1` is a protocol error and counts as unset.
"""

import re
from collections.abc import Iterable, Mapping

from crawl2clip.transforms.download.robots import x_robots_tag_forbids
from crawl2clip.transforms.extract.html import unescape_attribute

TOKEN = "crawl2clip"  # our product token, as in robots.txt and X-Robots-Tag
DIRECTIVES = ("noai", "noimageai")  # what opts a page out of image-text training
ROBOTS_META_NAMES = frozenset({"robots", TOKEN})
TDM_META_NAME = "tdm-reservation"
# Lower-case meta names extraction collects (bytes: the HTML scanner's attribute values).
META_NAMES = frozenset(name.encode() for name in (*ROBOTS_META_NAMES, TDM_META_NAME))
HEADER_NAMES = ("x-robots-tag", "tdm-reservation")
# Reasons, in the order a page's first reservation is chosen for counting.
REASONS = ("meta_noai", "meta_noimageai", "x_robots_noai", "x_robots_noimageai", "tdm_meta", "tdm_header")

_HEADER_LINES = {name: re.compile(rb"\n" + name.encode() + rb"[ \t]*:[ \t]*([^\r\n]*)") for name in HEADER_NAMES}


def response_headers(head: bytes) -> dict[str, list[str]]:
    """Every value of the headers in HEADER_NAMES in a raw HTTP response head (repeats kept)."""
    lowered = head.lower()
    found: dict[str, list[str]] = {}
    for name, pattern in _HEADER_LINES.items():
        if name.encode() not in lowered:
            continue
        values = [head[m.start(1):m.end(1)].decode("iso-8859-1").strip() for m in pattern.finditer(lowered)]
        if values:
            found[name] = values
    return found


def wat_headers(headers: Mapping) -> dict[str, list[str]]:
    """The same, from a WAT record's `Headers` object (a repeated header is a JSON list there)."""
    found: dict[str, list[str]] = {}
    for name, value in (headers or {}).items():
        key = str(name).strip().lower()
        if key in HEADER_NAMES:
            found.setdefault(key, []).extend(str(v) for v in (value if isinstance(value, list) else [value]))
    return found


def wat_metas(metas) -> list[tuple[str, str]]:
    """(name, content) of a WAT record's `Head.Metas` entries (values still hold character
    references there, as written in the page)."""
    return [(str(meta.get("name", "")), unescape_attribute(str(meta.get("content", ""))))
            for meta in (metas if isinstance(metas, list) else []) if isinstance(meta, dict) and "name" in meta]


def tdm_value(values: Iterable[str]) -> int | None:
    """TDMRep's `tdm-reservation`: 1 (reserved), 0 (not reserved) or None (unset): the first
    value that is 0 or 1 counts; anything else is a protocol error, i.e. unset."""
    for value in values:
        value = str(value).strip()
        if value in ("0", "1"):
            return int(value)
    return None


def _directives(content: str) -> set[str]:
    return {item.strip().lower() for item in re.split(r"[,\s]+", content) if item.strip()}


def page_reservations(metas: Iterable[tuple[str, str]],
                      headers: Mapping[str, list[str]] | None = None) -> tuple[str, ...]:
    """The reasons (from REASONS, in that order) a page reserves its content; () when none.

    `metas`: (name, content) of the page's meta tags (names in any case); `headers`: lower-case
    header name -> values, as `response_headers` or `wat_headers` give them."""
    headers = headers or {}
    found = set()
    tdm_meta = []
    for name, content in metas:
        name = name.strip().lower()
        if name in ROBOTS_META_NAMES:
            found.update(f"meta_{d}" for d in _directives(content) & set(DIRECTIVES))
        elif name == TDM_META_NAME:
            tdm_meta.append(content)
    for directive in DIRECTIVES:
        if x_robots_tag_forbids(headers.get("x-robots-tag", []), TOKEN, (directive,)):
            found.add(f"x_robots_{directive}")
    meta_value = tdm_value(tdm_meta)
    if meta_value is not None:  # the meta tag supersedes the header
        if meta_value == 1:
            found.add("tdm_meta")
    elif tdm_value(headers.get("tdm-reservation", [])) == 1:
        found.add("tdm_header")
    return tuple(reason for reason in REASONS if reason in found)
