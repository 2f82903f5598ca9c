"""TDMRep's site-wide file, `/.well-known/tdmrep.json` (W3C TDM Reservation Protocol, 2024).

The file is a JSON array of rules `{"location": PATTERN, "tdm-reservation": 0|1, "tdm-policy": URL}`.
A URL's path (and query) is matched against each `location` in file order and the FIRST match
decides (the spec's "most specific match is the first in sequence"); no match means unset.
Patterns follow robots.txt's URL matching (Google's reading, as the spec advises): a prefix
match, `*` for any characters, `$` at the end for the end of the URL; case-sensitive.
Percent-escapes of unreserved characters are decoded on both sides before comparing, other
escapes are compared as escapes (so `%24` matches a literal `$`).

Fetch outcomes: a 2xx JSON array gives rules; anything else (4xx, 5xx, unreachable, not JSON)
means the site does not implement the protocol, so nothing is reserved by the file. The
downloader asks `TdmrepCache` once per scheme+host+port (like robots.txt) before the first
image request to that origin, and also honours an image response's own `tdm-reservation: 1`
header. A `tdm-reservation: 0` header that would lift a file's reservation is never seen: the
image is not requested once the file reserves it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from crawl2clip.transforms.download.robots import OriginCache, SingleFlight, robots_key

WELL_KNOWN_PATH = "/.well-known/tdmrep.json"
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
# Printable ASCII stays as it is; spaces, controls and non-ASCII become UTF-8 escapes.
_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


def tdmrep_url(url: str) -> str:
    return robots_key(url) + WELL_KNOWN_PATH


def canonical(text: str) -> str:
    """Escapes of unreserved characters decoded, other escapes upper-cased, non-ASCII escaped."""
    def decode(match: re.Match) -> str:
        character = chr(int(match.group(1), 16))
        return character if character in _UNRESERVED else "%" + match.group(1).upper()

    return quote(_ESCAPE.sub(decode, text), safe=_SAFE)


def _target(url: str) -> str:
    """The part of a URL a location matches: path and query, `*` and `$` as escapes."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return canonical(target).replace("*", "%2A").replace("$", "%24")


@dataclass(frozen=True)
class TdmRule:
    location: str
    reservation: int  # 0 or 1
    policy: str | None
    pattern: re.Pattern

    @classmethod
    def make(cls, location: str, reservation: int, policy: str | None = None) -> "TdmRule":
        if "://" in location:  # a whole URL where a path was meant: its path and query
            parts = urlsplit(location)
            location = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        anchored = location.endswith("$")
        body = canonical(location[:-1] if anchored else location).replace("$", "%24")
        regex = ".*".join(re.escape(piece) for piece in body.split("*")) + ("$" if anchored else "")
        return cls(location, reservation, policy, re.compile(regex, re.DOTALL))


@dataclass(frozen=True)
class TdmrepRules:
    """One origin's tdmrep.json; `rules` empty when it has none (or an unusable one)."""

    rules: tuple[TdmRule, ...] = ()

    @classmethod
    def from_body(cls, body: bytes | str) -> "TdmrepRules":
        try:
            document = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            return cls()
        if not isinstance(document, list):
            return cls()
        rules = []
        for item in document:
            if not isinstance(item, dict):
                continue
            location, value = item.get("location"), item.get("tdm-reservation")
            if isinstance(value, str) and value.strip() in ("0", "1"):
                value = int(value)
            # A rule without a location or with a value other than 0/1 is a protocol error: skipped.
            if not isinstance(location, str) or not location or isinstance(value, bool) or value not in (0, 1):
                continue
            policy = item.get("tdm-policy")
            rules.append(TdmRule.make(location, value, policy if isinstance(policy, str) else None))
        return cls(tuple(rules))

    @classmethod
    def from_fetch(cls, status: int | None, body: bytes = b"") -> "TdmrepRules":
        if status is not None and 200 <= status < 300:
            return cls.from_body(body)
        return cls()

    def rule_for(self, url: str) -> TdmRule | None:
        target = _target(url)
        for rule in self.rules:
            if rule.pattern.match(target):
                return rule
        return None

    def reservation(self, url: str) -> str | None:
        """Why the file reserves `url` (a message), or None when it does not."""
        rule = self.rule_for(url)
        if rule is None or rule.reservation != 1:
            return None
        policy = f", tdm-policy {rule.policy}" if rule.policy else ""
        return f"{tdmrep_url(url)}: location {rule.location!r} has tdm-reservation 1{policy}"


Fetch = Callable[[str], Awaitable[tuple[int | None, bytes]]]


class TdmrepCache(OriginCache):
    """Rules per origin for one fetcher's event loop; concurrent requests to one origin wait for a
    single fetch of its file."""

    def __init__(self, max_sites: int = 10_000):
        super().__init__(max_sites)
        self._fetches = SingleFlight()

    async def rules(self, url: str, fetch: Fetch) -> TdmrepRules:
        """The origin's rules, fetched with `fetch(url) -> (status or None, body)` the first time."""
        async def load() -> TdmrepRules:
            try:
                return TdmrepRules.from_fetch(*(await fetch(tdmrep_url(url))))
            except Exception:  # unreachable or broken: the site does not implement the protocol
                return TdmrepRules()
        return await self._fetches.get(url, self, load)

    async def reservation(self, url: str, fetch: Fetch) -> str | None:
        return (await self.rules(url, fetch)).reservation(url)


