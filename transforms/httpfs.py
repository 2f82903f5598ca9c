"""Read-only Beam FileSystem for http:// and https:// URLs (Common Crawl over HTTPS).

Beam Python ships no HTTP filesystem. Importing this module registers one: `FileSystems` picks a
class by comparing `scheme()` of every `FileSystem` subclass with the path's scheme, so
`FileSystems.open("https://data.commoncrawl.org/crawl-data/...")`, `ReadFromText`, `fileio.MatchAll`
and friends work on URLs. On runners whose workers do not import the pipeline module first, pass
`--beam_plugins=crawl2clip.transforms.httpfs` (Dataflow adds every imported FileSystem itself).

Reads are ranged GETs (`Range: bytes=N-`) streamed through a seekable raw reader wrapped in
`io.BufferedReader`; a seek re-issues a ranged GET, and a dropped connection resumes at the
current offset instead of restarting the file. Proxies come from the environment, as urllib does.
"""

from __future__ import annotations

import dataclasses
import email.utils
import http.client
import io
import logging
import random
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import BinaryIO, Callable, Iterable, Optional, TypeVar

from apache_beam.io.filesystem import (
    BeamIOError,
    CompressedFile,
    CompressionTypes,
    FileMetadata,
    FileSystem,
    MatchResult,
)
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from crawl2clip import __version__

__all__ = [
    "HttpConfig",
    "HttpFileSystem",
    "HttpFileSystemError",
    "HttpNotFoundError",
    "HttpOptions",
    "HttpStatusError",
    "HttpsFileSystem",
    "expand_path_listing",
]

logger = logging.getLogger(__name__)

DEFAULT_USER_AGENT = f"crawl2clip/{__version__} (+https://github.com/crawl2clip)"
_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True)
class HttpConfig:
    """Client settings. Override per process via `HttpFileSystem.config`, or per pipeline with
    the `HttpOptions` flags (which also reach remote workers)."""

    user_agent: str = DEFAULT_USER_AGENT
    timeout_s: float = 60.0  # per socket operation (connect, each read), not per file
    max_retries: int = 8  # retries after the first try, per request / per read call
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    buffer_size: int = 1 << 20  # io.BufferedReader buffer: few, large reads from the socket
    max_skip_bytes: int = 256 << 10  # forward seeks up to this read-and-discard, no new GET


class HttpOptions(PipelineOptions):
    """Pipeline flags for the http(s) filesystem; unset flags keep `HttpFileSystem.config`."""

    @classmethod
    def _add_argparse_args(cls, parser) -> None:
        parser.add_argument("--http_user_agent", default=None, help="User-Agent for http(s) reads.")
        parser.add_argument("--http_timeout_s", type=float, default=None, help="Socket timeout.")
        parser.add_argument("--http_max_retries", type=int, default=None, help="Retries per request.")


class HttpFileSystemError(BeamIOError):
    """A non-retryable failure (4xx, retries exhausted, file changed while reading)."""

    def __init__(self, msg: str, url: str, cause: Optional[BaseException] = None) -> None:
        super().__init__(msg, {url: cause or msg})
        self.args = (msg,)  # a plain message; BeamIOError's "with exceptions {...}" repeats it
        self.url = url


class HttpStatusError(HttpFileSystemError):
    def __init__(self, url: str, status: int, reason: str = "", headers=None) -> None:
        super().__init__(" ".join(filter(None, ["HTTP", str(status), reason, "for", url])), url)
        self.status = status
        self.headers = headers


class HttpNotFoundError(HttpStatusError, FileNotFoundError):
    """404/410: also a FileNotFoundError, like a missing local file."""


class _RetryableStatus(OSError):
    """429 or 5xx: worth another try, possibly after the server's Retry-After."""

    def __init__(self, url: str, status: int, retry_after: Optional[float]) -> None:
        super().__init__(f"HTTP {status} for {url}")
        self.status = status
        self.retry_after = retry_after


class _Truncated(OSError):
    """The body ended before its Content-Length (http.client just reports EOF)."""


