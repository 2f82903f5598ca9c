"""Fetch many image URLs politely and safely: asyncio + aiohttp, img2dataset-style.

    with Fetcher(FetchOptions()) as fetcher:        # e.g. in a Beam DoFn's setup()
        results = fetcher.fetch_batch(urls)         # list[FetchResult], same order as `urls`
        future = fetcher.submit(urls, then=check_and_resize, executor=pool)   # returns at once

    results = await fetch_all(urls, options)        # from async code

Per URL, per attempt, per redirect hop:

    check_url -> check_host (the spelling) -> resolve once, guarded (guard.resolve_public)
      -> robots.txt of scheme+host+port -> TDMRep's /.well-known/tdmrep.json of the same
      -> per-host slot, then global slot -> GET (allow_redirects=False)
      -> 3xx: back to the top with the Location (at most `max_redirects` hops)
      -> X-Robots-Tag forbids or `tdm-reservation: 1`? abort before reading the body
      -> Content-Length > max_bytes? abort
      -> stream the body: first bytes must sniff as an image; abort past max_bytes;
         fewer bytes than Content-Length -> 'truncated'

Decisions:

* One resolution per host, no rebinding window. The session's connector uses `GuardedResolver`,
  which answers from this fetcher's DNS cache (filled by `guard.resolve_public` on addresses from
  `loop.getaddrinfo`, i.e. in a thread); aiohttp's own DNS cache is off, so the addresses checked
  are exactly the addresses connected to. The check also runs before each request, so an unsafe
  host is refused before any connection and reported as 'unsafe_address'. Resolutions (and DNS
  failures and refusals) are cached per host name for `dns_cache_ttl` seconds. IP literals never
  reach a resolver in aiohttp; the pre-check judges them with the same guard, in every spelling
  a resolver or proxy reads (`guard.check_host`: `0x7f.1`, `2130706433`, `%31...`, fullwidth), on
  the host as urlsplit parses it and as yarl (so aiohttp) sends it.
* Proxy vs guard. With a proxy (the `proxy` option, or HTTP_PROXY/HTTPS_PROXY/NO_PROXY when
  `trust_env`), aiohttp connects to the proxy and the *proxy* resolves the target name. Target
  names are then NOT resolved here: our answer could differ from the proxy's (so it would not
  protect anything) and in proxy-only networks names do not resolve locally at all. The SSRF
  guard for proxied names is the proxy's egress policy. What is still checked: check_url, and
  check_host: address spellings (`http://10.0.0.5/`, `http://0xa9fea9fe/`) and loopback names
  (`localhost`) are refused before anything reaches the proxy (no DNS needed). The
  proxy's own address is operator configuration and is trusted: it may be private. The
  environment's proxies (and their ~/.netrc credentials) are read once per session; the session
  itself does not trust the environment, so no request sends netrc credentials to an image host.
* robots.txt is fetched once per scheme+host+port (concurrent URLs of one site wait for the same
  fetch), through the same session, guard, slots and timeouts, following up to 5 redirects,
  reading at most 500 KiB, never retried; the final status becomes a policy through
  `RobotsPolicy.from_fetch` (unreachable/timeout -> status None -> everything disallowed) and is
  kept in a `RobotsCache` for the fetcher's lifetime. Every redirect hop is checked against its
  own site's robots.txt before it is requested.
* Retries (`retries` more attempts) only for retryable failures: timeouts, connection errors,
  truncated bodies, 429 and 5xx. Waits: `backoff_base * 2**(n-1)`, times a random factor in
  [0.5, 1], capped at `backoff_cap`; a Retry-After (seconds or HTTP date) on 429/503 is waited
  instead, unless it exceeds `retry_after_cap`, in which case the URL is given up at once
  (still marked retryable, for a later run).
* Slots: the per-host one (keyed by lower-case host name, without port) is taken before the
  global one, so URLs queued behind a busy host do not hold global slots. Slots are held per
  request, never during backoff sleeps.
* Bodies are requested with `Accept-Encoding: identity` and not decompressed, so Content-Length
  and max_bytes count the bytes on the wire.
* `error_message` goes through `messages`: one printable line of at most 500 characters, no
  memory addresses or dumped bytes, so identical runs record identical text.
"""

from __future__ import annotations

