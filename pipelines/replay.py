"""A web-archive replay proxy: answers absolute-form proxy requests (`GET http://host/path`) with
the responses stored in a WARC, byte for byte, and 404 for anything the archive lacks.

The demo downloads its sample crawl's images through it (`--proxy`), and the tests replay real
archives with it, so no request leaves the machine. Bound to 127.0.0.1, bounded in requests.
`latency` holds each answer back that long (a far server: benchmarks, and tests that act while
downloads are under way); `requested` lists each request as it arrives."""

import contextlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fastwarc.warc import ArchiveIterator


def archived_responses(warc_path: str) -> dict[str, tuple[int, list[tuple[str, str]], bytes]]:
    responses = {}
    for record in ArchiveIterator(warc_path, parse_http=True):
        if record.headers.get("WARC-Type") == "response":
            http = record.http_headers
            headers = [(k, v) for k, v in http.items() if k.lower() not in ("transfer-encoding", "content-length",
                                                                            "content-encoding", "connection")]
            responses[record.headers["WARC-Target-URI"]] = (http.status_code, headers, record.reader.read())
    return responses


@contextlib.contextmanager
def replay_proxy(warc_path: str, max_requests: int = 2000, latency: float = 0.0):
    responses = archived_responses(warc_path)
    requested: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            requested.append(self.path)
            if len(requested) > max_requests:
                self.send_error(503)
                return
            if latency:
                time.sleep(latency)
            status, headers, body = responses.get(self.path, (404, [("Content-Type", "text/plain")], b"not archived"))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", requested
    finally:
        server.shutdown()
        server.server_close()
