"""Removal lists: reading them (any Beam filesystem, gzip too) and matching rows and images.

A list is a text file, one entry per line; blank lines and lines starting with `#` are skipped,
and only a line's first whitespace-separated field is the entry (a comment may follow it). Its
kind is, in this order: a `KIND:` before the path on the command line (`image-sha256:hashes.txt`),
a line `# crawl2clip-blocklist: KIND` before the first entry, or the entries themselves when they can only be one
kind (all absolute URLs: `url`; all host names: `domain`). Hash lists must say what they hash.

    url            image or page URL; matched without scheme, fragment, default port or host case
    url-sha256     hex SHA-256 of the URL's UTF-8 bytes (as stored, or with scheme and host lower-case)
    url-md5        the same with MD5
    domain         a host and all its subdomains (`example.com` also lists `cdn.example.com`)
    image-sha256   hex SHA-256 of the image bytes as downloaded (the `sha256` column)
    image-md5      hex MD5 of those bytes (download time only: a finished run keeps no MD5)
    image-phash    16 hex digits of a 64-bit pHash (transforms/consent/phash.py); matches
                   within `phash_distance` differing bits

URL kinds are matched against a pair's image URL and its page URL; image kinds against the image.
A row matches the first list (in the order given) that lists it.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np
from apache_beam.io.filesystems import FileSystems

from crawl2clip.transforms.consent.phash import phash_of_bytes

URL_KINDS = ("url", "url-sha256", "url-md5", "domain")
IMAGE_KINDS = ("image-sha256", "image-md5", "image-phash")
KINDS = URL_KINDS + IMAGE_KINDS
# A finished run keeps the SHA-256 of each original image but not its MD5.
REMOVE_KINDS = tuple(kind for kind in KINDS if kind != "image-md5")
HEADER = re.compile(r"^#\s*crawl2clip-blocklist\s*:\s*([a-z0-9-]+)\s*$", re.IGNORECASE)
DEFAULT_PHASH_DISTANCE = 4
_HEX_LENGTHS = {"url-sha256": 64, "url-md5": 32, "image-sha256": 64, "image-md5": 32, "image-phash": 16}
_HEX = re.compile(r"^[0-9a-f]+$")
_HOST = re.compile(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_SNIFF_ENTRIES = 1000
_MAX_BAD_EXAMPLES = 3


class BlocklistError(ValueError):
    """A list that cannot be used: unreadable, of an unknown kind, or with bad entries."""


def counter_name(kind: str) -> str:
    """`removed_url_sha256` for kind `url-sha256`: the counter `<stage>:removed_<kind>`."""
    return "removed_" + kind.replace("-", "_")


# ---------------------------------------------------------------- normal forms


def _host(host: str) -> str:
    host = host.strip().rstrip(".").lower()
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


def url_key(url: str) -> str | None:
    """What URL lists compare: host[:port]/path?query, host lower-case (IDNA), no scheme, no
    fragment, no default port; None for anything that is not an absolute http(s) URL."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.hostname:
        return None
    host = _host(parts.hostname)
    if ":" in host:
        host = f"[{host}]"
    if port is not None and port != _DEFAULT_PORTS[parts.scheme.lower()]:
        host = f"{host}:{port}"
    return host + (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def url_forms(url: str) -> tuple[str, ...]:
    """The strings hashed-URL lists are compared with: the URL as stored and, when different,
    with its scheme and host lower-cased and its fragment cut."""
    try:
        parts = urlsplit(url)
        normal = parts._replace(scheme=parts.scheme.lower(), netloc=parts.netloc.lower(), fragment="").geturl()
    except ValueError:
        return (url,)
    return (url,) if normal == url else (url, normal)


def host_of(url: str) -> str | None:
    try:
        host = urlsplit(url.strip()).hostname
    except ValueError:
        return None
    return _host(host) if host else None


def domain_entry(text: str) -> str | None:
    """A domain list's entry in normal form: `*.example.com`, `.example.com`, `EXAMPLE.com.` and
    `https://example.com/` all give `example.com`."""
    text = text.strip()
    if "://" in text:
        text = host_of(text) or ""
    text = _host(text.lstrip("*").lstrip("."))
    return text if text and _HOST.match(text) else None


def _entry(kind: str, text: str) -> str | None:
    if kind == "url":
        return url_key(text)
    if kind == "domain":
        return domain_entry(text)
    text = text.lower()
    if text.startswith("0x") and kind == "image-phash":
        text = text[2:]
    return text if len(text) == _HEX_LENGTHS[kind] and _HEX.match(text) else None


def _sniff(entries: list[str]) -> str | None:
    if entries and all(url_key(e) is not None for e in entries):
        return "url"
    if entries and all("/" not in e and domain_entry(e) is not None and "." in e for e in entries):
        return "domain"
    return None


# ---------------------------------------------------------------- reading


@dataclass(frozen=True)
class ListSpec:
    """A `--blocklist` value: the path and the kind the command line gave (None: the file says)."""

    path: str
    kind: str | None = None

    @classmethod
    def parse(cls, value: str) -> "ListSpec":
        prefix, sep, rest = value.partition(":")
        if sep and prefix.lower() in KINDS and rest:
            return cls(rest, prefix.lower())
        return cls(value, None)


@dataclass
class Blocklist:
    path: str
    kind: str
    entries: set = field(default_factory=set)  # normal forms (ints for image-phash)
    written: dict = field(default_factory=dict)  # normal form -> the line as written, where they differ
    hashes: np.ndarray | None = None  # image-phash: every entry, for distance search

    def __len__(self) -> int:
        return len(self.entries)

    def as_written(self, entry) -> str:
        if self.kind == "image-phash":
            return f"{entry:016x}"
        return self.written.get(entry, entry)


def _lines(path: str) -> Iterable[tuple[int, str]]:
    with FileSystems.open(path) as f:  # compression from the extension (.gz, .bz2, ...)
        for number, raw in enumerate(iter(f.readline, b""), 1):
            yield number, raw.decode("utf-8", "replace").strip()


def read_blocklist(spec: ListSpec) -> Blocklist:
    """Reads and checks one list; raises BlocklistError with a message for the user."""
    header_kind = None
    entries: list[tuple[int, str]] = []
    try:
        for number, line in _lines(spec.path):
            if not line:
                continue
            if line.startswith("#"):
                match = HEADER.match(line)
                if match and not entries and header_kind is None:
                    header_kind = match.group(1).lower()
                continue
            entries.append((number, line.split()[0]))
    except Exception as exc:  # any filesystem's error
        raise BlocklistError(f"{spec.path}: cannot read it ({type(exc).__name__}: {exc})") from None
    if header_kind is not None and header_kind not in KINDS:
        raise BlocklistError(f"{spec.path}: unknown list kind {header_kind!r} (one of {', '.join(KINDS)})")
    if spec.kind and header_kind and spec.kind != header_kind:
        raise BlocklistError(f"{spec.path}: given as {spec.kind} but its header says {header_kind}")
    kind = spec.kind or header_kind or _sniff([text for _, text in entries[:_SNIFF_ENTRIES]])
    if kind is None:
        raise BlocklistError(
            f"{spec.path}: cannot tell what it lists; start it with a line '# crawl2clip-blocklist: KIND' "
            f"or pass KIND:{spec.path} (KIND: {', '.join(KINDS)})")
    result = Blocklist(spec.path, kind)
    bad = []
    for number, text in entries:
        normal = _entry(kind, text)
        if normal is None:
            bad.append((number, text))
            continue
        if kind == "image-phash":
            normal = int(normal, 16)
        elif normal != text:
            result.written[normal] = text
        result.entries.add(normal)
    if bad:
        examples = ", ".join(f"line {n}: {t[:80]!r}" for n, t in bad[:_MAX_BAD_EXAMPLES])
        raise BlocklistError(f"{spec.path}: {len(bad)} line(s) are not {kind} entries ({examples})")
    if kind == "image-phash":
        result.hashes = np.array(sorted(result.entries), dtype=np.uint64)
    return result


# ---------------------------------------------------------------- matching


@dataclass(frozen=True)
class Match:
    """Why a row goes: the list (path as given), its kind, the entry as written, what matched
    (`URL`, `page_url` or `image`) and a detail (a pHash distance)."""

    list: str
    kind: str
    entry: str
    matched: str
    detail: str = ""


@dataclass(frozen=True)
class BlocklistSettings:
    """What a stage needs to load the lists on its workers (lists are read there, not pickled)."""

    specs: tuple[str, ...] = ()  # `--blocklist` values, in order
    phash_distance: int = DEFAULT_PHASH_DISTANCE

    def __bool__(self) -> bool:
        return bool(self.specs)


class Blocklists:
    def __init__(self, lists: list[Blocklist], phash_distance: int = DEFAULT_PHASH_DISTANCE):
        self.lists = lists
        self.phash_distance = phash_distance
        self.url_lists = [b for b in lists if b.kind in URL_KINDS]
        self.image_lists = [b for b in lists if b.kind in IMAGE_KINDS]
        kinds = {b.kind for b in lists}
        self.needs_md5 = "image-md5" in kinds
        self.needs_phash = "image-phash" in kinds

    @classmethod
    def read(cls, settings: BlocklistSettings) -> "Blocklists":
        return cls([read_blocklist(ListSpec.parse(s)) for s in settings.specs], settings.phash_distance)

    def match_url(self, url: str | None, page_url: str | None = None) -> Match | None:
        """The first URL list naming the image URL or, failing that, the page URL."""
        if not self.url_lists:
            return None
        for blocklist in self.url_lists:
            for value, column in ((url, "URL"), (page_url, "page_url")):
                if value:
                    entry = _url_entry(blocklist, value)
                    if entry is not None:
                        return Match(blocklist.path, blocklist.kind, blocklist.as_written(entry), column)
        return None

    def match_image(self, sha256: str | None = None, md5: str | None = None,
                    phashes: Iterable[int] = ()) -> Match | None:
        """The first image list naming these digests of an image (pass those it needs)."""
        phashes = list(phashes)
        for blocklist in self.image_lists:
            if blocklist.kind == "image-sha256" and sha256 and sha256.lower() in blocklist.entries:
                return Match(blocklist.path, blocklist.kind, sha256.lower(), "image")
            if blocklist.kind == "image-md5" and md5 and md5.lower() in blocklist.entries:
                return Match(blocklist.path, blocklist.kind, md5.lower(), "image")
            if blocklist.kind == "image-phash" and phashes:
                found = _nearest(blocklist, phashes, self.phash_distance)
                if found is not None:
                    entry, distance = found
                    return Match(blocklist.path, blocklist.kind, blocklist.as_written(entry), "image",
                                 f"hamming distance {distance}")
        return None

    def match_image_bytes(self, data: bytes, sha256: str | None = None) -> Match | None:
        """Image lists against the bytes as downloaded (digests computed only when a list needs them)."""
        if not self.image_lists:
            return None
        sha256 = sha256 or hashlib.sha256(data).hexdigest()
        md5 = hashlib.md5(data).hexdigest() if self.needs_md5 else None
        phash = phash_of_bytes(data) if self.needs_phash else None
        return self.match_image(sha256, md5, [phash] if phash is not None else [])


def _url_entry(blocklist: Blocklist, value: str):
    kind = blocklist.kind
    if kind == "url":
        key = url_key(value)
        return key if key in blocklist.entries else None
    if kind == "domain":
        host = host_of(value)
        while host:
            if host in blocklist.entries:
                return host
            host = host.partition(".")[2]
        return None
    digest = hashlib.sha256 if kind == "url-sha256" else hashlib.md5
    for form in url_forms(value):
        hexed = digest(form.encode("utf-8", "surrogatepass")).hexdigest()
        if hexed in blocklist.entries:
            return hexed
    return None


def _nearest(blocklist: Blocklist, phashes: list[int], limit: int) -> tuple[int, int] | None:
    """(entry, distance) of the closest listed pHash within `limit` bits, the smallest entry on ties."""
    best = None
    for value in phashes:
        if value in blocklist.entries:
            return value, 0
        distances = np.bitwise_count(blocklist.hashes ^ np.uint64(value))
        at = int(np.argmin(distances))
        if distances[at] <= limit and (best is None or distances[at] < best[1]):
            best = (int(blocklist.hashes[at]), int(distances[at]))
    return best


@functools.lru_cache(maxsize=4)
def load_blocklists(settings: BlocklistSettings) -> Blocklists:
    """The lists, read once per worker process (every DoFn instance there shares them)."""
    return Blocklists.read(settings)


def blocklist_problems(settings: BlocklistSettings, allowed_kinds: Iterable[str] = KINDS) -> list[str]:
    """Messages for the user about unusable lists (read in full: a bad line stops the run before it
    starts, not half-way)."""
    problems = []
    allowed = tuple(allowed_kinds)
    if not 0 <= settings.phash_distance <= 64:
        problems.append("--phash-distance must be between 0 and 64")
    for spec in settings.specs:
        try:
            blocklist = read_blocklist(ListSpec.parse(spec))
        except BlocklistError as exc:
            problems.append(f"--blocklist {exc}")
            continue
        if blocklist.kind not in allowed:
            problems.append(f"--blocklist {blocklist.path}: {blocklist.kind} lists cannot be used here "
                            f"(this command takes {', '.join(allowed)})")
    return problems
