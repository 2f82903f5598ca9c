"""Hostile input for the extract stage (issue 15), case by case: copies of the real shared archives
broken at test time and hand-built WARCs, read back by the real reader; then all of them at once
through `crawl2clip extract` on DirectRunner."""

import gzip
import json
import os
import subprocess
import sys
import zlib

import pyarrow.parquet as pq
import pytest
from apache_beam.pvalue import TaggedOutput

from crawl2clip.pipelines.cli import main
from crawl2clip.transforms.errors import ERRORS
from crawl2clip.transforms.extract.archives import ArchiveError, ArchiveRecord, iter_archive, open_local
from crawl2clip.transforms.extract.pairs import pairs_from_html, pairs_from_record, pairs_from_wat
from crawl2clip.transforms.extract.rules import ExtractionRules
from crawl2clip.transforms.extract.transform import ExtractPairs, _guarded
from tests.archive_files import (
    block_of,
    gzip_member_offsets,
    gzip_members,
    html_response,
    page_with_images,
    real_responses,
    uncompressed_records,
    warc_record,
    with_block,
    with_header,
    write_arc,
    write_members,
    write_warc,
)

RULES = ExtractionRules()
BOOKS = "books-toscrape.warc"  # uncompressed; its one page holds 19 pairs
CC = "cc-main-2020-34-excerpt.warc.gz"  # 50 records, one gzip member each, 16 pairs


def read(path, **options) -> tuple[list[ArchiveRecord], list[ArchiveError]]:
    items = list(iter_archive(str(path), open_local, **options))
    return [i for i in items if isinstance(i, ArchiveRecord)], [i for i in items if isinstance(i, ArchiveError)]


def pairs_of(records: list[ArchiveRecord]) -> list[tuple[str, str, str]]:
    return [p for r in records for p in pairs_from_record(r, RULES).pairs]


def uri_of(record: bytes) -> str | None:
    for line in record.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"warc-target-uri:"):
            return line.split(b":", 1)[1].strip().decode()
    return None


def books_page(warc_dir) -> bytes:
    """The real books.toscrape.com page record (WARC bytes), the one with 19 pairs."""
    return next(r for r in uncompressed_records(os.path.join(warc_dir, BOOKS))
                if uri_of(r) == "http://books.toscrape.com/" and b"WARC-Type: response" in r)


def moved(pairs, host: str = "books.toscrape.com"):
    """(URL, TEXT) of the pairs the same page gives when served from another host."""
    return sorted((url.replace("books.toscrape.com", host), text) for url, text, _ in pairs)


# --- 0. WARC-Target-URI written in angle brackets ------------------------------------------------


@pytest.mark.parametrize("name", [CC, BOOKS, "iah-urls-wget.warc.gz"])
def test_bracketed_target_uris_give_the_same_pairs(warc_dir, tmp_path, name):
    source = os.path.join(warc_dir, name)
    compressed = name.endswith(".gz")
    records = gzip_members(source) if compressed else uncompressed_records(source)
    bracketed = [with_header(r, "WARC-Target-URI", f"<{uri_of(r)}>") if uri_of(r) else r for r in records]
    path = tmp_path / name
    write_warc(path, bracketed, compressed)
    original, _ = read(source)
    records, errors = read(path)
    assert errors == [] and len(records) == len(original)
    assert [r.target_uri for r in records] == [r.target_uri for r in original]
    assert pairs_of(records) == pairs_of(original) and len(pairs_of(records)) >= 16


def test_bracketed_target_uri_in_a_real_archive(warc_dir):
    records, _ = read(os.path.join(warc_dir, "link-extraction-test.warc"))
    assert "http://example.org/cc/link-extraction-test-anchor-text.html" in [r.target_uri for r in records]
    assert not any(r.target_uri.startswith("<") for r in records)


def test_bracketed_target_uris_in_arc_files(warc_dir, tmp_path):
    responses = real_responses(os.path.join(warc_dir, BOOKS))
    write_arc(str(tmp_path / "books.arc.gz"), [(f"<{u}>", d, b) for u, d, b in responses], compress=True)
    records, errors = read(tmp_path / "books.arc.gz")
    assert errors == [] and len(pairs_of(records)) == 19
    assert records[0].target_uri == "http://books.toscrape.com/"


