"""Checks that keep the downloader on the public web: sane http(s) URLs, public addresses only.

Image URLs come from arbitrary pages, so a URL can point at the crawler's own network
(`http://169.254.169.254/` cloud metadata, `http://10.0.0.5/admin`, `http://localhost:8080/`).
`resolve_public` resolves a host once and refuses it when ANY of its addresses is not public: a
hostile DNS server can answer with a public and a private address together (or a short-TTL
record that changes between check and connect, "DNS rebinding"), and a client falling back to
the next address would reach the private one. The caller must then connect to the returned
addresses only, never resolve the name again.
"""

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

ALLOWED_SCHEMES = ("http", "https")
_CARRIER_GRADE_NAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # IPv6 that the network translates to an IPv4
_BAD_HOST_CHARACTERS = set(" \t\r\n\\<>\"'`{}|^") | {chr(c) for c in range(0x20)} | {"\x7f"}


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
    return None


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
