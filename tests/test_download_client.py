"""The async image downloader against real servers on 127.0.0.1 (no internet)."""

import asyncio
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from crawl2clip.transforms.download.client import (
    AsyncFetcher,
    FetchOptions,
    Fetcher,
    backoff_delay,
    fetch_all,
    _batch,
    _OrderedSlots,
    fetch_batch,
    parse_retry_after,
)
from tests.hostile_server import Reply, scripted_server
from tests.http_server import serve_directory

PHOTOS = "/work/shared/data/photos"


def _photo(name: str = "123_456.jpg") -> bytes:
    with open(os.path.join(PHOTOS, name), "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    if not os.path.isdir(PHOTOS):
        pytest.skip(f"{PHOTOS} not available")
    return _photo()


def local(**overrides) -> FetchOptions:
    """Options for tests on 127.0.0.1: private addresses allowed, short timeouts and backoffs."""
    values = dict(allow_private_networks=True, trust_env=False, total_timeout=3.0, connect_timeout=2.0,
                  backoff_base=0.05, backoff_cap=0.2)
    values.update(overrides)
    return FetchOptions(**values)


ROBOTS_404 = {"/robots.txt": Reply(404, b"no robots")}


def test_real_photos_arrive_byte_for_byte():
    names = sorted(n for n in os.listdir(PHOTOS) if n.endswith(".jpg"))[:4] if os.path.isdir(PHOTOS) else []
    if not names:
        pytest.skip("no photos")
    routes = {f"/{n}": Reply(body=_photo(n), headers={"Content-Type": "image/jpeg"}) for n in names}
    with scripted_server({**ROBOTS_404, **routes}) as server:
        results = fetch_batch([f"{server.url}/{n}" for n in names], local())
    assert [r.status for r in results] == ["success"] * len(names)
    assert [r.data for r in results] == [_photo(n) for n in names]
    assert [r.url for r in results] == [f"{server.url}/{n}" for n in names]
    assert all(r.attempts == 1 and r.http_status == 200 and r.content_type == "image/jpeg" for r in results)
    assert server.paths().count("/robots.txt") == 1  # once per site


def test_404_is_not_retried():
    with scripted_server(ROBOTS_404) as server:
        [result] = fetch_batch([server.url + "/missing.jpg"], local())
    assert (result.status, result.http_status, result.attempts, result.retryable) == ("http_404", 404, 1, False)
    assert server.paths().count("/missing.jpg") == 1


def test_500_then_200_is_retried(jpeg):
    with scripted_server({**ROBOTS_404, "/flaky.jpg": [Reply(500, b"oops"), Reply(body=jpeg)]}) as server:
        [result] = fetch_batch([server.url + "/flaky.jpg"], local())
    assert result.status == "success" and result.attempts == 2 and result.data == jpeg


def test_persistent_503_gives_up_after_retries():
    with scripted_server({**ROBOTS_404, "/down.jpg": Reply(503, b"down")}) as server:
        [result] = fetch_batch([server.url + "/down.jpg"], local(retries=2))
    assert (result.status, result.attempts, result.retryable) == ("http_503", 3, True)


def test_429_retry_after_is_honoured(jpeg):
    routes = {**ROBOTS_404, "/busy.jpg": [Reply(429, b"slow down", {"Retry-After": "1"}), Reply(body=jpeg)]}
    with scripted_server(routes) as server:
        [result] = fetch_batch([server.url + "/busy.jpg"], local())
        times = [r.time for r in server.requests if r.path == "/busy.jpg"]
    assert result.status == "success" and result.attempts == 2
    assert times[1] - times[0] >= 0.95


def test_retry_after_over_the_cap_gives_up():
    routes = {**ROBOTS_404, "/busy.jpg": Reply(429, b"", {"Retry-After": "3600"})}
    with scripted_server(routes) as server:
        [result] = fetch_batch([server.url + "/busy.jpg"], local(retry_after_cap=30))
    assert (result.status, result.attempts, result.retryable) == ("http_429", 1, True)


def test_stalling_server_times_out(jpeg):
    with scripted_server({**ROBOTS_404, "/stall.jpg": Reply(body=jpeg, delay=3)}) as server:
        start = time.monotonic()
        [result] = fetch_batch([server.url + "/stall.jpg"], local(total_timeout=0.5, retries=0))
    assert (result.status, result.retryable) == ("timeout", True)
    assert time.monotonic() - start < 2.5


def test_redirect_loop_is_cut(jpeg):
    routes = {**ROBOTS_404, "/a.jpg": Reply(302, headers={"Location": "/b.jpg"}),
              "/b.jpg": Reply(301, headers={"Location": "/a.jpg"})}
    with scripted_server(routes) as server:
        [result] = fetch_batch([server.url + "/a.jpg"], local(max_redirects=3))
    assert result.status == "too_many_redirects" and result.attempts == 1
    policy_files = ("/robots.txt", "/.well-known/tdmrep.json")
    assert len([p for p in server.paths() if p not in policy_files]) == 4  # the first request + 3 hops


def test_redirect_is_followed(jpeg):
    routes = {**ROBOTS_404, "/old.jpg": Reply(301, headers={"Location": "/new.jpg"}), "/new.jpg": Reply(body=jpeg)}
    with scripted_server(routes) as server:
        [result] = fetch_batch([server.url + "/old.jpg"], local())
    assert result.status == "success" and result.data == jpeg


def test_redirect_to_a_robots_disallowed_path_is_not_requested(jpeg):
    routes = {"/robots.txt": Reply(body=b"User-agent: *\nDisallow: /private/\n"),
              "/go.jpg": Reply(302, headers={"Location": "/private/x.jpg"}), "/private/x.jpg": Reply(body=jpeg)}
    with scripted_server(routes) as server:
        [result] = fetch_batch([server.url + "/go.jpg"], local())
    assert result.status == "robots_disallowed"
    assert "/private/x.jpg" not in server.paths()


def test_truncated_body(jpeg):
    routes = {**ROBOTS_404, "/cut.jpg": Reply(body=jpeg[:1000], content_length=len(jpeg))}
    with scripted_server(routes) as server:
        [result] = fetch_batch([server.url + "/cut.jpg"], local(retries=0))
    assert (result.status, result.retryable) == ("truncated", True)


def test_magic_bytes_win_over_content_type(jpeg):
    routes = {**ROBOTS_404, "/photo": Reply(body=jpeg, headers={"Content-Type": "text/html"}),
              "/fake.jpg": Reply(body=b"<html>" + b"x" * 5000, headers={"Content-Type": "image/jpeg"})}
    with scripted_server(routes) as server:
        real, fake = fetch_batch([server.url + "/photo", server.url + "/fake.jpg"], local())
    assert real.status == "success" and real.data == jpeg and real.content_type == "text/html"
    assert (fake.status, fake.retryable, fake.data) == ("not_an_image", False, None)


def test_too_large_by_content_length(jpeg):
    with scripted_server({**ROBOTS_404, "/big.jpg": Reply(body=jpeg)}) as server:
        [big] = fetch_batch([server.url + "/big.jpg"], local(max_bytes=1000))
    assert (big.status, big.retryable, big.data) == ("too_large", False, None)
    assert "Content-Length" in big.error_message


def test_too_large_while_streaming(jpeg):
    # Content-Length absent (HTTP/1.0-style close-delimited body): only the running count can tell.
    import http.server
    import socketserver
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"
        timeout = 5

        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(404 if self.path == "/robots.txt" else 200)
            self.end_headers()
            if self.path != "/robots.txt":
                self.wfile.write(jpeg)

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/stream.jpg"
        big, fits = fetch_batch([url], local(max_bytes=1000)), fetch_batch([url], local())
    finally:
        server.shutdown()
        server.server_close()
    assert big[0].status == "too_large" and "more than 1000 bytes" in big[0].error_message
    assert fits[0].status == "success" and fits[0].data == jpeg


def test_robots_disallow_means_the_image_is_never_requested(jpeg):
    routes = {"/robots.txt": Reply(body=b"User-agent: crawl2clip\nDisallow: /img/\n"),
              "/img/a.jpg": Reply(body=jpeg), "/ok.jpg": Reply(body=jpeg)}
    with scripted_server(routes) as server:
        blocked, allowed = fetch_batch([server.url + "/img/a.jpg", server.url + "/ok.jpg"], local())
    assert (blocked.status, blocked.retryable, blocked.attempts) == ("robots_disallowed", False, 1)
    assert allowed.status == "success"
    assert "/img/a.jpg" not in server.paths()
    assert server.paths().count("/robots.txt") == 1


def test_robots_404_allows_and_robots_500_disallows(jpeg):
    with scripted_server({**ROBOTS_404, "/a.jpg": Reply(body=jpeg)}) as server:
        [result] = fetch_batch([server.url + "/a.jpg"], local())
    assert result.status == "success"
    with scripted_server({"/robots.txt": Reply(500, b"boom"), "/a.jpg": Reply(body=jpeg)}) as server:
        [result] = fetch_batch([server.url + "/a.jpg"], local())
        assert result.status == "robots_disallowed"
        assert server.paths() == ["/robots.txt"]  # and never retried within the run


def test_respect_robots_false_skips_robots(jpeg):
    with scripted_server({"/robots.txt": Reply(500), "/a.jpg": Reply(body=jpeg)}) as server:
        [result] = fetch_batch([server.url + "/a.jpg"], local(respect_robots=False, respect_tdmrep=False))
    assert result.status == "success" and server.paths() == ["/a.jpg"]


def test_x_robots_tag_noai(jpeg):
    routes = {**ROBOTS_404, "/a.jpg": Reply(body=jpeg, headers={"X-Robots-Tag": "noai"}),
              "/other.jpg": Reply(body=jpeg, headers={"X-Robots-Tag": "otherbot: noai"})}
    with scripted_server(routes) as server:
        tagged, other = fetch_batch([server.url + "/a.jpg", server.url + "/other.jpg"], local())
    assert (tagged.status, tagged.data, tagged.http_status) == ("x_robots_tag", None, 200)
    assert "noai" in tagged.error_message
    assert other.status == "success"


def test_private_address_is_refused_before_any_request(jpeg):
    with scripted_server({**ROBOTS_404, "/a.jpg": Reply(body=jpeg)}) as server:
        options = local(allow_private_networks=False)
        results = fetch_batch([f"http://localhost:{server.port}/a.jpg", server.url + "/a.jpg"], options)
    assert [r.status for r in results] == ["unsafe_address", "unsafe_address"]
    assert not any(r.retryable for r in results)
    assert server.requests == []


def test_any_private_address_among_public_ones_is_refused():
    def resolver(host, port, type=0):  # a hostile DNS answer: one public, one private address
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("169.254.169.254", port))]

    [result] = fetch_batch(["http://rebind.test/a.jpg"], FetchOptions(trust_env=False), resolver=resolver)
    assert result.status == "unsafe_address" and "169.254.169.254" in result.error_message


