"""Whether a site lets our crawler fetch an image: robots.txt and the X-Robots-Tag header.

robots.txt follows Google's spec (RFC 9309 and developers.google.com/search/docs/crawling-indexing/
robots/robots_txt): the group naming our product token wins over `*` (groups naming the same
agent are merged), within it the longest matching rule wins, Allow wins a tie, and `*` and `$`
work in paths. `urllib.robotparser` splits the file into groups and rules; its own matching
(first rule wins, no wildcards, agent names matched as substrings, only the first `*` group,
blank lines ending groups) disagrees with that spec, so the grouping fixes and the matching
are done here.

Fetch outcomes, per the same spec: 2xx -> the body's rules; 3xx left after following redirects
and 4xx but 429 -> no robots.txt, everything allowed; 429, 5xx and unreachable -> everything
disallowed (for this run: the cache keeps the verdict).
"""

import asyncio
import re
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit
from urllib.robotparser import RobotFileParser

MAX_ROBOTS_BYTES = 500 * 1024  # Google ignores what follows the first 500 KiB
DEFAULT_FORBIDDEN = ("noai", "noimageai", "noindex", "noimageindex")
# X-Robots-Tag directives that take a value after a colon: `name: value` is not `bot: directives`.
_VALUED_DIRECTIVES = {"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"}
_SCOPE = re.compile(r"^\s*([a-z][a-z0-9_.-]*)\s*:\s*(.*)$", re.IGNORECASE | re.DOTALL)


@dataclass(frozen=True)
class Rule:
    allow: bool
    path: str  # percent-decoded; may hold `*` and a final `$`
    pattern: re.Pattern


def _rule(allow: bool, path: str) -> Rule:
    anchored = path.endswith("$")
    body = path[:-1] if anchored else path
    regex = ".*".join(re.escape(part) for part in body.split("*")) + ("$" if anchored else "")
    return Rule(allow, path, re.compile(regex, re.DOTALL))


class _GroupParser(RobotFileParser):
    """robotparser's tokenizer, keeping every `*` group (it keeps only the first)."""

    def _add_entry(self, entry):
        self.entries.append(entry)


def _agent_names(entry) -> list[str]:
    # `User-agent: crawl2clip/1.2` names the product token `crawl2clip`.
    return [agent.split("/")[0].strip().lower() for agent in entry.useragents]


@dataclass(frozen=True)
class RobotsPolicy:
    """One site's robots.txt verdicts. `groups` maps a lower-case agent name (or '*') to its rules."""

    groups: tuple[tuple[str, tuple[Rule, ...]], ...] = ()
    default: bool = True  # the answer when no rule matches (False: all disallowed)
    everything: bool | None = None  # set: every URL gets this answer, rules or not

    @classmethod
    def allow_all(cls) -> "RobotsPolicy":
        return cls(everything=True)

    @classmethod
    def disallow_all(cls) -> "RobotsPolicy":
        return cls(default=False, everything=False)

    @classmethod
    def from_body(cls, body: str | bytes) -> "RobotsPolicy":
        if isinstance(body, bytes):
            body = body[:MAX_ROBOTS_BYTES].decode("utf-8", errors="replace")
        body = body.lstrip("\ufeff")
        parser = _GroupParser()
        # Blank lines do not end a group in Google's spec; robotparser would drop the group's
        # user-agent lines at one, so they are left out.
        parser.parse([line for line in body.splitlines() if line.strip()])
        groups: dict[str, list[Rule]] = {}
        for entry in parser.entries:
            # robotparser stores paths quoted; decode so `*`, `$` and %-escapes compare as text.
            rules = [_rule(line.allowance, unquote(line.path)) for line in entry.rulelines]
            # An empty `Disallow:` allows everything: robotparser turns it into an empty Allow.
            rules = [rule for rule in rules if rule.path]
            for name in _agent_names(entry):
                groups.setdefault(name, []).extend(rules)
        return cls(groups=tuple((name, tuple(rules)) for name, rules in groups.items()))

    @classmethod
    def from_fetch(cls, status: int | None, body: str | bytes = b"") -> "RobotsPolicy":
        """From fetching /robots.txt: the final HTTP status (None if unreachable) and body."""
        if status is None or status == 429 or status >= 500:
            return cls.disallow_all()
        if 200 <= status < 300:
            return cls.from_body(body)
        return cls.allow_all()  # 3xx left after redirects, 4xx: as if there were no robots.txt

    def _rules_for(self, user_agent_token: str) -> tuple[Rule, ...]:
        token = user_agent_token.lower()
        for wanted in (token, "*"):
            for name, rules in self.groups:
                if name == wanted:
                    return rules
        return ()

    def allows(self, url: str, user_agent_token: str) -> bool:
        if self.everything is not None:
            return self.everything
        parts = urlsplit(url)
        target = unquote(parts.path or "/") + (f"?{unquote(parts.query)}" if parts.query else "")
        if target == "/robots.txt":
            return True
        best: Rule | None = None
        for rule in self._rules_for(user_agent_token):
            if rule.pattern.match(target) and (
                best is None
                or len(rule.path) > len(best.path)
                or (len(rule.path) == len(best.path) and rule.allow and not best.allow)
            ):
                best = rule
        return best.allow if best is not None else self.default


