"""LAION-5B's rules for turning an `<img>` into an (image URL, alt text) candidate.

Each rule is a small function so it can be tested alone; `candidate` applies them in order and
says which rule dropped a tag, so every drop is counted by reason.
"""

import functools
import hashlib
import re
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

from crawl2clip.transforms.extract.archives import DEFAULT_MAX_RECORD_BYTES

_WHITESPACE = re.compile(r"\s+")
# HTML5 strips leading/trailing C0 controls and spaces from URLs and removes tabs and newlines.
_URL_STRIP = "".join(chr(c) for c in range(0x21))
_URL_TABS_NEWLINES = re.compile(r"[\t\n\r]")
LAZY_SRC_ATTRIBUTES = ("data-src", "data-lazy-src", "data-original")


@dataclass(frozen=True)
class ExtractionRules:
    """The rules' knobs; the defaults are LAION-5B's."""

    min_alt_chars: int = 5
    max_alt_chars: int = 2000
    max_host_chars: int = 60
    keep_svg_gif: bool = False
    # Lazy-loading pages put a placeholder (or nothing) in `src` and the image in `data-src`:
    # use it then. `srcset` is not used: it lists the same image at other sizes.
    lazy_src: bool = True
    # Not LAION's: records with a bigger content block are not read (`record_too_large`), so one
    # hostile record cannot take a worker's memory.
    max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES


def clean_alt(alt: str, rules: ExtractionRules) -> str | None:
    """Whitespace collapsed and stripped, cut at `max_alt_chars`; None if shorter than the minimum."""
    text = _WHITESPACE.sub(" ", alt).strip()
    if len(text) < rules.min_alt_chars:
        return None
    return text[: rules.max_alt_chars]


def clean_url_text(url: str) -> str:
    url = url.strip(_URL_STRIP)
    return _URL_TABS_NEWLINES.sub("", url) if ("\t" in url or "\n" in url or "\r" in url) else url


def choose_src(attributes: dict[str, str], rules: ExtractionRules) -> tuple[str | None, bool]:
    """The image address of a tag and whether it came from a lazy-loading attribute."""
    src = clean_url_text(attributes.get("src", ""))
    if rules.lazy_src and (not src or src.lower().startswith("data:")):
        for name in LAZY_SRC_ATTRIBUTES:
            lazy = clean_url_text(attributes.get(name, ""))
            if lazy and not lazy.lower().startswith("data:"):
                return lazy, True
    return (src or None), False


def _split_http_url(url: str) -> tuple[str, str, str] | None:
    """(scheme, host, path) of an absolute http(s) URL without urllib's general machinery, or
    None when it needs the careful parser (IPv6 literals, other schemes, odd forms)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("http", "https"):
        return None
    authority_end = len(rest)
    for delimiter in "/?#":
        at = rest.find(delimiter)
        if at != -1 and at < authority_end:
            authority_end = at
    host = rest[:authority_end].rpartition("@")[2]
    if host.startswith("[") or "\\" in rest:
        return None
    host = host.partition(":")[0]
    path = rest[authority_end:]
    for delimiter in "?#":
        path = path.partition(delimiter)[0]
    return scheme, host, path


@functools.lru_cache(maxsize=64)
def _base_parts(base_url: str) -> tuple[str, str, str] | None:
    """(scheme, 'scheme://authority', directory URL ending in '/') of an http(s) base."""
    scheme, sep, rest = base_url.partition("://")
    if not sep or scheme not in ("http", "https") or "\\" in base_url:
        return None
    rest = rest.partition("#")[0].partition("?")[0]
    authority, slash, path = rest.partition("/")
    origin = f"{scheme}://{authority}"
    return scheme, origin, origin + "/" + path[: path.rfind("/") + 1] if slash else origin + "/"


def join_url(base_url: str, src: str) -> str:
    """urljoin(base_url, src) for the common shapes of image addresses, without urllib's cost;
    anything unusual (dot segments, queries-only, other schemes) goes to urljoin itself."""
    parts = _base_parts(base_url)
    if parts is None or not src or "./" in src or src.startswith(("?", "#", ".")) or src.endswith("/..") or "\\" in src:
        return urljoin(base_url, src)
    scheme, origin, directory = parts
    if src.startswith("//"):
        return f"{scheme}:{src}"
    if src.startswith("/"):
        return origin + src
    if ":" in src.partition("/")[0]:  # a scheme of its own (or a colon urljoin must judge)
        return urljoin(base_url, src)
    return directory + src


def resolve_image_url(src: str, base_url: str, rules: ExtractionRules) -> tuple[str | None, str]:
    """(absolute URL, '') or (None, reason): resolved against the base, http(s) only, short host,
    no SVG/GIF unless kept. The fragment is dropped: it never changes the image fetched."""
    lowered = src[:11].lower()
    if lowered.startswith("data:"):
        return None, "data_uri"
    if lowered.startswith("javascript:"):
        return None, "javascript_uri"
    if lowered.startswith(("http://", "https://")) and src[:8].islower():
        absolute = src  # already absolute: urljoin would return it unchanged
    else:
        try:
            absolute = join_url(base_url, src)
        except ValueError:
            return None, "bad_url"
    parts = _split_http_url(absolute)
    if parts is None:
        try:
            split = urlsplit(absolute)
            parts = (split.scheme, split.hostname or "", split.path)
        except ValueError:
            return None, "bad_url"
    scheme, host, path = parts
    if scheme not in ("http", "https"):
        return None, "scheme_not_http"
    if not host:
        return None, "bad_url"
    if len(host) > rules.max_host_chars:
        return None, "host_too_long"
    if not rules.keep_svg_gif and path.lower().endswith((".svg", ".gif", ".svgz")):
        return None, "svg_gif"
    return absolute.partition("#")[0], ""


def candidate(
    attributes: dict[str, str], base_url: str, rules: ExtractionRules
) -> tuple[str, str, bool] | tuple[None, str, bool]:
    """(URL, TEXT, lazy) for a tag that passes every rule, else (None, reason, False)."""
    alt = attributes.get("alt")
    if alt is None:
        return None, "no_alt", False
    text = clean_alt(alt, rules)
    if text is None:
        return None, "alt_too_short", False
    src, lazy = choose_src(attributes, rules)
    if src is None:
        return None, "no_src", False
    url, reason = resolve_image_url(src, base_url, rules)
    if url is None:
        return None, reason, False
    return url, text, lazy


def pair_uid(url: str, text: str) -> str:
    """A stable 128-bit hex id of (URL, TEXT); 64 bits would collide at LAION's 5.8B pairs."""
    return hashlib.blake2b(f"{url}\x00{text}".encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