def test_bad_urls_and_dns_errors():
    def resolver(host, port, type=0):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    results = fetch_batch(["ftp://example.com/a.jpg", "http:///a.jpg", "http://[::1/a.jpg", "http://nowhere.test/a.jpg"],
                          local(), resolver=resolver)
    assert [r.status for r in results] == ["bad_url", "bad_url", "bad_url", "dns_error"]


def test_connection_refused_is_retryable():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    [result] = fetch_batch([f"http://127.0.0.1:{port}/a.jpg"], local(retries=1, respect_robots=False))
    assert (result.status, result.retryable, result.attempts) == ("connection_error", True, 2)


def test_per_host_limit_across_hosts(jpeg):
    hosts = [f"h{i}.test" for i in range(4)]
    routes = {**ROBOTS_404, **{f"/{i}.jpg": Reply(body=jpeg, delay=0.15) for i in range(6)}}
    with scripted_server(routes) as server:
        resolved = []

        def resolver(host, port, type=0):
            resolved.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]

        urls = [f"http://{h}:{server.port}/{i}.jpg" for h in hosts for i in range(6)]
        start = time.monotonic()
        results = fetch_batch(urls, local(max_per_host=2, max_concurrency=64), resolver=resolver)
        elapsed = time.monotonic() - start
    assert [r.status for r in results] == ["success"] * len(urls)
    assert set(server.max_concurrency) == set(hosts)
    assert max(server.max_concurrency.values()) == 2
    assert sorted(resolved) == sorted(hosts)  # one resolution per host: robots + 6 images share it
    assert elapsed < 6 * 0.15 + 1.5  # the hosts ran in parallel: 3 rounds of 0.15 s per host, not 12


