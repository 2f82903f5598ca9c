"""The consent and removal functions one by one: page reservations, TDMRep's file, removal lists
(every kind, real files), the perceptual hash."""

import gzip
import hashlib
import io
import os

import pytest
from PIL import Image

from crawl2clip.transforms.consent.blocklists import (
    BlocklistError,
    Blocklists,
    BlocklistSettings,
    ListSpec,
    blocklist_problems,
    read_blocklist,
    url_key,
)
from crawl2clip.transforms.consent.phash import content_box, hamming, phash_of_bytes, stored_image_phashes, to_hex
from crawl2clip.transforms.consent.reservations import (
    page_reservations,
    response_headers,
    tdm_value,
    wat_headers,
    wat_metas,
)
from crawl2clip.transforms.consent.tdmrep import TdmrepRules, canonical, tdmrep_url
from tests.archive_files import SHARED_DATA

PHOTOS = os.path.normpath(os.path.join(SHARED_DATA, "photos"))


# ---------------------------------------------------------------- page reservations


def test_meta_and_header_reservations():
    assert page_reservations([("Robots", "noindex,noai")]) == ("meta_noai",)
    assert page_reservations([("robots", "NOIMAGEAI")]) == ("meta_noimageai",)
    assert page_reservations([("googlebot", "noai")]) == ()  # another bot's meta tag
    assert page_reservations([("robots", "noaix, ainoai")]) == ()  # whole words only
    assert page_reservations([], {"x-robots-tag": ["noai"]}) == ("x_robots_noai",)
    assert page_reservations([], {"x-robots-tag": ["otherbot: noai", "crawl2clip: noimageai"]}) == ("x_robots_noimageai",)
    assert page_reservations([], {"x-robots-tag": ["unavailable_after: 2025-01-01, noai"]}) == ("x_robots_noai",)


def test_tdm_reservation_follows_the_spec_processing_order():
    assert page_reservations([], {"tdm-reservation": ["1"]}) == ("tdm_header",)
    assert page_reservations([("tdm-reservation", "1")], {"tdm-reservation": ["0"]}) == ("tdm_meta",)
    assert page_reservations([("tdm-reservation", "0")], {"tdm-reservation": ["1"]}) == ()  # the meta tag supersedes
    assert page_reservations([("tdm-reservation", "2")], {"tdm-reservation": ["1"]}) == ("tdm_header",)  # error: unset
    assert tdm_value([" 1 "]) == 1 and tdm_value(["yes", "0"]) == 0 and tdm_value(["true"]) is None