def _wat_page(wat_dir) -> tuple[bytes, dict]:
    """The real WAT record (WARC bytes) of the books page, and its JSON."""
    member = next(m for m in gzip_members(os.path.join(wat_dir, "books-toscrape.warc.wat.gz"))
                  if b'"IMG@/src"' in m)
    return member, json.loads(block_of(member))


def _wat_record(member: bytes, document) -> ArchiveRecord:
    return ArchiveRecord("test.wat", 0, "metadata", "", "application/json", json.dumps(document).encode(), "")


def _response(document) -> dict:
    return document["Envelope"]["Payload-Metadata"]["HTTP-Response-Metadata"]


def test_bracketed_target_uri_in_wat_records(wat_dir):
    member, document = _wat_page(wat_dir)
    original = pairs_from_wat(block_of(member), RULES).pairs
    document["Envelope"]["WARC-Header-Metadata"]["WARC-Target-URI"] = "<http://books.toscrape.com/>"
    assert pairs_from_record(_wat_record(member, document), RULES).pairs == original and len(original) == 19


# --- 1. WAT records: valid JSON, wrong types ------------------------------------------------------


def _set(path: list, value):
    def change(document):
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = value(parent[path[-1]]) if callable(value) else value
        return document
    return change


_RESPONSE = ["Envelope", "Payload-Metadata", "HTTP-Response-Metadata"]


@pytest.mark.parametrize("change, field", [
    (_set(["Envelope"], lambda e: [e]), "Envelope is an array"),
    (_set(["Envelope"], None), "Envelope is null"),
    (lambda d: [d], "the record is an array"),
    (lambda d: {"Container": d["Container"]}, "no Envelope"),
    (_set(["Envelope", "Payload-Metadata"], 7), "Envelope.Payload-Metadata is a number"),
    (_set(_RESPONSE + ["Headers"], lambda h: list(h.items())), "Headers is an array"),
    (_set(_RESPONSE + ["Headers", "Content-Type"], 5), "header content-type is a number"),
    (_set(_RESPONSE + ["Response-Message"], "200 OK"), "Response-Message is a string"),
    (_set(_RESPONSE + ["Response-Message", "Status"], [200]), "Status is an array"),
    (_set(_RESPONSE + ["HTML-Metadata"], "html"), "HTML-Metadata is a string"),
    (_set(_RESPONSE + ["HTML-Metadata", "Head"], []), "Head is an array"),
    (_set(_RESPONSE + ["HTML-Metadata", "Links"], "IMG@/src"), "Links is a string"),
    (_set(["Envelope", "WARC-Header-Metadata", "WARC-Target-URI"], {"url": "http://x/"}),
     "WARC-Target-URI is an object"),
])
def test_wat_record_of_the_wrong_shape_is_one_error(wat_dir, change, field):
    member, document = _wat_page(wat_dir)
    result = pairs_from_record(_wat_record(member, change(document)), RULES)
    assert result.error is not None and result.error[0] == "bad_wat_structure"
    assert field in result.error[1] and result.pairs == []


def test_wat_links_of_the_wrong_type_are_dropped_and_counted(wat_dir):
    member, document = _wat_page(wat_dir)
    links = _response(document)["HTML-Metadata"]["Links"]
    images = [link for link in links if link["path"] == "IMG@/src"]
    images[0]["url"] = None
    images[1]["alt"] = 5
    images[2]["url"] = {"href": "x.jpg"}
    links += [7, "IMG@/src", None, {"path": ["IMG@/src"], "url": "a.jpg"}]
    result = pairs_from_record(_wat_record(member, document), RULES)
    assert result.error is None
    assert result.dropped["bad_wat_link"] == 3 + 4
    original = pairs_from_wat(block_of(member), RULES).pairs
    assert len(result.pairs) == len(original) - 3 == 16 and set(result.pairs) < set(original)