def test_proxy_option(jpeg):
    # The directory server accepts absolute-form request lines, so it can play the proxy; the
    # proxy's private address is trusted configuration, the target name is left to the proxy.
    with serve_directory(PHOTOS) as proxy:
        options = local(proxy=proxy.url, allow_private_networks=False)
        ok, literal = fetch_batch(["http://images.example.invalid/123_456.jpg", "http://10.0.0.5/123_456.jpg"],
                                  options)
    assert ok.status == "success" and ok.data == jpeg
    assert [r.path for r in proxy.requests] == ["http://images.example.invalid/robots.txt",
                                                "http://images.example.invalid/.well-known/tdmrep.json",
                                                "http://images.example.invalid/123_456.jpg"]
    assert literal.status == "unsafe_address"  # an IP-literal target is still judged by the guard


def test_proxy_from_environment(jpeg, monkeypatch):
    with serve_directory(PHOTOS) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        [result] = fetch_batch(["http://images.example.invalid/123_456.jpg"], local(trust_env=True))
    assert result.status == "success" and result.data == jpeg
    assert proxy.requests[-1].path == "http://images.example.invalid/123_456.jpg"


def test_fetcher_keeps_caches_across_batches(jpeg):
    with scripted_server({**ROBOTS_404, "/a.jpg": Reply(body=jpeg), "/b.jpg": Reply(body=jpeg)}) as server:
        with Fetcher(local()) as fetcher:
            first = fetcher.fetch_batch([server.url + "/a.jpg"])
            second = fetcher.fetch_batch([server.url + "/b.jpg"])
            assert len(fetcher.robots) == 1
    assert first[0].status == second[0].status == "success"
    assert server.paths() == ["/robots.txt", "/.well-known/tdmrep.json", "/a.jpg", "/b.jpg"]


