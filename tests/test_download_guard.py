"""URL checks, host spellings and the public-address guard, with fake resolvers (no DNS)."""

import socket

import pytest

from crawl2clip.transforms.download.guard import (
    UnsafeAddress,
    canonical_host,
    check_host,
    check_url,
    host_addresses,
    is_public_address,
    resolve_public,
)


@pytest.mark.parametrize(
    "url, reason",
    [
        ("https://example.com/a.jpg", None),
        ("HTTP://Example.com:8080/a.jpg?x=1", None),
        ("http://[2606:4700::1111]/a.jpg", None),
        ("ftp://example.com/a.jpg", "scheme_not_http"),
        ("data:image/png;base64,AAAA", "scheme_not_http"),
        ("javascript:alert(1)", "scheme_not_http"),
        ("/relative/a.jpg", "scheme_not_http"),
        ("http:///a.jpg", "no_host"),
        ("https://", "no_host"),
        ("http://[::1/a.jpg", "bad_url"),
        ("http://example.com:99999/a.jpg", "bad_url"),
        ("http://example.com:port/a.jpg", "bad_url"),
        ("http://exa mple.com/a.jpg", "bad_url"),
    ],
)
def test_check_url(url, reason):
    assert check_url(url) == reason


@pytest.mark.parametrize(
    "ip",
    ["8.8.8.8", "93.184.216.34", "1.1.1.1", "2606:4700::1111", "2a00:1450:4001:80b::200e", "::ffff:8.8.8.8"],
)
def test_public_addresses(ip):
    assert is_public_address(ip)


@pytest.mark.parametrize(
    "ip",
    [
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "127.0.0.1",
        "127.8.9.10",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # carrier-grade NAT
        "100.127.255.254",
        "0.0.0.0",
        "224.0.0.251",  # multicast
        "239.255.255.250",
        "240.0.0.1",  # reserved
        "255.255.255.255",
        "192.0.2.10",  # documentation
        "::1",
        "::",
        "fe80::1",
        "fe80::1%eth0",
        "fc00::1",
        "fd12:3456::1",
        "fec0::1",  # deprecated site-local
        "ff02::1",
        "2001:db8::1",
        "::ffff:10.0.0.1",  # IPv4-mapped private
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        "2002:7f00:1::",  # 6to4 wrapping 127.0.0.1
        "64:ff9b::a00:1",  # NAT64 wrapping 10.0.0.1
        "not-an-ip",
        "",
    ],
)
def test_non_public_addresses(ip):
    assert not is_public_address(ip)


@pytest.mark.parametrize(
    "host, addresses",
    [
        ("2852039166", ["169.254.169.254"]),
        ("0xa9fea9fe", ["169.254.169.254"]),
        ("0XA9FEA9FE", ["169.254.169.254"]),
        ("0251.0376.0251.0376", ["169.254.169.254"]),
        ("169.254.43518", ["169.254.169.254"]),
        ("169.254.169.254.", ["169.254.169.254"]),
        ("2130706433", ["127.0.0.1"]),
        ("0x7f.1", ["127.0.0.1"]),
        ("127.1", ["127.0.0.1"]),
        ("0x", ["0.0.0.0"]),  # URL parsers read an empty hex number as 0
        ("010.0.0.1", ["8.0.0.1", "10.0.0.1"]),  # octal to inet_aton, decimal to some parsers
        ("%31%36%39.254.169.254", ["169.254.169.254"]),
        ("%2531%2532%2537.0.0.1", ["127.0.0.1"]),
        ("\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11", ["127.0.0.1"]),  # fullwidth
        ("127\u30020\uff610\u30021", ["127.0.0.1"]),  # ideographic full stops
        ("::ffff:127.0.0.1", ["::ffff:7f00:1"]),
        ("fe80::1%25eth0", ["fe80::1"]),
        ("8.8.8.8", ["8.8.8.8"]),
        ("134744072", ["8.8.8.8"]),
        ("example.com", []),
        ("example.com.", []),
        ("1e100.net", []),  # a name: its last label is not a number
    ],
)
def test_host_addresses_as_resolvers_and_proxies_read_them(host, addresses):
    assert [str(a) for a in host_addresses(canonical_host(host))] == addresses


@pytest.mark.parametrize(
    "host", ["1.2.3.256", "1.2.65536", "4294967296", "0x100000000", "1.2.3.4.5", "a.1", "08.1", "1..1",
             "%ff.example", "127.0.0.1%2fx", "%40evil.example", "::ffff:0177.0.0.1", "%25252531"],
)
def test_hosts_no_reader_takes_are_bad_urls(host):
    assert check_url(f"http://{host}/a.jpg") == "bad_url"


def test_check_host_refuses_spellings_and_loopback_names_and_keeps_public_ones():
    for host in ("0xa9fea9fe", "0x7f.1", "localhost", "LOCALHOST.", "metadata.localhost", "010.0.0.1"):
        with pytest.raises(UnsafeAddress):
            check_host(host)
    assert check_host("0x08080808") == "0x08080808"
    assert check_host("Images.Example.COM.") == "images.example.com"
    assert check_host("2606:4700::1111") == "2606:4700::1111"


def fake_resolver(*addresses):
    calls = []

    def resolve(host, port, type=0):
        calls.append((host, port))
        return [
            (socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
            for a in addresses
        ]

    resolve.calls = calls
    return resolve


def test_public_host_resolves_to_its_addresses():
    resolver = fake_resolver("93.184.216.34", "93.184.216.34", "2606:2800:220:1::1")
    assert resolve_public("example.com", 443, False, resolver) == ["93.184.216.34", "2606:2800:220:1::1"]
    assert resolver.calls == [("example.com", 443)]


def test_private_answer_is_refused():
    with pytest.raises(UnsafeAddress) as raised:
        resolve_public("evil.example", 80, False, fake_resolver("10.0.0.7"))
    assert raised.value.addresses == ["10.0.0.7"]


def test_one_private_address_among_public_ones_refuses_the_host():
    with pytest.raises(UnsafeAddress) as raised:
        resolve_public("rebind.example", 80, False, fake_resolver("93.184.216.34", "127.0.0.1"))
    assert raised.value.addresses == ["127.0.0.1"]
    assert raised.value.host == "rebind.example"


def test_allow_private_lets_test_servers_through():
    assert resolve_public("localhost", 8080, True, fake_resolver("127.0.0.1")) == ["127.0.0.1"]
    # the real resolver, on an IP literal (no DNS query)
    assert resolve_public("127.0.0.1", 8080, allow_private=True) == ["127.0.0.1"]
    with pytest.raises(UnsafeAddress):
        resolve_public("127.0.0.1", 8080)


def test_no_address_is_refused_and_dns_errors_pass_through():
    with pytest.raises(UnsafeAddress):
        resolve_public("empty.example", 80, False, fake_resolver())

    def failing(host, port, type=0):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(socket.gaierror):
        resolve_public("nxdomain.example", 80, False, failing)