def test_response_headers_keep_every_value_of_repeated_headers():
    head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nX-Robots-Tag: otherbot: noai\r\n"
            b"x-robots-tag:crawl2clip: noimageai\r\nTDM-Reservation: 1\r\n\r\n")
    assert response_headers(head) == {"x-robots-tag": ["otherbot: noai", "crawl2clip: noimageai"],
                                      "tdm-reservation": ["1"]}
    assert response_headers(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n") == {}
    # a WAT keeps a repeated header as a JSON list, names as sent
    assert wat_headers({"X-Robots-Tag": ["a", "b"], "tdm-reservation": "1", "Server": "x"}) == {
        "x-robots-tag": ["a", "b"], "tdm-reservation": ["1"]}
    assert wat_metas([{"name": "robots", "content": "no&#97;i"}, {"property": "og:title"}, "junk"]) == [("robots", "noai")]


# ---------------------------------------------------------------- TDMRep


SPEC_EXAMPLE = b"""[
  {"location": "/directory-a/", "tdm-reservation": 1},
  {"location": "/directory-b/html/", "tdm-reservation": 1, "tdm-policy": "https://provider.com/policies/policy.json"},
  {"location": "/directory-b/images/*.jpg", "tdm-reservation": 0}
]"""


def test_tdmrep_rules_of_the_spec_example():
    rules = TdmrepRules.from_fetch(200, SPEC_EXAMPLE)
    site = "https://provider.com"
    assert rules.reservation(f"{site}/directory-a/paper.pdf")
    assert "policy.json" in rules.reservation(f"{site}/directory-b/html/page.html")
    assert rules.reservation(f"{site}/directory-b/images/cat.jpg") is None  # reservation 0
    assert rules.reservation(f"{site}/directory-c/x.jpg") is None  # no rule: unset
    assert rules.reservation(f"{site}/Directory-A/paper.pdf") is None  # case-sensitive


def test_tdmrep_first_matching_rule_wins_with_wildcards_anchors_and_escapes():
    rules = TdmrepRules.from_body(b"""[
        {"location": "/img/open-*.jpg$", "tdm-reservation": 0},
        {"location": "/img/", "tdm-reservation": 1},
        {"location": "/price-%24", "tdm-reservation": 1},
        {"location": "/caf%C3%A9/", "tdm-reservation": 1},
        {"location": "/%7Euser/", "tdm-reservation": "1"}
    ]""")
    assert rules.reservation("http://h/img/open-1.jpg") is None
    assert rules.reservation("http://h/img/open-1.jpg?size=2")  # `$`: the URL must end there
    assert rules.reservation("http://h/img/closed.jpg")
    assert rules.reservation("http://h/price-$") and rules.reservation("http://h/price-") is None
    assert rules.reservation("http://h/café/a.jpg") and rules.reservation("http://h/caf%c3%a9/a.jpg")
    assert rules.reservation("http://h/~user/a.jpg")  # %7E is unreserved: decoded on both sides
    assert canonical("/a%2fb%7e c") == "/a%2Fb~%20c"


@pytest.mark.parametrize("status, body", [(404, b""), (500, b""), (None, b""), (200, b"not json"),
                                          (200, b'{"location": "/", "tdm-reservation": 1}'),
                                          (200, b'[{"location": "/", "tdm-reservation": 3}, {"tdm-reservation": 1}]')])
def test_tdmrep_without_a_usable_file_reserves_nothing(status, body):
    assert TdmrepRules.from_fetch(status, body).reservation("https://h/x.jpg") is None


def test_tdmrep_url_is_per_origin():
    assert tdmrep_url("https://Img.Example.com:443/a/b.jpg?x") == "https://img.example.com/.well-known/tdmrep.json"
    assert tdmrep_url("http://h:8080/a") == "http://h:8080/.well-known/tdmrep.json"


# ---------------------------------------------------------------- removal lists


def _list(tmp_path, name: str, text: str, compress: bool = False) -> str:
    path = tmp_path / name
    data = text.encode()
    path.write_bytes(gzip.compress(data) if compress else data)
    return str(path)


def test_url_lists_match_image_and_page_urls_in_normal_form(tmp_path):
    path = _list(tmp_path, "urls.txt.gz", "# listed\nHTTPS://Images.Example.com:443/a.jpg#frag\t# trailing note\n"
                                        "http://pages.example.org/p?q=1\n", compress=True)
    lists = Blocklists([read_blocklist(ListSpec(path))])
    assert lists.lists[0].kind == "url"  # sniffed: every entry is a URL
    match = lists.match_url("http://images.example.com/a.jpg")  # scheme, case, port, fragment: same image
    assert (match.kind, match.matched, match.entry) == ("url", "URL", "HTTPS://Images.Example.com:443/a.jpg#frag")
    assert lists.match_url("https://x.example/i.jpg", "http://pages.example.org/p?q=1").matched == "page_url"
    assert lists.match_url("http://images.example.com/a.jpg?v=2") is None
    assert lists.match_url("http://pages.example.org/p?q=2") is None
    assert url_key("http://h/a b") == "h/a b" and url_key("ftp://h/x") is None and url_key("/relative") is None


def test_domain_lists_cover_subdomains_only(tmp_path):
    path = _list(tmp_path, "d.txt", "example.com\n*.Bücher.example\n.org.test\nhttps://whole.site/\n")
    lists = Blocklists([read_blocklist(ListSpec(path, "domain"))])
    for url in ("http://example.com/a.jpg", "http://cdn.img.EXAMPLE.com./b.jpg", "http://xn--bcher-kva.example/c",
                "http://a.bücher.example/d", "https://org.test/e", "http://whole.site:8080/f"):
        assert lists.match_url(url) is not None, url
    for url in ("http://notexample.com/a.jpg", "http://example.com.evil.net/x", "http://test/x", "http://site/x"):
        assert lists.match_url(url) is None, url


def test_hashed_url_lists(tmp_path):
    url = "https://Img.Example.com/Cat.jpg"
    sha = hashlib.sha256(url.encode()).hexdigest()
    md5 = hashlib.md5("https://img.example.com/Cat.jpg".encode()).hexdigest()  # of the normal form
    lists = Blocklists([read_blocklist(ListSpec(_list(tmp_path, "s", f"# crawl2clip-blocklist: url-sha256\n{sha}\n"))),
                        read_blocklist(ListSpec(_list(tmp_path, "m", f"{md5.upper()}\n"), "url-md5"))])
    assert lists.match_url(url).kind == "url-sha256"
    assert lists.match_url("https://IMG.example.com/Cat.jpg").kind == "url-md5"
    assert lists.match_url("https://img.example.com/cat.jpg") is None  # paths are case-sensitive


def test_image_lists_and_their_order(tmp_path):
    data = open(os.path.join(PHOTOS, "123_456.jpg"), "rb").read()
    sha, md5 = hashlib.sha256(data).hexdigest(), hashlib.md5(data).hexdigest()
    near = io.BytesIO()
    Image.open(io.BytesIO(data)).convert("RGB").resize((100, 50)).save(near, "JPEG", quality=60)
    entry = to_hex(phash_of_bytes(near.getvalue()))
    phash_list = _list(tmp_path, "p", f"# crawl2clip-blocklist: image-phash\n0x{entry}\n")
    md5_list = _list(tmp_path, "m", f"{md5}\n")
    lists = Blocklists([read_blocklist(ListSpec(phash_list)), read_blocklist(ListSpec(md5_list, "image-md5"))], 6)
    match = lists.match_image_bytes(data)
    assert (match.kind, match.entry, match.matched) == ("image-phash", entry, "image")
    assert 0 <= int(match.detail.split()[-1]) <= 6
    assert Blocklists(lists.lists[1:]).match_image_bytes(data).kind == "image-md5"
    other = open(os.path.join(PHOTOS, "524_316.jpg"), "rb").read()
    assert lists.match_image_bytes(other) is None
    sha_list = Blocklists([read_blocklist(ListSpec(_list(tmp_path, "s", f"{sha}\n"), "image-sha256"))])
    assert sha_list.match_image(sha256=sha.upper()).entry == sha and sha_list.match_url("http://x/") is None


def test_lists_that_cannot_be_used_are_refused_with_a_reason(tmp_path):
    hexes = _list(tmp_path, "h", "d41d8cd98f00b204e9800998ecf8427e\n")
    with pytest.raises(BlocklistError, match="cannot tell what it lists"):
        read_blocklist(ListSpec(hexes))
    with pytest.raises(BlocklistError, match="header says url-md5"):
        read_blocklist(ListSpec(_list(tmp_path, "x", "# crawl2clip-blocklist: url-md5\nd41d8cd98f00b204e9800998ecf8427e\n"),
                                "image-md5"))
    with pytest.raises(BlocklistError, match="unknown list kind 'photo-hash'"):
        read_blocklist(ListSpec(_list(tmp_path, "y", "# crawl2clip-blocklist: photo-hash\nab\n")))
    with pytest.raises(BlocklistError, match="2 line\\(s\\) are not image-sha256 entries \\(line 2: 'abc', line 3"):
        read_blocklist(ListSpec(_list(tmp_path, "z", "# crawl2clip-blocklist: image-sha256\nabc\nxyz\n")))
    assert ListSpec.parse("gs://bucket/list.txt") == ListSpec("gs://bucket/list.txt")
    assert ListSpec.parse("domain:gs://bucket/d.txt") == ListSpec("gs://bucket/d.txt", "domain")
    settings = BlocklistSettings((f"image-md5:{hexes}",), phash_distance=65)
    assert blocklist_problems(settings, ("url", "image-sha256")) == [
        "--phash-distance must be between 0 and 64",
        f"--blocklist {hexes}: image-md5 lists cannot be used here (this command takes url, image-sha256)"]


# ---------------------------------------------------------------- perceptual hash


# imagehash 4.3.2's `str(imagehash.phash(Image.open(path)))` for the shared photos: lists made with
# it match ours bit for bit.
IMAGEHASH_PHASH = {"123_456.jpg": "9a5c1c84b69e98eb", "208_495.jpg": "d2adead4423d6835",
                   "321_421.jpg": "d6a93d522599e135", "389_535.jpg": "e659663de9821e51",
                   "416_264.jpg": "956d7a0b08e476b5", "456_123.jpg": "e4729fe738c06383",
                   "524_316.jpg": "847b25d67ba4329c"}


def test_phash_equals_imagehash_and_tells_photos_apart():
    hashes = {}
    for name, expected in IMAGEHASH_PHASH.items():
        hashes[name] = phash_of_bytes(open(os.path.join(PHOTOS, name), "rb").read())
        assert to_hex(hashes[name]) == expected, name
    values = list(hashes.values())
    assert min(hamming(a, b) for i, a in enumerate(values) for b in values[i + 1:]) > 16
    assert phash_of_bytes(b"<html>not an image</html>") is None


def test_stored_images_with_a_border_hash_like_their_originals():
    data = open(os.path.join(PHOTOS, "456_123.jpg"), "rb").read()
    original = phash_of_bytes(data)
    # img2dataset's border mode: the picture fitted into a square and padded
    picture = Image.open(io.BytesIO(data)).convert("RGB").resize((64, 17))
    square = Image.new("RGB", (64, 64), (255, 255, 255))
    square.paste(picture, content_box((64, 64), (456, 123))[:2])
    stored = io.BytesIO()
    square.save(stored, "JPEG", quality=95)
    whole, inner = stored_image_phashes(stored.getvalue(), (456, 123))
    assert hamming(whole, original) > 10 and hamming(inner, original) <= 4
    assert content_box((64, 48), (640, 480)) is None  # same aspect: no border