# Everything transient is an OSError (URLError, timeouts, resets, our own two) or an
# HTTPException (BadStatusLine, IncompleteRead); HttpFileSystemError is caught before these.
_TRANSIENT = (OSError, http.client.HTTPException)


def _parse_retry_after(value: Optional[str]) -> Optional[float]:
    try:
        return float(value) if value else None
    except ValueError:  # an HTTP date: not worth parsing, backoff covers it
        return None


class _Backoff:
    """Exponential backoff with jitter; raises once `max_retries` waits were spent."""

    def __init__(self, config: HttpConfig, url: str) -> None:
        self._config, self._url, self._attempt = config, url, 0

    def wait(self, err: BaseException) -> None:
        cfg = self._config
        if self._attempt >= cfg.max_retries:
            raise HttpFileSystemError(
                f"Giving up on {self._url} after {self._attempt + 1} attempts: {err}", self._url, err
            ) from err
        delay = min(cfg.backoff_max_s, cfg.backoff_base_s * 2**self._attempt) * random.uniform(0.5, 1.0)
        retry_after = getattr(err, "retry_after", None)
        if retry_after:
            delay = max(delay, min(retry_after, cfg.backoff_max_s))
        logger.warning("Retrying %s in %.2fs after: %s", self._url, delay, err)
        time.sleep(delay)
        self._attempt += 1


def _retrying(config: HttpConfig, url: str, step: Callable[[], _T], cleanup=lambda: None) -> _T:
    backoff = _Backoff(config, url)
    while True:
        try:
            return step()
        except HttpFileSystemError:
            cleanup()
            raise
        except _TRANSIENT as err:
            cleanup()
            backoff.wait(err)


class _Client:
    """One urllib opener: proxies from the environment (ProxyHandler), redirects followed."""

    def __init__(self, config: HttpConfig) -> None:
        self.config = config
        self._opener = urllib.request.build_opener()

    def request(self, url: str, method: str = "GET", start: Optional[int] = None, end: Optional[int] = None):
        """One attempt. Returns a 2xx response; raises HttpStatusError (fatal), _RetryableStatus
        or a network error."""
        # identity: byte offsets must refer to the stored file, not a re-encoded body.
        headers = {"User-Agent": self.config.user_agent, "Accept-Encoding": "identity"}
        if start is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
        req = urllib.request.Request(url, headers=headers, method=method)
        try:
            return self._opener.open(req, timeout=self.config.timeout_s)
        except urllib.error.HTTPError as err:
            err.close()
            if err.code == 429 or err.code >= 500:
                raise _RetryableStatus(url, err.code, _parse_retry_after(err.headers.get("Retry-After"))) from None
            cls = HttpNotFoundError if err.code in (404, 410) else HttpStatusError
            raise cls(url, err.code, err.reason, err.headers) from None
        except urllib.error.URLError as err:
            if isinstance(err.reason, ssl.SSLCertVerificationError):  # retrying will not fix it
                raise HttpFileSystemError(f"TLS verification failed for {url}: {err.reason}", url, err) from err
            raise


def _content_range(headers) -> tuple[Optional[int], Optional[int]]:
    """(first byte, total size) from `Content-Range: bytes a-b/total` or `bytes */total`."""
    value = (headers.get("Content-Range") or "").strip()
    if not value.startswith("bytes "):
        return None, None
    span, _, total = value[6:].partition("/")
    first = span.partition("-")[0]
    return (
        int(first) if first.isdigit() else None,
        int(total) if total.isdigit() else None,
    )


def _content_length(headers) -> Optional[int]:
    value = headers.get("Content-Length")
    return int(value) if value and value.isdigit() else None


@dataclasses.dataclass(frozen=True)
class _Stat:
    size: Optional[int]
    etag: Optional[str]
    last_modified: Optional[float]

    @classmethod
    def from_response(cls, resp) -> "_Stat":
        size = _content_range(resp.headers)[1] if resp.status == 206 else _content_length(resp.headers)
        last_modified = None
        if resp.headers.get("Last-Modified"):
            try:
                last_modified = email.utils.parsedate_to_datetime(resp.headers["Last-Modified"]).timestamp()
            except (TypeError, ValueError):
                pass
        return cls(size, resp.headers.get("ETag"), last_modified)


