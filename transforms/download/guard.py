"""Checks that keep the downloader on the public web: sane http(s) URLs, public addresses only.

Image URLs come from arbitrary pages, so a URL can point at the crawler's own network
(`http://169.254.169.254/` cloud metadata, `http://10.0.0.5/admin`, `http://localhost:8080/`).
`resolve_public` resolves a host once and refuses it when ANY of its addresses is not public: a
hostile DNS server can answer with a public and a private address together (or a short-TTL
record that changes between check and connect, "DNS rebinding"), and a client falling back to
the next address would reach the private one. The caller must then connect to the returned
addresses only, never resolve the name again.

A host is judged as resolvers and proxies read it, not as it is written (`check_host`):
inet_aton, getaddrinfo and URL parsers take `2852039166`, `0xa9fea9fe`, `0251.0376.0251.0376`,
`169.254.43518`, `169.254.169.254.`, `%31%36%39.254.169.254` and fullwidth digits all for
169.254.169.254. Behind a proxy no local resolver sees the name, so the spelling itself must be
refused; the checks run on every URL and every redirect target.
"""

import ipaddress
import re
import socket
import unicodedata
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

ALLOWED_SCHEMES = ("http", "https")
_CARRIER_GRADE_NAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # IPv6 that the network translates to an IPv4
_BAD_HOST_CHARACTERS = set(" \t\r\n\\<>\"'`{}|^") | {chr(c) for c in range(0x20)} | {"\x7f"}
# Characters that end a host in a URL: met only after decoding, where no reader expects them.
_NOT_IN_DECODED_HOST = _BAD_HOST_CHARACTERS | set("/?#@[]")
# Label separators that IDNA (and so yarl and getaddrinfo) read as ".", besides those NFKC maps.
_IDEOGRAPHIC_DOTS = str.maketrans({"\u3002": "."})
# One part of an IPv4 address for inet_aton and the URL standard: hex, octal or decimal ("0x"
# alone is 0 for URL parsers).
_IPV4_PART = re.compile(r"0x[0-9a-f]*|0[0-7]*|[1-9][0-9]*")
# A last label like this makes the URL standard parse the host as IPv4 (or refuse the URL).
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_PERCENT_DECODINGS = 4


class UnsafeAddress(Exception):
    """A host that resolves to a non-public address (or to none)."""

    def __init__(self, host: str, addresses: list[str]):
        super().__init__(f"{host} resolves to non-public address(es): {', '.join(addresses) or 'none'}")
        self.host = host
        self.addresses = addresses


def check_url(url: str) -> str | None:
    """Why the URL cannot be downloaded (`bad_url`, `scheme_not_http`, `no_host`), or None."""
    try:
        parts = urlsplit(url)
        parts.port  # raises ValueError on a port that is not a number in 0..65535
    except ValueError:
        return "bad_url"
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        return "scheme_not_http"
    host = parts.hostname
    if not host:
        return "no_host"
    if any(character in _BAD_HOST_CHARACTERS for character in host):
        return "bad_url"
    try:
        host_addresses(canonical_host(host))
    except ValueError:
        return "bad_url"
    return None


def canonical_host(host: str) -> str:
    """The host as resolvers and proxies read it: percent-decoded, Unicode compatibility forms
    folded as IDNA does (fullwidth digits and dots), lower case, without trailing dots (which URL
    parsers drop before reading an address) or an IPv6 zone. ValueError for what no reader takes for a host:
    bytes that are not UTF-8, characters a host cannot hold, endless percent-encoding."""
    # An IPv6 literal's zone (`%25eth0`) names an interface, not part of the address: decoding it
    # would add digits to the address.
    decoded = host.split("%", 1)[0] if ":" in host else host
    for _ in range(_PERCENT_DECODINGS):  # "%2531" is "%31" once decoded, "1" twice
        once = unquote(decoded, errors="strict")
        if once == decoded:
            break
        decoded = once
    else:
        raise ValueError(f"host percent-encoded more than {_PERCENT_DECODINGS - 1} times")
    folded = unicodedata.normalize("NFKC", decoded).translate(_IDEOGRAPHIC_DOTS).lower()
    if any(character in _NOT_IN_DECODED_HOST for character in folded):
        raise ValueError("characters that cannot be in a host")
    return folded.rstrip(".")


