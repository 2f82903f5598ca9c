"""From one archive record to its (image URL, alt text) candidates: plain functions, no Beam.

A record is an HTML page (a WARC/ARC `response`, or a `resource` a crawler stored directly) or a
WAT `metadata` record whose JSON lists the page's links. Everything else is skipped with a reason.
"""

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urljoin

from crawl2clip.transforms.consent.reservations import (
    META_NAMES,
    page_reservations,
    response_headers,
    wat_headers,
    wat_metas,
)
from crawl2clip.transforms.extract.archives import ArchiveRecord, target_uri
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
    """What one record gave: candidate pairs (URL, TEXT, page URL), tags dropped by rule, page
    parts ignored (a `<base href>` that is not a URL), and either why the whole record was skipped
    (not an error) or the error that stopped it."""

    pairs: list[tuple[str, str, str]] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    ignored: dict[str, int] = field(default_factory=dict)  # a dict: a Counter per record costs 0.4 µs
    lazy_src: int = 0
    images: int = 0
    skipped: str = ""
    error: tuple[str, str] | None = None
    reservations: tuple[str, ...] = ()  # why the page opts out of AI use (consent/reservations.py)


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
        head = record.block[:len(record.block) - len(response.body)]
        return pairs_from_html(body, record.target_uri, content_type, rules, response_headers(head))
    if kind == "resource":
        if not is_html(record.content_type, record.block):
            return RecordPairs(skipped="not_html")
        return pairs_from_html(record.block, record.target_uri, record.content_type, rules)
    if kind == "metadata" and record.content_type.startswith("application/json"):
        return pairs_from_wat(record.block, rules)
    return RecordPairs(skipped=f"{kind}_record")


def document_base(page_url: str, href: str) -> str | None:
    """The base URL a `<base href>` sets (resolved against the page URL), or None when it is not
    a URL (`http://[oops/`): HTML5 then keeps the page URL as the base."""
    try:
        return urljoin(page_url, href.strip())
    except ValueError:
        return None


def pairs_from_html(page: bytes, page_url: str, content_type: str, rules: ExtractionRules,
                    headers: dict[str, list[str]] | None = None) -> RecordPairs:
    """`headers`: the page response's opt-out headers (consent/reservations.py response_headers)."""
    result = RecordPairs()
    if looks_binary(page):
        result.error = ("undecodable_html", "binary content (control bytes) in an HTML response")
        return result
    charset = detect_charset(page, content_type)
    page, charset = to_ascii_compatible(page, charset)
    base_url = page_url
    base_seen = False
    images = []
    metas = []
    for tag, raw in iter_tags(page):
        if tag == b"img":
            images.append({name.decode(): decode_value(raw[name], charset) for name in _IMG_ATTRIBUTES if name in raw})
        elif tag == b"meta":
            if raw.get(b"name", b"").strip().lower() in META_NAMES:
                metas.append((raw[b"name"].decode("ascii", "replace"), decode_value(raw.get(b"content", b""), charset)))
        elif tag == b"base" and not base_seen and b"href" in raw:  # the first <base href> sets the base
            base_seen = True
            base_url = document_base(page_url, decode_value(raw[b"href"], charset))
            if base_url is None:
                base_url = page_url
                result.ignored["bad_base"] = 1
    _collect(result, images, base_url, page_url, rules)
    result.reservations = page_reservations(metas, headers)
    return result


class WatFieldError(ValueError):
    """A WAT record that is JSON but not shaped like one: a field of the wrong type."""


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
               float: "a number", type(None): "null"}


def _wrong_type(where: str, expected: str, value) -> WatFieldError:
    return WatFieldError(f"{where} is {_JSON_TYPES.get(type(value), type(value).__name__)}, not {expected}")


def _object(parent: dict, name: str, where: str) -> dict:
    """The JSON object `parent[name]`; {} when it is absent."""
    value = parent.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _wrong_type(where + name, "an object", value)
    return value


def _header_text(headers: dict, name: str) -> str | None:
    """An HTTP header's value in a WAT: a string, or a list of strings when it was repeated."""
    value = headers.get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None or isinstance(value, str):
        return value
    raise _wrong_type(f"header {name}", "a string", value)


_SURROGATES = re.compile("[\ud800-\udfff]")


def _text(value: str) -> str:
    """JSON text as valid Unicode: a lone surrogate escape (`\\ud800`) becomes U+FFFD, since no
    parquet writer takes one."""
    return _SURROGATES.sub("\ufffd", value) if _SURROGATES.search(value) else value