class _HttpRangeReader(io.RawIOBase):
    """Seekable raw reader over one URL. `seek` only moves the position; the next read reuses
    the open response (discarding a small gap) or issues a ranged GET at the new position."""

    def __init__(self, client: _Client, url: str) -> None:
        super().__init__()
        self._client, self._url = client, url
        self._pos = 0  # logical position
        self._size: Optional[int] = None  # total size once a response or HEAD told us
        self._etag: Optional[str] = None
        self._resp = None
        self._resp_pos = 0  # file offset of the next byte from _resp
        self._resp_end: Optional[int] = None  # file offset where _resp's body should end

    # io attributes BufferedReader passes through; CompressedFile.seekable checks 'r' in mode.
    @property
    def name(self) -> str:
        return self._url

    @property
    def mode(self) -> str:
        return "rb"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            if self._size is None:
                self._size = _stat(self._client, self._url).size
            if self._size is None:
                raise OSError(f"Cannot seek from the end of {self._url}: size unknown")
            pos = self._size + offset
        else:
            raise ValueError(f"Invalid whence {whence}")
        if pos < 0:
            raise ValueError(f"Negative seek position {pos}")
        self._pos = pos
        return pos

    def connect(self) -> None:
        """Open the stream now, so a missing URL fails at open() like a missing local file."""
        _retrying(self._client.config, self._url, self._ensure_stream, self._close_stream)

    def readinto(self, b) -> int:
        view = memoryview(b).cast("B")
        if not len(view) or (self._size is not None and self._pos >= self._size):
            return 0
        # A fresh retry budget per call: a long file may survive many spread-out hiccups.
        return _retrying(self._client.config, self._url, lambda: self._readinto_once(view), self._close_stream)

    def readall(self) -> bytes:
        out, buf = bytearray(), bytearray(self._client.config.buffer_size)
        while n := self.readinto(buf):
            out += memoryview(buf)[:n]
        return bytes(out)

    def close(self) -> None:
        self._close_stream()
        super().close()

    def _readinto_once(self, view: memoryview) -> int:
        self._ensure_stream()
        if self._resp is None:  # 416: nothing at or after this position
            return 0
        n = self._resp.readinto(view)
        if not n:
            if self._resp_end is not None and self._resp_pos < self._resp_end:
                raise _Truncated(f"Connection closed at byte {self._resp_pos} of {self._url}")
            self._close_stream()
            self._size = self._resp_pos if self._size is None else self._size
            return 0
        self._pos += n
        self._resp_pos += n
        return n

    def _ensure_stream(self) -> None:
        if self._resp is not None and self._resp_pos != self._pos:
            gap = self._pos - self._resp_pos
            if 0 < gap <= self._client.config.max_skip_bytes:
                self._discard(gap)  # cheaper than a new request for a short hop
            else:
                self._close_stream()
        if self._resp is None and (self._size is None or self._pos < self._size):
            self._open_stream()

    def _open_stream(self) -> None:
        start = self._pos
        try:
            resp = self._client.request(self._url, start=start)
        except HttpStatusError as err:
            if err.status != 416:
                raise
            total = _content_range(err.headers)[1]
            self._size = total if total is not None else start
            return
        self._check_etag(resp.headers.get("ETag"))
        length = _content_length(resp.headers)
        if resp.status == 206:
            first, total = _content_range(resp.headers)
            if first != start:
                resp.close()
                raise HttpFileSystemError(f"Asked {self._url} for byte {start}, got {first}", self._url)
            self._size = total if total is not None else self._size
        else:  # 200: the server ignored Range and sends the whole file
            self._size = length if length is not None else self._size
            start = 0
        self._resp, self._resp_pos = resp, start
        self._resp_end = None if length is None else start + length
        if self._pos > start:
            logger.info("%s ignored Range; skipping %d bytes", self._url, self._pos - start)
            self._discard(self._pos - start)

    def _discard(self, count: int) -> None:
        chunk = bytearray(min(count, 1 << 20))
        while count:
            n = self._resp.readinto(memoryview(chunk)[:count])
            if not n:
                if self._resp_end is not None and self._resp_pos < self._resp_end:
                    raise _Truncated(f"Connection closed at byte {self._resp_pos} of {self._url}")
                self._size = self._resp_pos  # the file ends before the position sought
                self._close_stream()
                return
            self._resp_pos += n
            count -= n

    def _check_etag(self, etag: Optional[str]) -> None:
        # Resuming into a replaced file would splice two files together silently.
        if etag and self._etag and etag != self._etag:
            raise HttpFileSystemError(f"{self._url} changed while reading (ETag {self._etag} -> {etag})", self._url)
        self._etag = self._etag or etag

    def _close_stream(self) -> None:
        if self._resp is not None:
            try:
                self._resp.close()
            except _TRANSIENT:
                pass
            self._resp = None


