"""Test helper: a scripted HTTP server on 127.0.0.1 for the downloader's tests.

    with scripted_server({"/a.jpg": Reply(body=jpeg), "/flaky": [Reply(500), Reply(body=jpeg)]}) as server:
        server.url + "/a.jpg"
        server.requests             # [(method, path, host header, monotonic time), ...]
        server.max_concurrency      # {host header without port: most requests in flight at once}

A route is a Reply, a list of Replies (the n-th request gets the n-th, the last one repeats) or a
callable(path) -> Reply. Unknown paths get 404. Every connection has a socket timeout, at most
`max_requests` requests are served (then 400), and stalls sleep at most `max_delay` seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Iterator, NamedTuple, Optional, Union


@dataclasses.dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict = dataclasses.field(default_factory=dict)
    content_length: Optional[int] = None  # declared length; default len(body)
    delay: float = 0.0  # seconds to sleep before answering (a stall when past the client's timeout)


Route = Union[Reply, list, Callable[[str], Reply]]


class Request(NamedTuple):
    method: str
    path: str
    host: str
    time: float


@dataclasses.dataclass
class ScriptedServer:
    routes: dict
    max_requests: int = 200
    max_delay: float = 5.0
    url: str = ""
    port: int = 0
    requests: list = dataclasses.field(default_factory=list)
    max_concurrency: dict = dataclasses.field(default_factory=dict)
    _in_flight: dict = dataclasses.field(default_factory=dict)
    _counts: dict = dataclasses.field(default_factory=dict)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def _enter(self, request: Request) -> tuple[int, int]:
        host = request.host.rsplit(":", 1)[0] if not request.host.endswith("]") else request.host
        with self._lock:
            self.requests.append(request)
            self._counts[request.path] = self._counts.get(request.path, 0) + 1
            self._in_flight[host] = self._in_flight.get(host, 0) + 1
            self.max_concurrency[host] = max(self.max_concurrency.get(host, 0), self._in_flight[host])
            return len(self.requests), self._counts[request.path]

    def _leave(self, host_header: str) -> None:
        host = host_header.rsplit(":", 1)[0] if not host_header.endswith("]") else host_header
        with self._lock:
            self._in_flight[host] -= 1

    def _reply_for(self, path: str, nth: int) -> Reply:
        route = self.routes.get(path.split("?", 1)[0])
        if route is None:
            return Reply(404, b"not found")
        if isinstance(route, Reply):
            return route
        if isinstance(route, list):
            return route[min(nth, len(route)) - 1]
        return route(path)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5

    def __init__(self, *args, served: ScriptedServer, **kwargs) -> None:
        self.served = served
        super().__init__(*args, **kwargs)

    def log_message(self, format, *args) -> None:
        pass

    def do_GET(self) -> None:
        served = self.served
        host = self.headers.get("Host", "")
        count, nth = served._enter(Request(self.command, self.path, host, time.monotonic()))
        try:
            if count > served.max_requests:
                self.close_connection = True
                reply = Reply(400, b"request budget exhausted")
            else:
                reply = served._reply_for(self.path, nth)
            if reply.delay:
                time.sleep(min(reply.delay, served.max_delay))
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                for item in value if isinstance(value, list) else [value]:
                    self.send_header(name, item)
            declared = len(reply.body) if reply.content_length is None else reply.content_length
            self.send_header("Content-Length", str(declared))
            if declared != len(reply.body):
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            self.wfile.write(reply.body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            served._leave(host)


@contextlib.contextmanager
def scripted_server(routes: dict, max_requests: int = 200, max_delay: float = 5.0) -> Iterator[ScriptedServer]:
    served = ScriptedServer(routes=routes, max_requests=max_requests, max_delay=max_delay)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, served=served))
    server.daemon_threads = True
    served.port = server.server_address[1]
    served.url = f"http://127.0.0.1:{served.port}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
