"""Property: however an IP address is spelled in a URL, the guard decides as it would on the
address itself, the one `socket.inet_aton` / `inet_pton` (so getaddrinfo) and `ipaddress` read.

Random addresses (uniform and from the private, loopback, link-local, metadata and public ranges)
are rendered the ways resolvers and proxies accept: 1 to 4 parts, each decimal, octal or hex with
any leading zeros, a trailing dot, IPv4-mapped IPv6, IPv6 in any case with and without `::`, then
partly percent-encoded or written in fullwidth forms. Deterministic (derandomized) and bounded.
"""

import ipaddress
import socket
from urllib.parse import urlsplit

from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

from crawl2clip.transforms.download.guard import UnsafeAddress, check_host, check_url, is_public_address

SETTINGS = settings(derandomize=True, max_examples=1000, deadline=None)

V4_RANGES = [ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
    "0.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4", "8.8.8.0/24", "93.184.216.0/24", "1.1.1.0/24")]
V6_RANGES = [ipaddress.ip_network(n) for n in (
    "::1/128", "::/96", "fe80::/10", "fc00::/7", "fec0::/10", "ff00::/8", "2001:db8::/32", "2002::/16",
    "64:ff9b::/96", "2001::/32", "2606:4700::/32", "2a00:1450::/32")]


def _in(network) -> st.SearchStrategy[int]:
    return st.integers(int(network.network_address), int(network.broadcast_address))


ipv4 = st.one_of(st.integers(0, 2**32 - 1), st.sampled_from(V4_RANGES).flatmap(_in)).map(ipaddress.IPv4Address)
ipv6 = st.one_of(
    st.integers(0, 2**128 - 1),
    st.sampled_from(V6_RANGES).flatmap(_in),
    ipv4.map(lambda a: 0xFFFF00000000 | int(a)),  # IPv4-mapped
).map(ipaddress.IPv6Address)


@st.composite
def number(draw, value: int) -> str:
    """`value` in decimal, octal (leading 0) or hex (0x), with any leading zeros and hex case."""
    style = draw(st.sampled_from(["decimal", "octal", "hex"]))
    zeros = "0" * draw(st.integers(0, 3))
    if style == "decimal":
        return str(value)
    if style == "octal":
        return "0" + zeros + format(value, "o")
    digits = format(value, "X" if draw(st.booleans()) else "x")
    return draw(st.sampled_from(["0x", "0X"])) + zeros + digits


@st.composite
def ipv4_spelling(draw, address: ipaddress.IPv4Address) -> str:
    """1 to 4 parts: the first ones single bytes, the last one the remaining bytes (`127.1`)."""
    value, count = int(address), draw(st.integers(1, 4))
    parts = [(value >> (24 - 8 * i)) & 0xFF for i in range(count - 1)]
    parts.append(value & ((1 << (8 * (5 - count))) - 1))
    return ".".join(draw(number(part)) for part in parts) + draw(st.sampled_from(["", "."]))


@st.composite
def ipv6_spelling(draw, address: ipaddress.IPv6Address) -> str:
    groups = [(int(address) >> (16 * (7 - i))) & 0xFFFF for i in range(8)]
    upper = draw(st.booleans())
    texts = [("0" * draw(st.integers(0, 3)) + format(g, "X" if upper else "x"))[-4:] if g else
             draw(st.sampled_from(["0", "00", "0000"])) for g in groups]
    if draw(st.booleans()):  # the last 32 bits as a dotted quad (`::ffff:127.0.0.1`)
        texts[6:] = [str(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))]
    zero_runs = [(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts) + 1)
                 if all(groups[k] == 0 for k in range(i, j)) and (j <= 6 or len(texts) == 8)]
    if zero_runs and draw(st.booleans()):
        i, j = draw(st.sampled_from(zero_runs))
        return ":".join(texts[:i]) + "::" + ":".join(texts[j:])
    return ":".join(texts)


FULLWIDTH = {**{str(d): chr(0xFF10 + d) for d in range(10)}, "x": "\uff58", "X": "\uff38"}
FULLWIDTH_DOTS = ["\uff0e", "\u3002", "\uff61"]  # fullwidth, ideographic, halfwidth ideographic


@st.composite
def disguised(draw, host: str) -> str:
    """`host` as is, partly percent-encoded, or partly in fullwidth forms."""
    style = draw(st.sampled_from(["plain", "percent", "fullwidth"]))
    if style == "plain":
        return host
    picks = draw(st.lists(st.booleans(), min_size=len(host), max_size=len(host)))
    if style == "percent":
        return "".join(f"%{ord(c):02X}" if pick else c for c, pick in zip(host, picks))
    return "".join((draw(st.sampled_from(FULLWIDTH_DOTS)) if c == "." else FULLWIDTH.get(c, c)) if pick else c
                   for c, pick in zip(host, picks))


def refused(host: str) -> bool:
    try:
        check_host(host)
        return False
    except UnsafeAddress:
        return True


def decimal_reading(spelling: str) -> list[ipaddress.IPv4Address]:
    """What parsers that ignore leading zeros read from four decimal-digit parts (`010.0.0.1` is
    10.0.0.1 for them): the guard refuses when this reading is not public either."""
    parts = spelling.rstrip(".").split(".")
    if len(parts) == 4 and all(p.isdigit() and int(p) <= 255 for p in parts):
        return [ipaddress.IPv4Address(".".join(str(int(p)) for p in parts))]
    return []


def assert_guard_decides_as_on(url: str, addresses: list) -> None:
    assert check_url(url) is None, url
    expected_refusal = not all(is_public_address(str(a)) for a in addresses)
    assert refused(urlsplit(url).hostname) == expected_refusal, (url, addresses)
    assert refused(URL(url).raw_host) == expected_refusal, (url, addresses)  # as aiohttp sends it


@SETTINGS
@given(st.data())
def test_ipv4_spellings_decide_as_the_address(data):
    address = data.draw(ipv4)
    spelling = data.draw(ipv4_spelling(address))
    assert socket.inet_aton(spelling.rstrip(".")) == address.packed  # what a resolver reads
    host = data.draw(disguised(spelling))
    assert_guard_decides_as_on(f"http://{host}:8080/a.jpg", [address, *decimal_reading(spelling)])


@SETTINGS
@given(st.data())
def test_ipv6_spellings_decide_as_the_address(data):
    address = data.draw(ipv6)
    spelling = data.draw(ipv6_spelling(address))
    assert socket.inet_pton(socket.AF_INET6, spelling) == address.packed
    assert ipaddress.IPv6Address(spelling) == address
    assert_guard_decides_as_on(f"http://[{spelling}]:8080/a.jpg", [address])


@settings(derandomize=True, max_examples=300, deadline=None)
@given(st.lists(st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z]", fullmatch=True), min_size=1, max_size=4))
def test_names_are_left_to_the_resolver(labels):
    host = ".".join(labels)
    if host == "localhost" or host.endswith(".localhost"):
        return
    assert check_url(f"http://{host}/a.jpg") is None
    assert check_host(host) == host