def _stat_once(client: _Client, url: str) -> _Stat:
    try:
        with client.request(url, method="HEAD") as resp:
            return _Stat.from_response(resp)
    except HttpStatusError as err:
        # Some servers (e.g. S3 presigned GET URLs) refuse HEAD: ask for the first byte instead.
        if err.status not in (403, 405, 501):
            raise
    try:
        with client.request(url, start=0, end=0) as resp:
            return _Stat.from_response(resp)  # a 200 here is closed unread
    except HttpStatusError as err:
        if err.status == 416:  # no byte 0: an empty file
            return _Stat(0, err.headers.get("ETag"), None)
        raise


def _stat(client: _Client, url: str) -> _Stat:
    stat = _retrying(client.config, url, lambda: _stat_once(client, url))
    if stat.size is None:
        # No Content-Length (e.g. chunked, generated content): count the bytes once.
        logger.warning("%s has no Content-Length; reading it to learn its size", url)
        with _HttpRangeReader(client, url) as reader:
            while reader.read(client.config.buffer_size):
                pass
            stat = dataclasses.replace(stat, size=reader.tell())
    return stat


def _config_from_options(base: HttpConfig, pipeline_options) -> HttpConfig:
    """Apply HttpOptions flags; `pipeline_options` is PipelineOptions, a dict (runtime options on
    workers) or None."""
    if pipeline_options is None:
        return base
    if isinstance(pipeline_options, PipelineOptions):
        view = pipeline_options.view_as(HttpOptions)
        get = lambda flag: getattr(view, flag, None)  # noqa: E731
    else:
        get = dict(pipeline_options).get
    flags = {"http_user_agent": "user_agent", "http_timeout_s": "timeout_s", "http_max_retries": "max_retries"}
    overrides = {field: get(flag) for flag, field in flags.items() if get(flag) is not None}
    return dataclasses.replace(base, **overrides) if overrides else base