import asyncio
import contextvars
import email.utils
import heapq
import itertools
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urljoin, urlsplit
from urllib.request import proxy_bypass

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from crawl2clip.transforms.consent.reservations import tdm_value
from crawl2clip.transforms.consent.tdmrep import TdmrepCache
from crawl2clip.transforms.download.guard import UnsafeAddress, check_host, check_url, resolve_public
from crawl2clip.transforms.download.images import sniff_image_format
from crawl2clip.transforms.download.messages import bounded_message, exception_message
from crawl2clip.transforms.download.robots import (
    MAX_ROBOTS_BYTES,
    RobotsCache,
    RobotsPolicy,
    SingleFlight,
    robots_url,
    x_robots_tag_forbids,
)

DEFAULT_USER_AGENT = "crawl2clip/0.1 (+https://github.com/crawl2clip/crawl2clip)"
_REDIRECTS = (301, 302, 303, 307, 308)
PROXY_SCHEMES = ("http", "https")
_ROBOTS_MAX_REDIRECTS = 5  # RFC 9309: follow at least five
_SNIFF_BYTES = 256  # enough for every format sniff_image_format knows
_CHUNK = 64 << 10
T = TypeVar("T")


@dataclass(frozen=True)
class FetchOptions:
    user_agent: str = DEFAULT_USER_AGENT
    robots_token: str = "crawl2clip"
    max_concurrency: int = 64
    max_per_host: int = 8
    connect_timeout: float = 5.0
    total_timeout: float = 20.0  # per request (one hop of one attempt), body included
    max_redirects: int = 3
    retries: int = 2  # extra attempts after the first, for retryable failures only
    backoff_base: float = 0.5
    backoff_cap: float = 10.0
    retry_after_cap: float = 30.0
    max_bytes: int = 20 * 1024 * 1024
    allow_private_networks: bool = False
    proxy: str | None = None
    trust_env: bool = True  # HTTP_PROXY / HTTPS_PROXY / NO_PROXY (and netrc proxy auth)
    forbidden_x_robots: tuple[str, ...] = ("noai", "noimageai", "noindex", "noimageindex")
    respect_robots: bool = True
    respect_tdmrep: bool = True  # tdmrep.json fetched like robots.txt (transforms/consent/tdmrep.py)
    dns_cache_ttl: float = 300.0


@dataclass
class FetchResult:
    url: str
    status: str  # 'success' or an error category
    error_message: str | None = None
    data: bytes | None = None
    http_status: int | None = None
    content_type: str | None = None
    attempts: int = 0
    retryable: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "success"


class _Failure(Exception):
    def __init__(self, status: str, message: str = "", http_status: int | None = None,
                 retryable: bool = False, retry_after: float | None = None, content_type: str | None = None):
        super().__init__(f"{status}: {message}" if message else status)
        self.status = status
        self.message = message or status
        self.http_status = http_status
        self.retryable = retryable
        self.retry_after = retry_after
        self.content_type = content_type


