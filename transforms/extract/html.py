"""Finds `<img>`, `<base href>` and `<meta>` tags in raw HTML bytes, the way an HTML5 parser would.

A full DOM parse is the slow part of extraction and we need only three tag names, so this module
tokenizes just enough of HTML5: it finds `<img`, `<base` and `<meta` tags (meta: the page's
opt-outs, transforms/consent/reservations.py), reads their attributes with the
HTML5 attribute rules (quoted, unquoted, valueless, first duplicate wins, names lower-cased), and
skips what an HTML5 parser would not see as tags: comments and the contents of raw-text and
RCDATA elements (script, style, textarea, title, ...). tests/test_html.py holds it against the
lexbor HTML5 parser (selectolax) on every real page in the shared archives.
"""

import codecs
import html.entities
import re
from collections.abc import Iterator

_WS = rb"\t\n\f\r "
# A tag we care about, a comment, or an element whose content is not markup. Matched on the
# lower-cased page, case-sensitively: about a third faster than re.IGNORECASE on every '<'.
_TOKEN = re.compile(
    # The lookahead fails most other tags (<div, <a, </...) before trying each alternative.
    rb"<(?=[ibms!txnp])(?:(img|base|meta)(?=[" + _WS + rb"/>])|(!--)|"
    rb"(script|style|textarea|title|xmp|iframe|noembed|noframes|plaintext)(?=[" + _WS + rb"/>]))"
)
_ATTRIBUTE_PATTERN = (
    rb"[" + _WS + rb"/]*+([^" + _WS + rb"/>][^" + _WS + rb"/>=]*+)"
    rb"(?:[" + _WS + rb"]*+=[" + _WS + rb"]*+(?:\"([^\"]*+)\"|'([^']*+)'|([^" + _WS + rb">]*+)))?+"
)
_ATTRIBUTE = re.compile(_ATTRIBUTE_PATTERN)
# A whole run of attributes up to the tag's '>' (possessive: no backtracking on long tags).
_ATTRIBUTES_TO_END = re.compile(rb"(?:" + _ATTRIBUTE_PATTERN + rb")*+[" + _WS + rb"/]*+>")
_COMMENT_END = re.compile(rb"-->|--!>")
_CLOSING = {}  # element name -> compiled "</name" end-tag pattern (on the lower-cased page)


def _closing_tag(name: bytes) -> re.Pattern:
    pattern = _CLOSING.get(name)
    if pattern is None:
        pattern = _CLOSING[name] = re.compile(rb"</" + name + rb"[" + _WS + rb"/>]")
    return pattern


def parse_attributes(page: bytes, position: int) -> tuple[dict[bytes, bytes], int]:
    """Attributes of the tag whose name ends at `position`, and the offset after its `>`."""
    whole = _ATTRIBUTES_TO_END.match(page, position)
    end = whole.end() if whole else len(page)  # no '>': the tag runs to the end of input
    attributes: dict[bytes, bytes] = {}
    for name, double, single, unquoted in _ATTRIBUTE.findall(page, position, end):
        name = name.lower()
        if name not in attributes:  # the first of duplicate attributes wins
            # findall gives b"" for a group that did not take part: the quoted forms go first
            attributes[name] = double or single or unquoted
    return attributes, end


def iter_tags(page: bytes) -> Iterator[tuple[bytes, dict[bytes, bytes]]]:
    """(tag name, attributes) of every `img`, `base` and `meta` tag an HTML5 parser would see."""
    lowered = page.lower()  # same offsets: bytes.lower() changes ASCII letters only
    position = 0
    search = _TOKEN.search
    while True:
        token = search(lowered, position)
        if token is None:
            return
        tag, comment, raw_text = token.groups()
        if tag is not None:
            attributes, position = parse_attributes(page, token.end())
            yield tag, attributes
        elif comment is not None:
            start = token.end()
            if lowered.startswith(b">", start) or lowered.startswith(b"->", start):  # <!--> and <!--->
                position = start + 1
                continue
            end = _COMMENT_END.search(lowered, start)
            if end is None:
                return
            position = end.end()
        else:
            if raw_text == b"plaintext":
                return
            _, after_open_tag = parse_attributes(page, token.end())
            end = _closing_tag(raw_text).search(lowered, after_open_tag)
            if end is None:
                return
            position = end.end()


# HTML5 character references: in attribute values, a reference without ';' is decoded only when
# it is a legacy name and is not followed by '=' or an alphanumeric (so `?a=1&copy=2` survives).
_LEGACY_ENTITIES = frozenset(name for name in html.entities.html5 if not name.endswith(";"))
_CHARACTER_REFERENCE = re.compile(r"&(#[xX][0-9a-fA-F]+;?|#[0-9]+;?|[A-Za-z][A-Za-z0-9]*;?)")