class HttpFileSystem(FileSystem):
    """Read-only FileSystem for http:// URLs. No globbing: a pattern is one exact URL."""

    config: HttpConfig = HttpConfig()

    def __init__(self, pipeline_options=None) -> None:
        super().__init__(pipeline_options)
        self._client = _Client(_config_from_options(self.config, pipeline_options))

    @classmethod
    def scheme(cls) -> str:
        return "http"

    # -- paths ---------------------------------------------------------------------------------

    def join(self, basepath: str, *paths: str) -> str:
        path = basepath
        for part in paths:
            path = path.rstrip("/") + "/" + part.lstrip("/")
        return path

    def split(self, path: str) -> tuple[str, str]:
        scheme, sep, rest = path.partition("://")
        if "/" not in rest:
            return path, ""
        head, tail = rest.rsplit("/", 1)
        return scheme + sep + head, tail

    def has_dirs(self) -> bool:
        return False

    def _list(self, dir_or_prefix: str):
        raise BeamIOError(f"Listing is not supported over HTTP: {dir_or_prefix}")

    # -- reading -------------------------------------------------------------------------------

    def match(self, patterns: list[str], limits: Optional[list[Optional[int]]] = None) -> list[MatchResult]:
        """Each pattern is an exact URL (FileSystem.match would read `?` in a query as a glob)."""
        limits = limits if limits is not None else [None] * len(patterns)
        assert len(patterns) == len(limits), "Patterns and limits should be equal in length"
        results, errors = [], {}
        for pattern, limit in zip(patterns, limits):
            try:
                metadata = [] if limit == 0 else [self.metadata(pattern)]
            except HttpNotFoundError:
                metadata = []
            except Exception as err:  # pylint: disable=broad-except
                errors[pattern] = err
                continue
            results.append(MatchResult(pattern, metadata))
        if errors:
            raise BeamIOError("Match operation failed", errors)
        return results

    def open(
        self,
        path: str,
        mime_type: str = "application/octet-stream",
        compression_type: str = CompressionTypes.AUTO,
    ) -> BinaryIO:
        # Detect compression on the URL path, so a query string (`...warc.gz?sig=...`) still
        # counts as .gz.
        compression_type = FileSystem._get_compression_type(urllib.parse.urlsplit(path).path, compression_type)
        raw = _HttpRangeReader(self._client, path)
        raw.connect()
        buffered = io.BufferedReader(raw, buffer_size=self._client.config.buffer_size)
        if compression_type == CompressionTypes.UNCOMPRESSED:
            return buffered
        return CompressedFile(buffered, compression_type=compression_type)

    def exists(self, path: str) -> bool:
        try:
            _stat(self._client, path)
        except HttpNotFoundError:
            return False
        return True

    def size(self, path: str) -> int:
        return self.metadata(path).size_in_bytes

    def last_updated(self, path: str) -> float:
        stat = _stat(self._client, path)
        if stat.last_modified is None:
            raise BeamIOError(f"No Last-Modified header for {path}")
        return stat.last_modified

    def checksum(self, path: str) -> str:
        """The ETag, or the size where the server sends none (as FileSystem allows)."""
        stat = _stat(self._client, path)
        return stat.etag or str(stat.size)

    def metadata(self, path: str) -> FileMetadata:
        stat = _stat(self._client, path)
        return FileMetadata(path, stat.size, stat.last_modified or 0.0)

    # -- writing: not over HTTP ----------------------------------------------------------------

    def _read_only(self, operation: str, paths: Iterable[str]) -> BeamIOError:
        return BeamIOError(f"{self.scheme()}:// filesystem is read-only: cannot {operation} {list(paths)}")

    def mkdirs(self, path: str) -> None:
        raise self._read_only("mkdirs", [path])

    def create(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        raise self._read_only("create", [path])

    def copy(self, source_file_names, destination_file_names) -> None:
        raise self._read_only("copy", source_file_names)

    def rename(self, source_file_names, destination_file_names) -> None:
        raise self._read_only("rename", source_file_names)

    def delete(self, paths) -> None:
        raise self._read_only("delete", paths)


class HttpsFileSystem(HttpFileSystem):
    """Same as HttpFileSystem for https:// (FileSystems wants exactly one class per scheme)."""

    @classmethod
    def scheme(cls) -> str:
        return "https"


def expand_path_listing(listing_path: str, prefix: str) -> list[str]:
    """Read a Common Crawl `*.paths[.gz]` listing (any Beam scheme) into absolute paths.

    Blank lines and `#` comments are dropped; relative entries are joined to `prefix`
    (e.g. "https://data.commoncrawl.org/" or "s3://commoncrawl/"); entries that are already
    absolute (contain "://" or start with "/") are kept as they are.
    """
    path_part = urllib.parse.urlsplit(listing_path).path if "://" in listing_path else listing_path
    compression = CompressionTypes.GZIP if path_part.lower().endswith(".gz") else CompressionTypes.UNCOMPRESSED
    chunks = []
    with FileSystems.open(listing_path, compression_type=compression) as f:
        # CompressedFile.read() needs a size (read(None) raises TypeError in Beam 2.62).
        while chunk := f.read(1 << 20):
            chunks.append(chunk)
    paths = []
    for line in b"".join(chunks).decode("utf-8").splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        if "://" in entry or entry.startswith("/") or not prefix:
            paths.append(entry)
        else:
            paths.append(prefix.rstrip("/") + "/" + entry)
    return paths