def test_wat_base_that_is_not_a_url_is_ignored_and_counted(wat_dir):
    member, document = _wat_page(wat_dir)
    original = pairs_from_wat(block_of(member), RULES).pairs
    head = _response(document)["HTML-Metadata"]["Head"]
    for base in ({"href": "/x/"}, 12, "http://[oops/"):
        head["Base"] = base
        result = pairs_from_record(_wat_record(member, document), RULES)
        assert result.pairs == original and result.ignored == {"bad_base": 1}
    head["Base"] = "http://cdn.example.net/shop/"  # a good base still moves the images
    assert moved(pairs_from_record(_wat_record(member, document), RULES).pairs, "cdn.example.net/shop") == \
        moved(original, "cdn.example.net/shop")


def test_wat_text_with_a_lone_surrogate_escape_becomes_valid_unicode(wat_dir):
    member, _ = _wat_page(wat_dir)
    block = block_of(member).replace(b'"alt":"', b'"alt":"\\ud800', 1)
    texts = [text for _, text, _ in pairs_from_wat(block, RULES).pairs]
    assert "\ufffdA Light in the Attic" in texts and len(texts) == 19
    assert all(text.encode("utf-8") for text in texts)  # every one is valid Unicode


def test_wat_json_nested_too_deep_is_bad_json():
    result = pairs_from_wat(b"[" * 100_000 + b"]" * 100_000, RULES)
    assert result.error[0] == "bad_wat_json" and "RecursionError" in result.error[1]


# --- 2. <base href> and image addresses that are not URLs ---------------------------------------


def _page_record(page: bytes, uri: str) -> ArchiveRecord:
    return ArchiveRecord("test.warc", 0, "response", uri, "application/http; msgtype=response", page, "")


def test_base_href_that_is_not_a_url_falls_back_to_the_page_url(warc_dir):
    page = block_of(books_page(warc_dir))
    original = pairs_from_record(_page_record(page, "http://books.toscrape.com/"), RULES)
    broken = page.replace(b"<head>", b'<head><base href="http://[oops/">', 1)
    result = pairs_from_record(_page_record(broken, "http://books.toscrape.com/"), RULES)
    assert result.error is None and result.ignored == {"bad_base": 1}
    assert result.pairs == original.pairs and len(result.pairs) == 19


def test_image_address_that_is_not_a_url_is_dropped(warc_dir):
    page = block_of(books_page(warc_dir)).replace(
        b"<head>", b'<head></head><body><img src="http://[oops/a.jpg" alt="an address no parser takes">', 1)
    result = pairs_from_record(_page_record(page, "http://books.toscrape.com/"), RULES)
    assert result.dropped["bad_url"] == 1 and len(result.pairs) == 19


def test_page_url_that_is_not_a_url(warc_dir):
    page = block_of(books_page(warc_dir)).replace(b"<head>", b'<head><base href="/static/">', 1)
    result = pairs_from_record(_page_record(page, "http://[oops/"), RULES)
    assert result.error is None and result.pairs == [] and result.dropped["bad_url"] == 19


def test_extract_pairs_turns_an_exception_into_an_internal_error_row():
    """The last line of defence: a record the functions were never meant to see (no bytes at all)."""
    record = ArchiveRecord("x.warc", 7, "response", "http://example.org/", "", None, "")
    dofn = ExtractPairs(RULES)
    dofn.setup()
    (out,) = list(dofn.process(record))
    assert isinstance(out, TaggedOutput) and out.tag == ERRORS
    assert (out.value["reason"], out.value["offset"]) == ("internal_error", 7)
    assert out.value["detail"].startswith("AttributeError")


class _FailingFile:
    """A file whose reads fail after `limit` bytes, as a network filesystem does mid-file."""

    def __init__(self, path, limit):
        self._file, self._limit = open(path, "rb"), limit

    def read(self, n=-1):
        if self._file.tell() >= self._limit:
            raise ConnectionResetError("the connection was reset")
        return self._file.read(n)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def test_a_reader_failing_mid_file_ends_the_file_with_one_internal_error(warc_dir):
    path = os.path.join(warc_dir, CC)
    items = list(_guarded(iter_archive(path, lambda p: _FailingFile(p, 60_000)), path))
    assert isinstance(items[-1], ArchiveError) and items[-1].reason == "internal_error"
    assert "ConnectionResetError" in items[-1].detail
    assert 0 < sum(isinstance(i, ArchiveRecord) for i in items) < 50


# --- 5. Damage in the first gzip member ----------------------------------------------------------