def _many_hosts(host_names: list[str]):
    """A resolver answering 127.0.0.1 for every name: many 'sites' on one test server."""
    def resolver(host, port, type=0):
        assert host in host_names
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
    return resolver


def test_submit_returns_at_once_and_hands_each_body_to_then_on_the_executor(jpeg):
    hosts = [f"{batch}{i}.test" for batch in "ab" for i in range(3)]
    routes = {**ROBOTS_404, "/x.jpg": Reply(body=jpeg, delay=0.2)}
    with scripted_server(routes) as server, ThreadPoolExecutor(2, thread_name_prefix="check") as pool:
        with Fetcher(local(), resolver=_many_hosts(hosts)) as fetcher:
            def then(result):
                return result.url, result.status, result.data == jpeg, threading.current_thread().name

            started = time.monotonic()
            first = fetcher.submit([f"http://{h}:{server.port}/x.jpg" for h in hosts[:3]], then, pool)
            second = fetcher.submit([f"http://{h}:{server.port}/x.jpg" for h in hosts[3:]], then, pool)
            assert time.monotonic() - started < 0.1 and not first.done()
            results = first.result(timeout=30) + second.result(timeout=30)
    assert [(url, status, same) for url, status, same, _ in results] == [
        (f"http://{h}:{server.port}/x.jpg", "success", True) for h in hosts]
    assert all(thread.startswith("check") for *_, thread in results)
    assert sorted(r.host.split(":")[0] for r in server.requests) == sorted(hosts * 3)  # robots.txt, tdmrep.json, image


def test_ordered_slots_serve_the_earliest_batch_first_and_skip_cancelled_waiters():
    async def scenario():
        slots, order = _OrderedSlots(1), []
        await slots.acquire()

        async def take(batch: int, name: str):
            _batch.set(batch)
            await slots.acquire()
            order.append(name)
            await asyncio.sleep(0)
            slots.release()

        tasks = [asyncio.create_task(take(batch, name)) for batch, name in [(2, "b1"), (1, "a1"), (2, "b2"), (1, "a2")]]
        cancelled = asyncio.create_task(take(0, "gone"))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        await asyncio.sleep(0.01)
        slots.release()
        await asyncio.gather(*tasks)
        await slots.acquire()  # the cancelled waiter did not keep the slot
        return order

    assert asyncio.run(scenario()) == ["a1", "a2", "b1", "b2"]


def test_submit_stops_fetching_while_then_falls_behind(jpeg):
    """With `then` stuck, at most 2 x max_concurrency URLs are fetched: bodies cannot pile up."""
    release = threading.Event()
    with scripted_server({**ROBOTS_404, **{f"/{i}.jpg": Reply(body=jpeg) for i in range(8)}}) as server, \
            ThreadPoolExecutor(8) as pool, Fetcher(local(max_concurrency=1)) as fetcher:
        future = fetcher.submit([f"{server.url}/{i}.jpg" for i in range(8)], lambda r: release.wait(10) and r.ok, pool)
        time.sleep(0.5)
        fetched_while_stuck = [p for p in server.paths() if p.endswith(".jpg")]
        release.set()
        assert future.result(timeout=30) == [True] * 8
    assert len(fetched_while_stuck) == 2
    assert len([p for p in server.paths() if p.endswith(".jpg")]) == 8


def test_async_api_and_empty_batch(jpeg):
    with scripted_server({**ROBOTS_404, "/a.jpg": Reply(body=jpeg)}) as server:
        results = asyncio.run(fetch_all([server.url + "/a.jpg", server.url + "/nope.jpg"], local()))

        async def reuse():
            async with AsyncFetcher(local()) as fetcher:
                return await fetcher.fetch_all([])

        assert asyncio.run(reuse()) == []
    assert [r.status for r in results] == ["success", "http_404"]


def test_retry_after_parsing_and_backoff():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480 - 10) == pytest.approx(10.0)
    options = FetchOptions(backoff_base=0.5, backoff_cap=3.0)
    delays = [backoff_delay(n, options) for n in range(1, 8)]
    assert 0.25 <= delays[0] <= 0.5 and 0.5 <= delays[1] <= 1.0
    assert all(d <= 3.0 for d in delays)