def proxy_url_problem(url: str) -> str | None:
    """Why `url` cannot be the proxy, or None. aiohttp speaks to http and https proxies only; with
    anything else every request would fail, robots.txt too, so every row would read as disallowed."""
    if "://" not in url:
        return "no scheme"
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError on a port that is not a number in 0..65535
    except ValueError:
        return "not a URL"
    if parts.scheme.lower() not in PROXY_SCHEMES:
        return f"scheme {parts.scheme!r} is not http or https"
    if not parts.hostname:
        return "no host"
    return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff_delay(attempt: int, options: FetchOptions, rng: random.Random | None = None) -> float:
    """Wait before attempt `attempt + 1` (attempt >= 1): exponential, jittered, capped."""
    jitter = (rng or random).uniform(0.5, 1.0)
    return min(options.backoff_cap, options.backoff_base * 2 ** (attempt - 1)) * jitter


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that answers from the fetcher's guarded DNS cache.

    Hosts in `trusted` (the proxies) are resolved without the guard."""

    def __init__(self, fetcher: "AsyncFetcher"):
        self._fetcher = fetcher

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
        addresses = await self._fetcher._resolve(host, port, guarded=host.lower() not in self._fetcher._proxy_hosts)
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": socket.AI_NUMERICHOST,
            }
            for address in addresses
        ]

    async def close(self) -> None:
        pass


class AsyncFetcher:
    """Keeps one aiohttp session, DNS cache and robots cache; use from one event loop."""

    def __init__(self, options: FetchOptions | None = None, resolver=None, robots_cache: RobotsCache | None = None):
        """`resolver`: a getaddrinfo-like callable (run in a thread) instead of loop.getaddrinfo."""
        self.options = options or FetchOptions()
        self.robots = robots_cache if robots_cache is not None else RobotsCache()
        self.tdmrep = TdmrepCache()
        self._getaddrinfo = resolver
        self._session: aiohttp.ClientSession | None = None
        self._dns: dict[str, tuple[float, list[str] | BaseException]] = {}
        self._dns_pending: dict[str, asyncio.Future] = {}
        self._robots_fetches = SingleFlight()
        self._host_slots: dict[str, list] = {}  # host -> [semaphore, users]
        self._global_slots: _OrderedSlots | None = None
        self._url_slots: _OrderedSlots | None = None
        self._batches = itertools.count()
        self._proxy_hosts: set[str] = set()
        self._env_proxies: dict = {}
        if self.options.proxy:
            self._proxy_hosts.add((URL(self.options.proxy).host or "").lower())

    # -- lifecycle ---------------------------------------------------------------------------

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            o = self.options
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(self),
                use_dns_cache=False,  # our cache is the only one: checked == connected
                limit=o.max_concurrency + 8,
                limit_per_host=0,  # our per-host slots decide
            )
            # The environment's proxies are read here, once: aiohttp's own trust_env would look
            # them (and ~/.netrc) up again in a thread for every request.
            self._env_proxies = aiohttp.helpers.proxies_from_env() if o.trust_env and not o.proxy else {}
            self._proxy_hosts.update((info.proxy.host or "").lower() for info in self._env_proxies.values())
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,
                auto_decompress=False,
                headers={"User-Agent": o.user_agent, "Accept-Encoding": "identity"},
                timeout=aiohttp.ClientTimeout(total=o.total_timeout, connect=o.connect_timeout),
            )
            self._global_slots = _OrderedSlots(o.max_concurrency)
            self._url_slots = _OrderedSlots(2 * o.max_concurrency)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> "AsyncFetcher":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    # -- public ------------------------------------------------------------------------------

    async def fetch_all(self, urls: list[str], then: Callable[[FetchResult], T] | None = None,
                        executor: Executor | None = None) -> list:
        """Results in the order of `urls`. With `then`, each result is handed to `then` on
        `executor` as soon as it arrives and its return value takes the result's place: CPU work on
        the bodies (decoding, resizing) overlaps the network, and a body is dropped once used.
        Then at most 2 x max_concurrency URLs are between their first request and the end of
        `then`, so bodies cannot pile up in memory when the CPUs fall behind the network."""
        self._ensure_session()
        _batch.set(next(self._batches))  # inherited by the tasks gather creates
        if then is None:
            return list(await asyncio.gather(*(self.fetch_one(url) for url in urls)))
        loop = asyncio.get_running_loop()

        async def fetch_then(url: str):
            await self._url_slots.acquire()
            try:
                return await loop.run_in_executor(executor, then, await self.fetch_one(url))
            finally:
                self._url_slots.release()

        return list(await asyncio.gather(*(fetch_then(url) for url in urls)))

    async def fetch_one(self, url: str) -> FetchResult:
        self._ensure_session()
        o = self.options
        attempts = 0
        while True:
            attempts += 1
            try:
                data, http_status, content_type = await self._attempt(url)
                return FetchResult(url, "success", None, data, http_status, content_type, attempts, False)
            except _Failure as failure:
                last = failure
            except Exception as error:  # never let one URL break the batch
                last = _Failure("connection_error", exception_message(error), retryable=False)
            if not last.retryable or attempts > o.retries:
                break
            if last.retry_after is not None:
                if last.retry_after > o.retry_after_cap:
                    last.message += f" (Retry-After {last.retry_after:.0f}s exceeds the cap)"
                    break
                delay = last.retry_after
            else:
                delay = backoff_delay(attempts, o)
            await asyncio.sleep(delay)
        return FetchResult(url, last.status, bounded_message(last.message), None, last.http_status,
                           last.content_type, attempts, last.retryable)

    # -- one attempt ---------------------------------------------------------------------------

    def _proxy_for(self, url: str):
        """(proxy URL or None, proxy auth or None) the session will use for `url`."""
        if self.options.proxy:
            return self.options.proxy, None
        if self._env_proxies:
            parts = urlsplit(url)
            info = self._env_proxies.get(parts.scheme.lower())
            if info is not None and not proxy_bypass(parts.hostname or ""):
                return info.proxy, info.proxy_auth
        return None, None

    async def _precheck(self, url: str) -> tuple:
        reason = check_url(url)
        if reason is not None:
            raise _Failure("bad_url", f"{reason}: {url!r}")
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        if not self.options.allow_private_networks:
            try:
                # The host as parsed here and as aiohttp will send it (to the proxy, too).
                for spelling in {host, URL(url).raw_host} - {None}:
                    check_host(spelling)
            except ValueError as error:
                raise _Failure("bad_url", f"{error}: {url!r}") from None
        proxy, proxy_auth = self._proxy_for(url)
        if proxy is None:
            await self._resolve(host, port, guarded=True)
        return proxy, proxy_auth

    async def _attempt(self, url: str) -> tuple[bytes, int, str | None]:
        o = self.options
        current = url
        for hop in range(o.max_redirects + 1):
            proxy, proxy_auth = await self._precheck_mapped(current)
            if o.respect_robots:
                policy = await self._robots_policy(current)
                if not policy.allows(current, o.robots_token):
                    raise _Failure("robots_disallowed", f"robots.txt disallows {current}")
            if o.respect_tdmrep:  # fetched with the same guard, slots and limits as robots.txt
                reserved = await self.tdmrep.reservation(current, self._fetch_robots)
                if reserved:
                    raise _Failure("tdm_reserved", reserved)
            async with self._slots(current):
                try:
                    async with self._session.get(current, allow_redirects=False, proxy=proxy,
                                                 proxy_auth=proxy_auth) as response:
                        location = response.headers.get("Location")
                        if response.status in _REDIRECTS and location:
                            current = urljoin(current, location)
                            continue
                        return await self._read_image(response)
                except _Failure:
                    raise
                except BaseException as error:
                    raise _classify(error) from None
        raise _Failure("too_many_redirects", f"more than {o.max_redirects} redirects from {url}")

    async def _precheck_mapped(self, url: str):
        try:
            return await self._precheck(url)
        except UnsafeAddress as error:
            raise _Failure("unsafe_address", str(error)) from None
        except socket.gaierror as error:
            raise _Failure("dns_error", f"{urlsplit(url).hostname}: {error}") from None
        except OSError as error:
            raise _Failure("dns_error", f"{urlsplit(url).hostname}: {error}") from None

    async def _read_image(self, response: aiohttp.ClientResponse) -> tuple[bytes, int, str | None]:
        o = self.options
        status = response.status
        content_type = response.headers.get("Content-Type")
        if status == 429 or status >= 500:
            retry_after = parse_retry_after(response.headers.get("Retry-After")) if status in (429, 503) else None
            raise _Failure(f"http_{status}", f"HTTP {status}", status, True, retry_after, content_type)
        if not 200 <= status < 300:
            raise _Failure(f"http_{status}", f"HTTP {status}", status, False, content_type=content_type)
        forbidden = x_robots_tag_forbids(response.headers.getall("X-Robots-Tag", []), o.robots_token,
                                         tuple(o.forbidden_x_robots))
        if forbidden:
            raise _Failure("x_robots_tag", f"X-Robots-Tag: {forbidden}", status, content_type=content_type)
        if o.respect_tdmrep and tdm_value(response.headers.getall("tdm-reservation", [])) == 1:
            raise _Failure("tdm_reserved", "tdm-reservation: 1", status, content_type=content_type)
        declared = response.content_length
        if declared is not None and declared > o.max_bytes:
            raise _Failure("too_large", f"Content-Length {declared} > {o.max_bytes}", status,
                           content_type=content_type)
        body = bytearray()
        sniffed = False
        try:
            async for chunk in response.content.iter_chunked(_CHUNK):
                body += chunk
                if len(body) > o.max_bytes:
                    raise _Failure("too_large", f"more than {o.max_bytes} bytes", status, content_type=content_type)
                if not sniffed and len(body) >= _SNIFF_BYTES:
                    _require_image(body, status, content_type)
                    sniffed = True
        except aiohttp.ClientPayloadError as error:
            raise _Failure("truncated", f"{len(body)} of {declared} bytes: {exception_message(error)}", status, True,
                           content_type=content_type) from None
        if declared is not None and len(body) < declared:
            raise _Failure("truncated", f"{len(body)} of {declared} bytes", status, True, content_type=content_type)
        if not sniffed:
            _require_image(body, status, content_type)
        return bytes(body), status, content_type

    # -- slots ---------------------------------------------------------------------------------

    def _slots(self, url: str):
        return _Slots(self, (urlsplit(url).hostname or "").lower())

    # -- DNS -----------------------------------------------------------------------------------

    async def _resolve(self, host: str, port: int, guarded: bool) -> list[str]:
        """Addresses for `host` (cached); raises UnsafeAddress or socket.gaierror."""
        key = f"{'guarded' if guarded else 'trusted'}:{host.lower()}"
        loop = asyncio.get_running_loop()
        cached = self._dns.get(key)
        if cached is not None and cached[0] > loop.time():
            return _answer(cached[1])
        pending = self._dns_pending.get(key)
        if pending is None:
            pending = loop.create_future()
            self._dns_pending[key] = pending
            try:
                infos = await self._getaddrinfo_async(host, port)
                allow = self.options.allow_private_networks or not guarded
                outcome: list[str] | BaseException = resolve_public(host, port, allow, resolver=lambda *a, **k: infos)
            except (UnsafeAddress, OSError) as error:
                outcome = error
            except BaseException as error:  # cancelled: waiters see a DNS failure, nothing cached
                del self._dns_pending[key]
                pending.set_exception(OSError(f"resolution of {host} interrupted: {error!r}"))
                pending.exception()  # mark retrieved
                raise
            self._dns[key] = (loop.time() + self.options.dns_cache_ttl, outcome)
            if len(self._dns) > 100_000:
                self._dns.clear()
            del self._dns_pending[key]
            pending.set_result(outcome)
            return _answer(outcome)
        return _answer(await asyncio.shield(pending))

    async def _getaddrinfo_async(self, host: str, port: int) -> list:
        loop = asyncio.get_running_loop()
        if self._getaddrinfo is None:
            return await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return await loop.run_in_executor(None, lambda: self._getaddrinfo(host, port, type=socket.SOCK_STREAM))

    # -- robots.txt ----------------------------------------------------------------------------

    async def _robots_policy(self, url: str) -> RobotsPolicy:
        async def load() -> RobotsPolicy:
            try:
                return RobotsPolicy.from_fetch(*(await self._fetch_robots(robots_url(url))))
            except Exception:
                return RobotsPolicy.disallow_all()
        return await self._robots_fetches.get(url, self.robots, load)

    async def _fetch_robots(self, url: str) -> tuple[int | None, bytes]:
        """(final status or None when unreachable, body) for a robots.txt URL."""
        current = url
        for hop in range(_ROBOTS_MAX_REDIRECTS + 1):
            try:
                proxy, proxy_auth = await self._precheck_mapped(current)
            except _Failure:
                return None, b""
            async with self._slots(current):
                try:
                    async with self._session.get(current, allow_redirects=False, proxy=proxy,
                                                 proxy_auth=proxy_auth) as response:
                        location = response.headers.get("Location")
                        if response.status in _REDIRECTS and location:
                            current = urljoin(current, location)
                            continue
                        if not 200 <= response.status < 300:
                            return response.status, b""
                        body = bytearray()
                        async for chunk in response.content.iter_chunked(_CHUNK):
                            body += chunk
                            if len(body) >= MAX_ROBOTS_BYTES:
                                break
                        return response.status, bytes(body[:MAX_ROBOTS_BYTES])
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    return None, b""
        return 301, b""  # still redirecting: as if there were no robots.txt


# Which fetch_all call a request belongs to: the earlier call's requests get global slots first.
_batch: contextvars.ContextVar[int] = contextvars.ContextVar("crawl2clip_fetch_batch", default=0)


class _OrderedSlots:
    """A semaphore that serves waiters from the earliest batch first (FIFO within a batch).

    With a plain FIFO semaphore, a URL's image request, queued after its robots.txt request,
    waits behind every request of the batches started since: a batch would finish only when the
    later ones do. This keeps a worker's batches finishing in order, the next ones using the
    slots the current one leaves free."""

    def __init__(self, slots: int):
        self._free = slots
        self._waiters: list[tuple[int, int, asyncio.Future]] = []
        self._arrivals = itertools.count()

    async def acquire(self) -> None:
        if self._free > 0 and not self._waiters:
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (_batch.get(), next(self._arrivals), waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a slot, then cancelled
                self.release()
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = heapq.heappop(self._waiters)[2]
            if not waiter.done():  # cancelled waiters are skipped
                waiter.set_result(None)
                return
        self._free += 1


class _Slots:
    """Per-host slot, then global slot; per-host semaphores are dropped when unused."""

    def __init__(self, fetcher: AsyncFetcher, host: str):
        self.fetcher = fetcher
        self.host = host

    async def __aenter__(self):
        slots = self.fetcher._host_slots
        entry = slots.get(self.host)
        if entry is None:
            entry = slots[self.host] = [asyncio.Semaphore(self.fetcher.options.max_per_host), 0]
        entry[1] += 1
        self.entry = entry
        try:
            await entry[0].acquire()
            try:
                await self.fetcher._global_slots.acquire()
            except BaseException:
                entry[0].release()
                raise
        except BaseException:
            self._leave()
            raise
        return self

    async def __aexit__(self, *exc):
        self.fetcher._global_slots.release()
        self.entry[0].release()
        self._leave()

    def _leave(self):
        self.entry[1] -= 1
        if self.entry[1] == 0 and self.fetcher._host_slots.get(self.host) is self.entry:
            del self.fetcher._host_slots[self.host]


def _answer(outcome):
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def _require_image(body: bytearray, status: int, content_type: str | None) -> None:
    if sniff_image_format(bytes(body[:_SNIFF_BYTES])) is None:
        raise _Failure("not_an_image", f"first bytes {bytes(body[:16]).hex()}", status, content_type=content_type)


def _classify(error: BaseException) -> _Failure:
    if isinstance(error, (asyncio.TimeoutError, TimeoutError)):
        return _Failure("timeout", exception_message(error), retryable=True)
    if isinstance(error, UnsafeAddress):
        return _Failure("unsafe_address", str(error))
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        return _Failure("dns_error", str(error))
    if isinstance(error, aiohttp.TooManyRedirects):
        return _Failure("too_many_redirects", str(error))
    if isinstance(error, aiohttp.ClientPayloadError):
        return _Failure("truncated", exception_message(error), retryable=True)
    if isinstance(error, (aiohttp.ClientError, OSError)):
        return _Failure("connection_error", exception_message(error), retryable=True)
    if isinstance(error, asyncio.CancelledError):
        raise error
    return _Failure("connection_error", exception_message(error))


class Fetcher:
    """Synchronous front (e.g. for a Beam DoFn): an event loop in a background thread holding one
    AsyncFetcher, so the session, DNS cache and robots cache live across `fetch_batch` calls.
    Safe to call from any thread, including one that runs its own event loop."""

    def __init__(self, options: FetchOptions | None = None, resolver=None, robots_cache: RobotsCache | None = None):
        self.options = options or FetchOptions()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="crawl2clip-fetcher", daemon=True)
        self._thread.start()
        self._async = AsyncFetcher(self.options, resolver=resolver, robots_cache=robots_cache)
        self._closed = False

    @property
    def robots(self) -> RobotsCache:
        return self._async.robots

    def fetch_batch(self, urls: list[str]) -> list[FetchResult]:
        return self.submit(urls).result()

    def submit(self, urls: list[str], then: Callable[[FetchResult], T] | None = None,
               executor: Executor | None = None) -> Future:
        """Starts `AsyncFetcher.fetch_all(urls, then, executor)` and returns at once: a caller can
        keep several batches in flight (the next one downloading while it writes the last)."""
        if self._closed:
            raise RuntimeError("Fetcher is closed")
        return asyncio.run_coroutine_threadsafe(self._async.fetch_all(list(urls), then, executor), self._loop)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(self._async.aclose(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> "Fetcher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


async def fetch_all(urls: list[str], options: FetchOptions | None = None, resolver=None) -> list[FetchResult]:
    """Fetch `urls` (results in the same order) with a session that lives for this call."""
    async with AsyncFetcher(options, resolver=resolver) as fetcher:
        return await fetcher.fetch_all(urls)


def fetch_batch(urls: list[str], options: FetchOptions | None = None, resolver=None) -> list[FetchResult]:
    """Synchronous `fetch_all`; prefer a long-lived `Fetcher` to keep caches across batches."""
    with Fetcher(options, resolver=resolver) as fetcher:
        return fetcher.fetch_batch(urls)