@pytest.mark.parametrize("where", [0, 1, 3, 10, 14, 40, "all"])
def test_damage_in_the_first_member_costs_only_that_member(warc_dir, tmp_path, where):
    source = os.path.join(warc_dir, CC)
    data = bytearray(open(source, "rb").read())
    second = gzip_member_offsets(source)[1]
    for i in range(second) if where == "all" else [where]:
        data[i] ^= 0x55
    path = tmp_path / "damaged.warc.gz"
    path.write_bytes(bytes(data))
    original, _ = read(source)
    records, errors = read(path)
    assert [(e.reason, e.offset) for e in errors] == [("corrupt_record", 0)]
    assert len(records) == 49 and records[0].offset == second
    assert pairs_of(records) == pairs_of(original) and len(pairs_of(records)) == 16  # member 0: warcinfo


def test_damaged_start_of_an_uncompressed_warc(warc_dir, tmp_path):
    source = os.path.join(warc_dir, BOOKS)
    data = bytearray(open(source, "rb").read())
    data[0:4] = b"VARC"
    path = tmp_path / "damaged.warc"
    path.write_bytes(bytes(data))
    records, errors = read(path)
    assert [(e.reason, e.offset) for e in errors] == [("corrupt_record", 0)]
    assert len(records) == 59 and len(pairs_of(records)) == 19


def test_damaged_arc_members_cost_only_themselves(warc_dir, tmp_path):
    responses = real_responses(os.path.join(warc_dir, BOOKS))
    path = str(tmp_path / "books.arc.gz")
    write_arc(path, responses, compress=True)
    data = bytearray(open(path, "rb").read())
    starts = [i for i in range(len(data)) if data[i:i + 3] == b"\x1f\x8b\x08"]
    data[12] ^= 0xFF  # the file header member
    data[starts[3] + 20] ^= 0xFF  # and a record's member
    open(path, "wb").write(bytes(data))
    records, errors = read(path)
    assert [e.reason for e in errors] == ["corrupt_record", "corrupt_record"] and errors[0].offset == 0
    assert len(records) == len(responses) - 1 and len(pairs_of(records)) == 19


# --- 6. A Content-Length that lies ---------------------------------------------------------------


def _five_pages() -> list[bytes]:
    return [warc_record(f"http://site{i}.example/", html_response(page_with_images(f"site{i}", 3))) for i in range(5)]


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("declared", [99999999999999, "+300", "+5", "-1", "-50", 0])
@pytest.mark.parametrize("record_type", ["response", "request"])
def test_wrong_content_length_is_one_error_and_the_next_record_is_read(tmp_path, compress, declared, record_type):
    records = _five_pages()
    block = block_of(records[2])
    length = declared if isinstance(declared, int) else len(block) + int(declared)
    records[2] = with_header(warc_record("http://site2.example/", block, record_type=record_type), "Content-Length",
                             str(length))
    path = tmp_path / ("lying.warc.gz" if compress else "lying.warc")
    offsets = write_warc(path, records, compress)
    read_records, errors = read(path)
    assert [(e.reason, e.offset) for e in errors] == [("bad_content_length", offsets[2])]
    assert [r.offset for r in read_records] == offsets[:2] + offsets[3:]
    assert len(pairs_of(read_records)) == 4 * 3


def test_wrong_content_length_in_real_archives(warc_dir, tmp_path):
    source = os.path.join(warc_dir, "iah-urls-wget.warc.gz")
    members = gzip_members(source)
    original, _ = read(source)
    page = next(i for i, r in enumerate(original) if pairs_of([r]))  # the first page with pairs
    members[page] = with_header(members[page], "Content-Length", "99999999999999")
    offsets = write_members(tmp_path / "lying.warc.gz", members)
    records, errors = read(tmp_path / "lying.warc.gz")
    assert [(e.reason, e.offset) for e in errors] == [("bad_content_length", offsets[page])]
    assert len(records) == len(original) - 1
    assert len(pairs_of(records)) == len(pairs_of(original)) - len(pairs_of([original[page]])) == 22


