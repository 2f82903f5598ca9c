"""Test helper: a real HTTP server on 127.0.0.1 serving a directory, optionally hostile.

    with serve_directory(tmp_path, fail_first=2, drop_after_bytes=1000) as server:
        FileSystems.open(server.url + "/file.warc.gz")
        server.requests  # [RecordedRequest(method, path, headers), ...]

Supports GET and HEAD, single `Range: bytes=a-b | a- | -n` (206 + Content-Range, 416 when
unsatisfiable), Content-Length, ETag and Last-Modified. Absolute-form request lines
(`GET http://host/path`) are accepted, so the server can also stand in for a forward proxy.
Every request is answered within `timeout` seconds and at most `max_requests` are served, so a
client stuck in a retry loop ends quickly with a 400.
"""

from __future__ import annotations

import contextlib
import dataclasses
import email.utils
import functools
import os
import re
import socket
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator, NamedTuple, Optional

_CHUNK = 64 << 10


class RecordedRequest(NamedTuple):
    method: str
    path: str  # as sent on the request line (absolute-form when sent through a proxy)
    headers: dict[str, str]  # names in Title-Case ("User-Agent", "Range")


@dataclasses.dataclass
class Hostility:
    fail_first: int = 0  # answer the first N requests (any method) with fail_status
    fail_status: int = 503
    retry_after: Optional[str] = None  # Retry-After header on those failures
    drop_after_bytes: Optional[int] = None  # once: cut the first longer GET body after K bytes
    ignore_range: bool = False  # always 200 with the whole file
    refuse_head: bool = False  # 405 for HEAD (like presigned S3 URLs)
    require_headers: dict[str, str] = dataclasses.field(default_factory=dict)  # name -> prefix, else 403
    max_requests: int = 500
    timeout: float = 5.0  # socket timeout per connection


@dataclasses.dataclass
class ServedDirectory:
    url: str  # http://127.0.0.1:PORT
    root: str
    options: Hostility
    requests: list[RecordedRequest] = dataclasses.field(default_factory=list)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)
    _dropped: bool = False

    def url_for(self, name: str) -> str:
        return f"{self.url}/{urllib.parse.quote(name)}"

    def methods(self) -> list[str]:
        return [r.method for r in self.requests]

    def ranges(self) -> list[Optional[str]]:
        """The Range header of every GET, None where absent."""
        return [r.headers.get("Range") for r in self.requests if r.method == "GET"]

    def _record(self, request: RecordedRequest) -> int:
        with self._lock:
            self.requests.append(request)
            return len(self.requests)

    def _take_drop(self, body_length: int) -> Optional[int]:
        with self._lock:
            limit = self.options.drop_after_bytes
            if limit is None or self._dropped or body_length <= limit:
                return None
            self._dropped = True
            return limit


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def _parse_range(header: str, size: int) -> Optional[tuple[int, int]]:
    """(first, last) inclusive; None to ignore the header (multi-range or bad syntax, which
    RFC 9110 lets a server ignore); raises ValueError when unsatisfiable."""
    m = _RANGE.match(header.replace(" ", ""))
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # suffix: the last n bytes
        n = int(m.group(2))
        if n == 0 or size == 0:
            raise ValueError(header)
        return max(0, size - n), size - 1
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else size - 1
    if last < first:
        return None
    if first >= size:
        raise ValueError(header)
    return first, min(last, size - 1)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def __init__(self, *args, served: ServedDirectory, **kwargs) -> None:
        self.served = served
        self.timeout = served.options.timeout  # StreamRequestHandler applies it to the socket
        super().__init__(*args, **kwargs)

    def log_message(self, format, *args) -> None:  # keep test output quiet
        pass

    def do_GET(self) -> None:
        self._serve(head=False)

    def do_HEAD(self) -> None:
        self._serve(head=True)

    def _reply(self, status: int, headers: Optional[dict[str, str]] = None, body: bytes = b"") -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _serve(self, head: bool) -> None:
        served, opts = self.served, self.served.options
        count = served._record(RecordedRequest(self.command, self.path, {k.title(): v for k, v in self.headers.items()}))
        if count > opts.max_requests:
            self.close_connection = True
            return self._reply(400, body=b"request budget exhausted")
        if count <= opts.fail_first:
            headers = {"Retry-After": opts.retry_after} if opts.retry_after else {}
            return self._reply(opts.fail_status, headers, b"try again")
        for name, prefix in opts.require_headers.items():
            if not self.headers.get(name, "").startswith(prefix):
                return self._reply(403, body=f"missing header {name}".encode())
        if head and opts.refuse_head:
            return self._reply(405, {"Allow": "GET"})

        path = self._local_path()
        if path is None:
            return self._reply(404, body=b"not found")
        stat = os.stat(path)
        size = stat.st_size
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "none" if opts.ignore_range else "bytes",
            "ETag": f'"{size:x}-{stat.st_mtime_ns:x}"',
            "Last-Modified": email.utils.formatdate(stat.st_mtime, usegmt=True),
        }
        status, first, last = 200, 0, size - 1
        if self.headers.get("Range") and not opts.ignore_range:
            try:
                span = _parse_range(self.headers["Range"], size)
            except ValueError:
                return self._reply(416, {"Content-Range": f"bytes */{size}"})
            if span is not None:
                status, (first, last) = 206, span
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        length = last - first + 1

        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if not head:
            self._send_body(path, first, length)

    def _local_path(self) -> Optional[str]:
        # urlsplit handles both "/a/b?q" and the proxy form "http://host/a/b?q".
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        root = os.path.realpath(self.served.root)
        path = os.path.realpath(os.path.join(root, rel))
        if not path.startswith(root + os.sep) or not os.path.isfile(path):
            return None
        return path

    def _send_body(self, path: str, first: int, length: int) -> None:
        drop_at = self.served._take_drop(length)
        try:
            with open(path, "rb") as f:
                f.seek(first)
                remaining = length if drop_at is None else drop_at
                while remaining:
                    data = f.read(min(_CHUNK, remaining))
                    if not data:
                        break
                    self.wfile.write(data)
                    remaining -= len(data)
            if drop_at is not None:  # promised `length` bytes, sent fewer: cut the connection
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client went away, e.g. after a seek


@contextlib.contextmanager
def serve_directory(path: str | os.PathLike, **hostile_options) -> Iterator[ServedDirectory]:
    """Serve `path` on an ephemeral 127.0.0.1 port; keyword options are `Hostility` fields."""
    served = ServedDirectory(url="", root=os.fspath(path), options=Hostility(**hostile_options))
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, served=served))
    server.daemon_threads = True  # never wait on a stuck handler at shutdown
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
