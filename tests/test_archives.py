"""Reading real archives, their edge cases, and broken copies of them."""

import gzip
import os
import shutil

import pytest

from crawl2clip.transforms.extract.archives import ArchiveError, ArchiveRecord, iter_archive, open_local
from crawl2clip.transforms.extract.pairs import pairs_from_record
from crawl2clip.transforms.extract.rules import ExtractionRules
from tests.archive_files import gzip_member_offsets, real_responses, write_arc


def read(path: str) -> tuple[list[ArchiveRecord], list[ArchiveError]]:
    items = list(iter_archive(path, open_local))
    return [i for i in items if isinstance(i, ArchiveRecord)], [i for i in items if isinstance(i, ArchiveError)]


def pairs(records: list[ArchiveRecord]) -> list[tuple[str, str, str]]:
    return [p for r in records for p in pairs_from_record(r, ExtractionRules()).pairs]


def test_real_common_crawl_warc(warc_dir):
    records, errors = read(os.path.join(warc_dir, "cc-main-2020-34-excerpt.warc.gz"))
    assert errors == []
    assert len(records) == 50
    assert [r.record_type for r in records].count("response") == 16
    assert all(r.offset >= 0 for r in records) and records[0].offset == 0
    assert ("http://01spb.ru/logo.png", "Стратегия пожарной безопасности", "http://01spb.ru/company/") in pairs(records)


def test_clipped_record_is_an_error_with_offset(warc_dir):
    records, errors = read(os.path.join(warc_dir, "clipped-record.warc.gz"))
    assert records == []
    assert [(e.reason, e.offset) for e in errors] == [("truncated_record", 0)]
    assert "75207 of 88275" in errors[0].detail


def test_single_gzip_stream_is_read_whole(warc_dir):
    records, errors = read(os.path.join(warc_dir, "single-gzip-stream.warc.gz"))
    assert errors == [] and len(records) == 30
    assert len(pairs(records)) == 1


@pytest.mark.parametrize("name, count", [("gzip-extra-field.warc.gz", 1), ("crlf-at-1k-boundary.warc.gz", 1)])
def test_gzip_edge_cases(warc_dir, name, count):
    records, errors = read(os.path.join(warc_dir, name))
    assert errors == [] and len(records) == count


def test_revisit_record_is_read_but_yields_nothing(warc_dir):
    records, errors = read(os.path.join(warc_dir, "warcio-example-revisit.warc.gz"))
    revisits = [r for r in records if r.record_type == "revisit"]
    assert errors == [] and len(revisits) == 1
    assert pairs_from_record(revisits[0], ExtractionRules()).skipped == "revisit_record"


def _damaged_copy(warc_dir, tmp_path, damage) -> tuple[str, list[int]]:
    source = os.path.join(warc_dir, "cc-main-2020-34-excerpt.warc.gz")
    offsets = gzip_member_offsets(source)
    data = bytearray(open(source, "rb").read())
    damage(data, offsets)
    path = tmp_path / "damaged.warc.gz"
    path.write_bytes(bytes(data))
    return str(path), offsets


def _flip(data, start, end):
    for i in range(start, end):
        data[i] ^= 0xFF


@pytest.mark.parametrize(
    "damage, lost",
    [
        (lambda d, o: _flip(d, o[10] + 30, o[10] + 60), 1),  # corrupt deflate data in member 10
        (lambda d, o: _flip(d, o[10], o[10] + 2), 1),  # member 10's gzip magic destroyed
        (lambda d, o: [_flip(d, o[k] + 40, o[k] + 50) for k in (3, 4, 20)], 3),  # three, two adjacent
    ],
)
def test_corrupt_gzip_members_cost_only_themselves(warc_dir, tmp_path, damage, lost):
    path, offsets = _damaged_copy(warc_dir, tmp_path, damage)
    records, errors = read(path)
    assert len(records) == 50 - lost
    assert errors and all(e.reason == "corrupt_record" for e in errors)
    assert {r.offset for r in records} <= set(offsets)


def test_bad_record_header_is_an_error_and_reading_goes_on(warc_dir, tmp_path):
    source = os.path.join(warc_dir, "cc-main-2020-34-excerpt.warc.gz")
    offsets = gzip_member_offsets(source)
    data = open(source, "rb").read()
    member = gzip.decompress(data[offsets[10]:offsets[11]]).replace(b"WARC/1.0", b"WXRC/9.9", 1)
    path = tmp_path / "bad-header.warc.gz"
    path.write_bytes(data[:offsets[10]] + gzip.compress(member) + data[offsets[11]:])
    records, errors = read(str(path))
    assert len(records) == 49
    assert [(e.reason, e.offset) for e in errors] == [("corrupt_record", offsets[10])]


def test_file_cut_inside_a_record_header(warc_dir, tmp_path):
    source = os.path.join(warc_dir, "cc-main-2020-34-excerpt.warc.gz")
    offsets = gzip_member_offsets(source)
    path = tmp_path / "cut.warc.gz"
    path.write_bytes(open(source, "rb").read()[: offsets[11] + 100])
    records, errors = read(str(path))
    assert len(records) == 11
    assert [(e.reason, e.offset) for e in errors] == [("truncated_record", offsets[11])]


def test_uncompressed_warc_with_garbage_in_the_middle(warc_dir, tmp_path):
    source = os.path.join(warc_dir, "books-toscrape.warc")
    data = open(source, "rb").read()
    clean, _ = read(source)
    cut = clean[5].offset
    path = tmp_path / "garbage.warc"
    path.write_bytes(data[:cut] + b"garbage that is not a record\r\n" * 3 + data[cut + 10:])
    records, errors = read(str(path))
    assert errors and errors[0].reason == "corrupt_record"
    assert len(records) == len(clean) - 1
    assert len(pairs(records)) == len(pairs(clean))  # record 5 is a JPEG, not a page


def test_unreadable_and_unknown_files(tmp_path):
    records, errors = read(str(tmp_path / "missing.warc.gz"))
    assert records == [] and [e.reason for e in errors] == ["unreadable_file"]
    text = tmp_path / "notes.txt"
    text.write_text("just some text\n")
    assert [e.reason for e in read(str(text))[1]] == ["unknown_format"]


@pytest.mark.parametrize("compress", [False, True])
def test_arc_files(warc_dir, tmp_path, compress):
    responses = real_responses(os.path.join(warc_dir, "books-toscrape.warc"))
    path = str(tmp_path / ("books.arc.gz" if compress else "books.arc"))
    write_arc(path, responses, compress)
    records, errors = read(path)
    assert errors == [] and len(records) == len(responses)
    warc_pairs = pairs(read(os.path.join(warc_dir, "books-toscrape.warc"))[0])
    assert pairs(records) == warc_pairs and len(warc_pairs) == 19