def test_file_cut_inside_a_record_is_still_truncated(warc_dir):
    records, errors = read(os.path.join(warc_dir, "clipped-record.warc.gz"))
    assert records == [] and [(e.reason, e.offset) for e in errors] == [("truncated_record", 0)]


# --- 7. Records bigger than the limit -----------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_records_over_the_limit_are_counted_not_read(warc_dir, tmp_path, compress):
    records = uncompressed_records(os.path.join(warc_dir, BOOKS))
    path = tmp_path / ("books.warc.gz" if compress else "books.warc")
    offsets = write_warc(path, records, compress)
    read_records, errors = read(path, max_record_bytes=100_000)
    big = [i for i, r in enumerate(records) if len(block_of(r)) > 100_000]
    assert len(big) == 1
    assert [(e.reason, e.offset) for e in errors] == [("record_too_large", offsets[big[0]])]
    assert "215342 bytes" in errors[0].detail
    assert [r.offset for r in read_records] == [o for i, o in enumerate(offsets) if i not in big]
    assert len(pairs_of(read_records)) == 19


def _zero_member(path, size: int) -> None:
    """A page, a record of `size` zero bytes in one gzip member (a few hundred KiB on disk), a page."""
    head = warc_record("http://huge.example/", b"", content_length=size)[:-4]
    deflate = zlib.compressobj(1, zlib.DEFLATED, 31)
    with open(path, "wb") as out:
        out.write(gzip.compress(_five_pages()[0]))
        out.write(deflate.compress(head))
        zeros = bytes(1 << 20)
        for _ in range(size >> 20):
            out.write(deflate.compress(zeros))
        out.write(deflate.compress(b"\r\n\r\n") + deflate.flush())
        out.write(gzip.compress(_five_pages()[1]))


# Peak memory from VmHWM: ru_maxrss would carry the forking pytest process's peak over exec.
_PEAK_MEMORY = """
import re, sys
from crawl2clip.transforms.extract.archives import ArchiveRecord, iter_archive, open_local
items = list(iter_archive(sys.argv[1], open_local, max_record_bytes=int(sys.argv[2])))
print([getattr(i, "reason", None) or len(i.block) for i in items])
print(int(re.search(r"VmHWM:\\s*(\\d+) kB", open("/proc/self/status").read()).group(1)) // 1024)
"""


def test_a_huge_member_keeps_memory_flat(tmp_path):
    path = tmp_path / "huge.warc.gz"
    size = 192 << 20
    _zero_member(path, size)
    assert os.path.getsize(path) < 2 << 20

    def run(limit: int) -> tuple[str, int]:
        out = subprocess.run([sys.executable, "-c", _PEAK_MEMORY, str(path), str(limit)],
                             capture_output=True, text=True, check=True).stdout.split("\n")
        return out[0], int(out[1])

    items, peak_mib = run(1 << 20)
    blocks = [len(html_response(page_with_images(f"site{i}", 3))) for i in range(2)]
    assert items == str([blocks[0], "record_too_large", blocks[1]])
    items_read, peak_read_mib = run(1 << 30)  # the same file with the block read: the test can tell
    assert items_read == str([blocks[0], size, blocks[1]])
    assert peak_read_mib > 192 > peak_mib + 64, (peak_mib, peak_read_mib)


# --- 8. NUL bytes in text pages ------------------------------------------------------------------