def robots_key(url: str) -> str:
    """scheme://host[:port] (the port only when not the scheme's default): one robots.txt each."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    if port is not None and port != {"http": 80, "https": 443}.get(scheme):
        host = f"{host}:{port}"
    return f"{scheme}://{host}"


def robots_url(url: str) -> str:
    return robots_key(url) + "/robots.txt"


class OriginCache:
    """Values per scheme+host+port (robots.txt policies, TDMRep rules), least recently used dropped
    past `max_sites`. Thread-safe: one downloader process fetches with many threads."""

    def __init__(self, max_sites: int = 10_000):
        self.max_sites = max_sites
        self._values: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, url: str):
        key = robots_key(url)
        with self._lock:
            value = self._values.get(key)
            if value is not None:
                self._values.move_to_end(key)
            return value

    def put(self, url: str, value) -> None:
        key = robots_key(url)
        with self._lock:
            self._values[key] = value
            self._values.move_to_end(key)
            while len(self._values) > self.max_sites:
                self._values.popitem(last=False)

    def __len__(self) -> int:
        return len(self._values)


class RobotsCache(OriginCache):
    """robots.txt policies per origin."""


class SingleFlight:
    """One fetch per origin at a time on one event loop: concurrent callers of `get` wait for the
    first caller's result instead of fetching the same file again. (Per loop, while the cache it
    fills may be shared by fetchers in several threads.)"""

    def __init__(self):
        self._pending: dict[str, asyncio.Future] = {}

    async def get(self, url: str, cache: OriginCache, load: Callable[[], Awaitable]):
        """The cached value of `url`'s origin, else `await load()` (which must not raise), cached."""
        key = robots_key(url)
        while True:
            value = cache.get(url)
            if value is not None:
                return value
            pending = self._pending.get(key)
            if pending is None:
                break
            value = await asyncio.shield(pending)
            if value is not None:
                return value  # None: the fetching task was cancelled, look again
        pending = asyncio.get_running_loop().create_future()
        self._pending[key] = pending
        value = None
        try:
            value = await load()
            cache.put(url, value)
        finally:
            del self._pending[key]
            pending.set_result(value)
        return value


def x_robots_tag_forbids(
    header_values: list[str], user_agent_token: str, forbidden: tuple[str, ...] = DEFAULT_FORBIDDEN
) -> str | None:
    """The first forbidden directive the X-Robots-Tag values give us, or None.

    `noindex, noai` applies to every bot; `otherbot: noindex` only to otherbot. A bot prefix
    scopes the directives after it in the same value, so `otherbot: noai, crawl2clip: noindex`
    (two headers folded into one by a proxy) forbids `noindex` to us. `none` means
    `noindex, nofollow`.
    """
    token = user_agent_token.lower()
    wanted = {directive.lower() for directive in forbidden}
    for value in header_values:
        scope = None  # None: every bot
        for item in value.split(","):
            match = _SCOPE.match(item)
            if match and match.group(1).lower() not in _VALUED_DIRECTIVES:
                scope, item = match.group(1).lower(), match.group(2)
            directive = item.strip().lower()
            if scope is not None and scope != token:
                continue
            implied = ("noindex", "nofollow") if directive == "none" else (directive,)
            for name in implied:
                if name in wanted:
                    return name
    return None