def pairs_from_wat(block: bytes, rules: ExtractionRules) -> RecordPairs:
    """A Common Crawl WAT record: image links are `HTML-Metadata.Links` entries whose `path` is
    `IMG@/src`, with `url` as written in the page and `alt`; the base is `Head.Base`.

    Every field's JSON type is checked on the way down: a record whose structure has the wrong
    type is an error (`bad_wat_structure`), a link of the wrong shape is dropped (`bad_wat_link`)."""
    try:
        document = json.loads(block)
    except (ValueError, RecursionError) as exc:  # RecursionError: arrays nested thousands deep
        return RecordPairs(error=("bad_wat_json", f"{type(exc).__name__}: {exc}"))
    try:
        return _pairs_from_wat_document(document, rules)
    except WatFieldError as exc:
        return RecordPairs(error=("bad_wat_structure", str(exc)))


def _pairs_from_wat_document(document, rules: ExtractionRules) -> RecordPairs:
    if not isinstance(document, dict):
        raise _wrong_type("the record", "an object", document)
    envelope = document.get("Envelope")
    if not isinstance(envelope, dict):
        raise _wrong_type("Envelope", "an object", envelope) if "Envelope" in document else WatFieldError("no Envelope")
    response = _object(_object(envelope, "Payload-Metadata", "Envelope."), "HTTP-Response-Metadata",
                       "Envelope.Payload-Metadata.")
    if not response:
        return RecordPairs(skipped="wat_not_response")
    where = "Envelope.Payload-Metadata.HTTP-Response-Metadata."
    status = _object(response, "Response-Message", where).get("Status", "")
    if isinstance(status, bool) or not isinstance(status, (str, int)):
        raise _wrong_type(where + "Response-Message.Status", "a string", status)
    status = str(status)
    if not (status.isdigit() and 200 <= int(status) < 300):
        return RecordPairs(skipped="http_status_not_2xx")
    headers = {k.lower(): v for k, v in _object(response, "Headers", where).items()}
    content_type = _header_text(headers, "content-type")
    metadata = response.get("HTML-Metadata")
    if metadata is None or not is_html("text/html" if content_type is None else content_type, b""):
        return RecordPairs(skipped="not_html")
    metadata = _object(response, "HTML-Metadata", where)
    page_url = _object(envelope, "WARC-Header-Metadata", "Envelope.").get("WARC-Target-URI", "")
    if not isinstance(page_url, str):
        raise _wrong_type("Envelope.WARC-Header-Metadata.WARC-Target-URI", "a string", page_url)
    page_url = _text(target_uri(page_url))
    links = metadata.get("Links", [])
    if not isinstance(links, list):
        raise _wrong_type(where + "HTML-Metadata.Links", "an array", links)
    result = RecordPairs()
    head = _object(metadata, "Head", where + "HTML-Metadata.")
    result.reservations = page_reservations(wat_metas(head.get("Metas")), wat_headers(headers))
    base = head.get("Base")
    base_url = page_url
    if base is not None:
        base_url = document_base(page_url, _text(base)) if isinstance(base, str) else None
        if base_url is None:  # not a URL, or not even a string
            base_url = page_url
            result.ignored["bad_base"] = 1
    images, malformed = _wat_images(links)
    _collect(result, images, base_url, page_url, rules)
    if malformed:
        result.images += malformed
        result.dropped["bad_wat_link"] += malformed
    return result


def _wat_images(links: list) -> tuple[list[dict], int]:
    """The `<img>` links as attribute dicts (`src`, `alt`), and how many entries were malformed:
    not an object, or an image link whose `path`, `url` or `alt` is not a string."""
    images = []
    malformed = 0
    for link in links:
        if not isinstance(link, dict):
            malformed += 1
            continue
        path = link.get("path")
        if path != "IMG@/src":
            malformed += path is not None and not isinstance(path, str)
            continue
        url, alt = link.get("url", ""), link.get("alt")
        if not isinstance(url, str) or ("alt" in link and not isinstance(alt, str)):
            malformed += 1
            continue
        # The WAT generator copies attribute values as written: character references still in.
        image = {"src": _text(unescape_attribute(url))}
        if alt is not None:
            image["alt"] = _text(unescape_attribute(alt))
        images.append(image)
    return images, malformed


def _collect(result: RecordPairs, images: list[dict], base_url: str, page_url: str, rules: ExtractionRules) -> None:
    result.images = len(images)
    for attributes in images:
        url, text, lazy = candidate(attributes, base_url, rules)
        if url is None:
            result.dropped[text] += 1
        else:
            result.pairs.append((url, text, page_url))
            result.lazy_src += lazy