def host_addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every IP address a resolver or proxy may take a canonical host for; [] for a name.

    IPv4 as inet_aton and the URL standard read it: 1 to 4 parts, each decimal, octal (leading 0)
    or hex (0x); the last part fills the remaining bytes, so `127.1` and `2130706433` are both
    127.0.0.1. Four decimal parts with leading zeros are also read as decimals, as some parsers
    do (`010.0.0.1`: 8.0.0.1 for inet_aton, 10.0.0.1 for them). ValueError for a host that ends in
    a number but is no address (`1.2.3.256`, `a.1`; URL parsers refuse it) or that holds a colon
    but is no IPv6 address.
    """
    if ":" in host:
        return [ipaddress.IPv6Address(host)]
    parts = host.split(".")
    if not _NUMERIC_LABEL.fullmatch(parts[-1]):
        return []
    if len(parts) > 4 or not all(_IPV4_PART.fullmatch(part) for part in parts):
        raise ValueError("a host ending in a number must be an IPv4 address")
    numbers = [int(part[2:] or "0", 16) if part.startswith("0x") else int(part, 8 if part[0] == "0" else 10)
               for part in parts]
    last_bits = 8 * (5 - len(numbers))
    if any(number > 0xFF for number in numbers[:-1]) or numbers[-1] >> last_bits:
        raise ValueError("IPv4 address out of range")
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value |= number << (24 - 8 * index)
    addresses = [ipaddress.IPv4Address(value)]
    if len(parts) == 4 and all(part.isdigit() and int(part) <= 0xFF for part in parts):
        addresses.append(ipaddress.IPv4Address(".".join(str(int(part)) for part in parts)))
    return list(dict.fromkeys(addresses))


def check_host(host: str) -> str:
    """The canonical host, unless its spelling itself names a non-public address: raises
    UnsafeAddress when any address a resolver or proxy may read from it is not public, or when it
    is a name for loopback (`localhost`, `*.localhost`: RFC 6761); ValueError like canonical_host.
    Names are left to the resolver (`resolve_public`) or to the proxy."""
    canonical = canonical_host(host)
    if canonical == "localhost" or canonical.endswith(".localhost"):
        raise UnsafeAddress(host, ["127.0.0.1", "::1"])
    unsafe = [str(address) for address in host_addresses(canonical) if not is_public_address(str(address))]
    if unsafe:
        raise UnsafeAddress(host, unsafe)
    return canonical


def is_public_address(ip: str) -> bool:
    """True for a globally routable unicast address; False for anything else or for non-addresses.

    The explicit checks do not rely on `is_global` alone: its networks list changed between
    Python releases, and it calls multicast addresses global.
    """
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])  # drop an IPv6 zone (`fe80::1%eth0`)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address):
        # IPv6 forms that carry an IPv4 address: judge the IPv4 one.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return is_public_address(str(embedded))
        if address.is_site_local:
            return False
    elif address in _CARRIER_GRADE_NAT:
        return False
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


Resolver = Callable[..., list]


def resolve_public(
    host: str, port: int, allow_private: bool = False, resolver: Resolver = socket.getaddrinfo
) -> list[str]:
    """The host's addresses (deduplicated, resolver order) to connect to.

    Raises UnsafeAddress when any address is not public (unless `allow_private`, for tests and
    intranet crawls) or when there is none; resolver errors (socket.gaierror) pass through so
    the caller can count them as DNS failures.
    """
    infos = resolver(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys(info[4][0] for info in infos))
    if not addresses:
        raise UnsafeAddress(host, [])
    if not allow_private:
        unsafe = [address for address in addresses if not is_public_address(address)]
        if unsafe:
            raise UnsafeAddress(host, unsafe)
    return addresses
