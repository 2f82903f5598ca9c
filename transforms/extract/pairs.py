"""From one archive record to its (image URL, alt text) candidates: plain functions, no Beam.

A record is an HTML page (a WARC/ARC `response`, or a `resource` a crawler stored directly) or a
WAT `metadata` record whose JSON lists the page's links. Everything else is skipped with a reason.
"""

import json
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urljoin

from crawl2clip.transforms.extract.archives import ArchiveRecord
from crawl2clip.transforms.extract.html import (
    decode_value,
    detect_charset,
    iter_tags,
    looks_binary,
    to_ascii_compatible,
    unescape_attribute,
)
from crawl2clip.transforms.extract.http import HttpParseError, decoded_body, parse_http_response
from crawl2clip.transforms.extract.rules import ExtractionRules, candidate

HTML_TYPES = ("text/html", "application/xhtml+xml")
_IMG_ATTRIBUTES = (b"alt", b"src", b"data-src", b"data-lazy-src", b"data-original")


@dataclass(slots=True)
class RecordPairs:
    """What one record gave: candidate pairs (URL, TEXT, page URL), tags dropped by rule, and
    either why the whole record was skipped (not an error) or the error that stopped it."""

    pairs: list[tuple[str, str, str]] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    lazy_src: int = 0
    images: int = 0
    skipped: str = ""
    error: tuple[str, str] | None = None


def is_html(content_type: str, body: bytes) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type:
        return media_type in HTML_TYPES
    head = body[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def pairs_from_record(record: ArchiveRecord, rules: ExtractionRules) -> RecordPairs:
    kind = record.record_type
    if kind == "response":
        try:
            response = parse_http_response(record.block)
        except HttpParseError as exc:
            return RecordPairs(error=(exc.reason, str(exc)))
        if not 200 <= response.status < 300:
            return RecordPairs(skipped="http_status_not_2xx")
        content_type = response.headers.get("content-type", "")
        if not is_html(content_type, response.body):
            return RecordPairs(skipped="not_html")
        try:
            body = decoded_body(response)
        except HttpParseError as exc:
            return RecordPairs(error=(exc.reason, str(exc)))
        return pairs_from_html(body, record.target_uri, content_type, rules)
    if kind == "resource":
        if not is_html(record.content_type, record.block):
            return RecordPairs(skipped="not_html")
        return pairs_from_html(record.block, record.target_uri, record.content_type, rules)
    if kind == "metadata" and record.content_type.startswith("application/json"):
        return pairs_from_wat(record.block, rules)
    return RecordPairs(skipped=f"{kind}_record")


def pairs_from_html(page: bytes, page_url: str, content_type: str, rules: ExtractionRules) -> RecordPairs:
    result = RecordPairs()
    if looks_binary(page):
        result.error = ("undecodable_html", "binary content (NUL bytes) in an HTML response")
        return result
    charset = detect_charset(page, content_type)
    page, charset = to_ascii_compatible(page, charset)
    base_url = page_url
    base_seen = False
    images = []
    for tag, raw in iter_tags(page):
        if tag == b"img":
            images.append({name.decode(): decode_value(raw[name], charset) for name in _IMG_ATTRIBUTES if name in raw})
        elif not base_seen and b"href" in raw:  # the first <base href> sets the document's base
            base_seen = True
            base_url = urljoin(page_url, decode_value(raw[b"href"], charset).strip())
    _collect(result, images, base_url, page_url, rules)
    return result


def pairs_from_wat(block: bytes, rules: ExtractionRules) -> RecordPairs:
    """A Common Crawl WAT record: image links are `HTML-Metadata.Links` entries whose `path` is
    `IMG@/src`, with `url` as written in the page and `alt`; the base is `Head.Base`."""
    try:
        envelope = json.loads(block)["Envelope"]
    except (ValueError, KeyError, TypeError) as exc:
        return RecordPairs(error=("bad_wat_json", f"{type(exc).__name__}: {exc}"))
    response = envelope.get("Payload-Metadata", {}).get("HTTP-Response-Metadata")
    if not response:
        return RecordPairs(skipped="wat_not_response")
    status = str(response.get("Response-Message", {}).get("Status", ""))
    if not (status.isdigit() and 200 <= int(status) < 300):
        return RecordPairs(skipped="http_status_not_2xx")
    headers = {k.lower(): v for k, v in response.get("Headers", {}).items()}
    metadata = response.get("HTML-Metadata")
    if metadata is None or not is_html(headers.get("content-type", "text/html"), b""):
        return RecordPairs(skipped="not_html")
    page_url = envelope.get("WARC-Header-Metadata", {}).get("WARC-Target-URI", "")
    base = metadata.get("Head", {}).get("Base")
    base_url = urljoin(page_url, base.strip()) if base else page_url
    # The WAT generator copies attribute values as written: character references still in.
    images = [
        {"src": unescape_attribute(link.get("url", "")), **({"alt": unescape_attribute(link["alt"])} if "alt" in link else {})}
        for link in metadata.get("Links", [])
        if link.get("path") == "IMG@/src"
    ]
    result = RecordPairs()
    _collect(result, images, base_url, page_url, rules)
    return result


def _collect(result: RecordPairs, images: list[dict], base_url: str, page_url: str, rules: ExtractionRules) -> None:
    result.images = len(images)
    for attributes in images:
        url, text, lazy = candidate(attributes, base_url, rules)
        if url is None:
            result.dropped[text] += 1
        else:
            result.pairs.append((url, text, page_url))
            result.lazy_src += lazy