def _decode_reference(match: re.Match) -> str:
    reference = match.group(1)
    if reference.startswith("#"):
        return html.unescape(match.group(0))
    if reference.endswith(";"):
        return html.entities.html5.get(reference, match.group(0))
    following = match.string[match.end():match.end() + 1]
    if reference in _LEGACY_ENTITIES and following != "=":
        return html.entities.html5[reference]
    # A legacy name followed by more alphanumerics (or '=') stays as written in attributes.
    return match.group(0)


def unescape_attribute(value: str) -> str:
    """Decodes character references in an attribute value with HTML5's attribute rules."""
    if "&" not in value:
        return value
    return _CHARACTER_REFERENCE.sub(_decode_reference, value)


_META_CHARSET = re.compile(rb"<meta[^>]+charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]+)", re.IGNORECASE)
_HEADER_CHARSET = re.compile(r"charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:-]+)", re.IGNORECASE)
# WHATWG Encoding: these labels mean windows-1252 on the web.
_WINDOWS_1252_LABELS = {"iso-8859-1", "iso8859-1", "latin1", "latin-1", "l1", "ascii", "us-ascii", "cp819"}
# The encodings of the WHATWG Encoding standard, by Python's codec names. Python knows many more
# (utf-7, unicode_escape, base64, "undefined", ...): some decode to lone surrogates that no
# parquet writer takes, some raise on every byte. A page naming one gets the default, as in a browser.
_WEB_ENCODINGS = frozenset({
    "utf-8", "utf-16", "utf-16-le", "utf-16-be", "cp866", "iso8859-2", "iso8859-3", "iso8859-4",
    "iso8859-5", "iso8859-6", "iso8859-7", "iso8859-8", "iso8859-10", "iso8859-11", "iso8859-13",
    "iso8859-14", "iso8859-15", "iso8859-16", "koi8-r", "koi8-u", "mac-roman", "mac-cyrillic", "tis-620",
    "cp874", "cp1250", "cp1251", "cp1252", "cp1253", "cp1254", "cp1255", "cp1256", "cp1257", "cp1258",
    "gbk", "gb2312", "gb18030", "big5", "big5hkscs", "euc_jp", "iso2022_jp", "shift_jis", "cp932",
    "euc_kr", "cp949",
})


def _codec_name(label: str | None) -> str | None:
    if not label:
        return None
    label = label.strip().lower()
    if label in _WINDOWS_1252_LABELS:
        return "cp1252"
    try:
        name = codecs.lookup(label).name
    except LookupError:
        return None
    return name if name in _WEB_ENCODINGS else None


def detect_charset(page: bytes, content_type: str = "") -> str:
    """The page's encoding: BOM, then the HTTP header, then a `<meta>` in the first KiB, then UTF-8."""
    if page.startswith(codecs.BOM_UTF8):
        return "utf-8"
    if page.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    header = _HEADER_CHARSET.search(content_type) if content_type else None
    meta = _META_CHARSET.search(page, 0, 1024)
    for label in (header.group(1) if header else None, meta.group(1).decode("ascii") if meta else None):
        name = _codec_name(label)
        if name is not None:
            # A document that is ASCII-compatible in its first bytes cannot really be UTF-16
            # (HTML5 turns a UTF-16 meta into UTF-8).
            return "utf-8" if name.startswith("utf-16") else name
    return "utf-8"


def decode_value(raw: bytes, charset: str) -> str:
    """An attribute value as text: the page's charset, else windows-1252 (the web's legacy
    default), else UTF-8 with replacement characters; never raises. Stray NULs are removed
    (HTML5 would make each a U+FFFD)."""
    try:
        text = raw.decode(charset)
    except (UnicodeError, LookupError):
        try:
            text = raw.decode("cp1252")
        except UnicodeError:
            text = raw.decode("utf-8", "replace")
    if "\x00" in text:
        text = text.replace("\x00", "")
    return unescape_attribute(text)


def to_ascii_compatible(page: bytes, charset: str) -> tuple[bytes, str]:
    """UTF-16/32 pages re-encoded as UTF-8, so the byte-level tokenizer can read them."""
    if charset.startswith(("utf-16", "utf-32")):
        return page.decode(charset, "replace").encode("utf-8"), "utf-8"
    return page, charset


# WHATWG MIME Sniffing's "binary data bytes": control characters no text encoding of the web uses.
_BINARY_BYTES = bytes([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x1B), *range(0x1C, 0x20)])
_BINARY_SAMPLE = 4096


def looks_binary(page: bytes) -> bool:
    """A body that is not text at all (an image or PDF served as text/html): a NUL in its first
    16 bytes, or NULs and other binary data bytes making over 5% of its first 4 KiB; a stray NUL
    in a text page is not enough. Pages with a UTF-16 byte-order mark are text."""
    head = page[:_BINARY_SAMPLE]
    if b"\x00" not in head or head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return False  # the fast way out for text; images, PDFs and archives all hold NULs early
    if b"\x00" in head[:16]:
        return True
    binary = len(head) - len(head.translate(None, _BINARY_BYTES))
    return binary * 20 > len(head)