def test_nul_bytes_in_a_text_page_do_not_cost_its_pairs(warc_dir):
    record = gzip_members(os.path.join(warc_dir, "commoncrawl-homepage-2019.warc.gz"))[0]
    block = block_of(record)
    uri = uri_of(record)
    original = pairs_from_record(_page_record(block, uri), RULES).pairs
    body = block.index(b"\r\n\r\n") + 4
    alt = block.index(b'alt="', body) + 7
    for positions in ([body + 40], [alt], [body + 40, alt, len(block) // 2, len(block) - 3]):
        damaged = bytearray(block)
        for position in sorted(positions, reverse=True):
            damaged[position:position] = b"\x00"
        result = pairs_from_record(_page_record(bytes(damaged), uri), RULES)
        assert result.error is None and result.pairs == original and len(original) == 6


def test_binary_bodies_served_as_html_are_still_refused(warc_dir):
    responses = real_responses(os.path.join(warc_dir, BOOKS))
    jpeg = next(block for _, _, block in responses if b"image/jpeg" in block[:500])
    body = jpeg.split(b"\r\n\r\n", 1)[1]
    relabelled = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n" + body
    assert pairs_from_record(_page_record(relabelled, "http://x.example/"), RULES).error[0] == "undecodable_html"
    assert pairs_from_html(b"<p>text</p>" + b"\x00" * 400 + b"<img src=a.jpg alt='hello there'>",
                           "http://x.example/", "text/html", RULES).error[0] == "undecodable_html"


# --- All of it through `crawl2clip extract` ---------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_run(warc_dir, wat_dir, tmp_path_factory):
    """One extract run over a hostile copy per case, each from a different real source (or with
    its pages moved to their own host) so that no two inputs share pairs."""
    folder = tmp_path_factory.mktemp("hostile")
    expected = {}  # input name -> the (URL, TEXT) pairs it must give

    # 1. wrong types in WAT records: four records of the wrong shape, one with wrong-typed links
    member, document = _wat_page(wat_dir)
    original = pairs_from_wat(block_of(member), RULES).pairs
    members = [m for m in gzip_members(os.path.join(wat_dir, "books-toscrape.warc.wat.gz")) if m != member]

    def copy(host: str, change) -> bytes:
        changed = json.loads(block_of(member))
        changed["Envelope"]["WARC-Header-Metadata"]["WARC-Target-URI"] = f"http://{host}/"
        changed = change(changed)
        return with_block(member, json.dumps(changed).encode())

    def images(d):
        return [link for link in _response(d)["HTML-Metadata"]["Links"] if link["path"] == "IMG@/src"]

    def wrong_links(d):
        images(d)[0]["url"], images(d)[1]["alt"] = None, 5
        return d

    def lone_surrogate(d):  # json.dumps writes it as the escape \ud800, as a hostile WAT would
        images(d)[0]["alt"] = "\ud800" + images(d)[0]["alt"]
        return d

    members += [
        copy("a.example", _set(["Envelope"], lambda e: [e])),
        copy("b.example", _set(_RESPONSE + ["Headers"], lambda h: list(h.items()))),
        copy("c.example", _set(_RESPONSE + ["HTML-Metadata", "Links"], "IMG@/src")),
        copy("d.example", _set(["Envelope", "WARC-Header-Metadata", "WARC-Target-URI"], {"url": "x"})),
        copy("links.example", wrong_links),
        copy("base.example", _set(_RESPONSE + ["HTML-Metadata", "Head", "Base"], {"href": "/"})),
        copy("surrogate.example", lone_surrogate),
    ]
    write_members(folder / "wrong-types.warc.wat.gz", members)
    # The first two image links give the first two pairs: those two are lost, and only those.
    (first_url, first_text), = moved(original[:1], "surrogate.example")
    surrogate = [(first_url, "\ufffd" + first_text)] + moved(original[1:], "surrogate.example")
    expected["wrong-types.warc.wat.gz"] = sorted(
        moved(original[2:], "links.example") + moved(original, "base.example") + surrogate)

    # 2. a <base href> no parser takes, between two good records
    page = books_page(warc_dir)
    broken = with_block(page, block_of(page).replace(b"<head>", b'<head><base href="http://[oops/">', 1))
    broken = with_header(broken, "WARC-Target-URI", "http://oops.example/")
    write_warc(folder / "bad-base.warc", [_five_pages()[0], broken, _five_pages()[1]], compress=False)
    books_pairs = pairs_from_record(_page_record(block_of(page), "http://books.toscrape.com/"), RULES).pairs
    site_pairs = [pairs_from_record(_page_record(block_of(r), f"http://site{i}.example/"), RULES).pairs
                  for i, r in enumerate(_five_pages())]
    expected["bad-base.warc"] = sorted(moved(books_pairs, "oops.example") + moved(site_pairs[0] + site_pairs[1]))

    # 6. a lying Content-Length in a real gzip WARC and in a hand-built uncompressed one
    iah = gzip_members(os.path.join(warc_dir, "iah-urls-wget.warc.gz"))
    iah_records, _ = read(os.path.join(warc_dir, "iah-urls-wget.warc.gz"))
    lying = next(i for i, r in enumerate(iah_records) if pairs_of([r]))
    iah[lying] = with_header(iah[lying], "Content-Length", "99999999999999")
    write_members(folder / "lying.warc.gz", iah)
    expected["lying.warc.gz"] = sorted({(u, t) for i, r in enumerate(iah_records) if i != lying
                                        for u, t, _ in pairs_of([r])})
    pages = _five_pages()[2:]
    pages[1] = with_header(pages[1], "Content-Length", "99999999999999")
    write_warc(folder / "lying.warc", pages, compress=False)
    expected["lying.warc"] = moved(site_pairs[2] + site_pairs[4])

    # 5. the first gzip member damaged
    data = bytearray(open(os.path.join(warc_dir, CC), "rb").read())
    data[10] ^= 0xFF
    (folder / "first-member.warc.gz").write_bytes(bytes(data))
    expected["first-member.warc.gz"] = sorted({(u, t) for u, t, _ in pairs_of(read(os.path.join(warc_dir, CC))[0])})

    # 7. a record over --max-record-bytes (books' 215 KB stylesheet), pages moved to their own host
    books = [with_header(r, "WARC-Target-URI", f"<{uri_of(r).replace('books.toscrape.com', 'big.example')}>")
             if uri_of(r) else r for r in uncompressed_records(os.path.join(warc_dir, BOOKS))]
    write_warc(folder / "big.warc.gz", books, compress=True)  # (and its URIs in angle brackets: item 0)
    expected["big.warc.gz"] = moved(books_pairs, "big.example")

    # 8. NUL bytes in a page
    home = gzip_members(os.path.join(warc_dir, "commoncrawl-homepage-2019.warc.gz"))[0]
    block = block_of(home)
    alt = block.index(b'alt="') + 7
    write_members(folder / "nul.warc.gz", [with_block(home, block[:alt] + b"\x00" + block[alt:])])
    expected["nul.warc.gz"] = sorted({(u, t) for u, t, _ in pairs_from_record(
        _page_record(block, uri_of(home)), RULES).pairs})

    output = folder / "out"
    inputs = sorted(str(folder / name) for name in expected)
    assert main(["extract", "--input", *inputs, "--output", str(output), "--no-langid",
                 "--max-record-bytes", "200KB"]) == 0
    rows = pq.read_table(str(output / "pairs")).to_pylist()
    errors = pq.read_table(str(output / "errors")).to_pylist()
    metrics = json.loads((output / "metrics.json").read_text())
    return expected, rows, errors, metrics["counters"]


def _pairs_from(rows, name: str):
    return sorted((r["URL"], r["TEXT"]) for r in rows if os.path.basename(r["source"]) == name)


def _errors_from(errors, name: str):
    return sorted(r["reason"] for r in errors if os.path.basename(r["source"]) == name)


def test_run_keeps_every_good_pair(hostile_run):
    expected, rows, _, counters = hostile_run
    for name, pairs in expected.items():
        assert _pairs_from(rows, name) == pairs and pairs, name
    assert counters["extract:unique_pairs"] == len(rows) == sum(len(p) for p in expected.values())


def test_run_names_each_reason(hostile_run):
    _, _, errors, counters = hostile_run
    assert _errors_from(errors, "wrong-types.warc.wat.gz") == ["bad_wat_structure"] * 4
    assert all("Envelope" in r["detail"] or "Headers" in r["detail"] or "Links" in r["detail"]
               for r in errors if r["reason"] == "bad_wat_structure")
    assert _errors_from(errors, "lying.warc.gz") == ["bad_content_length"]
    assert _errors_from(errors, "lying.warc") == ["bad_content_length"]
    assert _errors_from(errors, "first-member.warc.gz") == ["corrupt_record"]
    assert _errors_from(errors, "big.warc.gz") == ["record_too_large"]
    assert _errors_from(errors, "bad-base.warc") == _errors_from(errors, "nul.warc.gz") == []
    assert counters["extract:dropped_bad_wat_link"] == 2
    assert counters["extract:ignored_bad_base"] == 2  # the WAT's base object and the HTML's [oops
    assert counters["extract:error_bad_wat_structure"] == 4 and counters["extract:error_record_too_large"] == 1
