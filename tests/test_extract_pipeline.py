"""`crawl2clip extract` end to end on DirectRunner, on every real archive in ../shared/data."""

import glob
import json
import os

import pyarrow.parquet as pq
import pytest

from crawl2clip.pipelines.cli import main
from crawl2clip.transforms.extract.archives import ArchiveError, iter_archive, open_local
from crawl2clip.transforms.extract.pairs import pairs_from_record
from crawl2clip.transforms.extract.rules import ExtractionRules, pair_uid
from crawl2clip.transforms.schema import CANDIDATE_SCHEMA, ERROR_SCHEMA


def run_extract(inputs: list[str], output: str, *extra: str) -> dict:
    assert main(["extract", "--input", *inputs, "--output", output, *extra]) == 0
    with open(os.path.join(output, "metrics.json")) as f:
        return json.load(f)


def expected_pairs(paths: list[str]) -> dict[str, tuple[str, str]]:
    """uid -> (URL, TEXT), computed with the plain functions, without Beam."""
    out = {}
    for path in paths:
        for item in iter_archive(path, open_local):
            if not isinstance(item, ArchiveError):
                for url, text, _ in pairs_from_record(item, ExtractionRules()).pairs:
                    out[pair_uid(url, text)] = (url, text)
    return out


@pytest.fixture(scope="module", params=["in_memory", "multi_processing"])
def extracted(request, warc_dir, tmp_path_factory):
    output = str(tmp_path_factory.mktemp(request.param))
    extra = ["--direct_running_mode", request.param]
    if request.param == "multi_processing":
        extra += ["--direct_num_workers", "2"]
    metrics = run_extract([os.path.join(warc_dir, "*")], output, *extra)
    return output, metrics


def test_output_schema_and_uniqueness(extracted):
    output, _ = extracted
    table = pq.read_table(os.path.join(output, "pairs"))
    assert table.schema.equals(CANDIDATE_SCHEMA)
    rows = table.to_pylist()
    assert len({r["uid"] for r in rows}) == len(rows)
    assert all(r["uid"] == pair_uid(r["URL"], r["TEXT"]) for r in rows)
    assert all(r["URL"].startswith(("http://", "https://")) and len(r["TEXT"]) >= 5 for r in rows)


def test_same_pairs_as_the_plain_functions(extracted, warc_dir):
    output, metrics = extracted
    rows = pq.read_table(os.path.join(output, "pairs")).to_pylist()
    expected = expected_pairs(sorted(glob.glob(os.path.join(warc_dir, "*"))))
    assert {r["uid"]: (r["URL"], r["TEXT"]) for r in rows} == expected
    assert len(expected) == 63
    assert metrics["counters"]["extract:unique_pairs"] == 63
    assert metrics["counters"]["extract:candidates"] == 63 + metrics["counters"]["extract:duplicate_pairs"]


def test_known_pairs_from_real_common_crawl_pages(extracted):
    output, _ = extracted
    rows = {(r["URL"], r["TEXT"]): r for r in pq.read_table(os.path.join(output, "pairs")).to_pylist()}
    cc = rows[("http://01spb.ru/logo.png", "Стратегия пожарной безопасности")]
    assert cc["page_url"] == "http://01spb.ru/company/"
    assert cc["source"].endswith("cc-main-2020-34-excerpt.warc.gz")
    assert ("https://an.wikipedia.org/static/images/footer/wikimedia-button.png", "Wikimedia Foundation") in rows
    assert ("https://commoncrawl.org/wp-content/uploads/2016/03/box-6.png",
            "Billions of pages, Trillions of links") in rows
    # An entity-escaped '&' in a real page's src is decoded.
    assert ("https://img.example.org/view?id=867&res=10x16",
            'image URL containing escaped ampersand ("&amp;")') in rows
    books = [r for (url, _), r in rows.items() if url.startswith("http://books.toscrape.com/media/")]
    assert len(books) == 19


def test_duplicates_keep_the_first_occurrence(extracted):
    output, _ = extracted
    rows = pq.read_table(os.path.join(output, "pairs")).to_pylist()
    repeated = [r for r in rows if r["occurrences"] > 1]
    assert repeated, "the real iah-urls-wget crawl repeats pairs across pages"
    star = next(r for r in rows if r["URL"] == "https://archive.org/images/star.png" and r["TEXT"] == "5.00 out of 5 stars")
    assert star["occurrences"] > 1


def test_errors_and_counters(extracted):
    output, metrics = extracted
    errors = pq.read_table(os.path.join(output, "errors"))
    assert errors.schema.equals(ERROR_SCHEMA)
    rows = errors.to_pylist()
    assert [(r["reason"], os.path.basename(r["source"]), r["offset"]) for r in rows] == [
        ("truncated_record", "clipped-record.warc.gz", 0)
    ]
    counters = metrics["counters"]
    assert counters["extract:files"] == len(glob.glob(os.path.join(os.path.dirname(rows[0]["source"]), "*")))
    assert counters["extract:error_truncated_record"] == 1
    assert counters["extract:skipped_revisit_record"] == 1
    assert counters["extract:skipped_not_html"] > 0
    assert counters["extract:dropped_no_alt"] > 100
    assert counters["extract:dropped_svg_gif"] > 0


def test_wat_files_give_the_same_pairs_as_their_warcs(wat_dir, warc_dir, tmp_path):
    wats = sorted(glob.glob(os.path.join(wat_dir, "*.wat.gz")))
    names = [os.path.basename(w)[: -len(".wat.gz")] for w in wats]  # NAME.warc[.gz] made NAME.warc.wat.gz
    warcs = [next(p for p in (os.path.join(warc_dir, n + ".gz"), os.path.join(warc_dir, n)) if os.path.exists(p))
             for n in names]
    run_extract(wats, str(tmp_path / "wat"))
    run_extract(warcs, str(tmp_path / "warc"))
    from_wat = {(r["URL"], r["TEXT"]) for r in pq.read_table(str(tmp_path / "wat" / "pairs")).to_pylist()}
    from_warc = {(r["URL"], r["TEXT"]) for r in pq.read_table(str(tmp_path / "warc" / "pairs")).to_pylist()}
    assert from_wat == from_warc and len(from_wat) > 50


def test_broken_files_do_not_stop_the_run(warc_dir, tmp_path):
    good = os.path.join(warc_dir, "books-toscrape.warc")
    binary = tmp_path / "random.warc.gz"
    binary.write_bytes(os.urandom(5000))
    metrics = run_extract([good, str(binary), str(tmp_path / "nothing-*.warc.gz")], str(tmp_path / "out"))
    reasons = sorted(r["reason"] for r in pq.read_table(str(tmp_path / "out" / "errors")).to_pylist())
    assert reasons == ["no_match", "unknown_format"]
    assert metrics["counters"]["extract:unique_pairs"] == 19


def test_invalid_options_fail_fast(tmp_path, capsys):
    assert main(["extract", "--output", str(tmp_path)]) == 2
    assert "--input" in capsys.readouterr().err
    assert main(["extract", "--input", "x.warc", "--output", str(tmp_path), "--min-alt-chars", "9",
                 "--max-alt-chars", "3"]) == 2
    assert "--max-alt-chars" in capsys.readouterr().err
    for size in ("lots", "0"):
        assert main(["extract", "--input", "x.warc", "--output", str(tmp_path), "--max-record-bytes", size]) == 2
        assert "--max-record-bytes" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "metrics.json")


def test_output_flag_never_reaches_beam_as_output():
    """Beam's option views abbreviate: a raw --output would become --output_executable_path on
    portable runners (the job server then writes its jar there instead of running the job)."""
    from apache_beam.options.pipeline_options import PortableOptions

    from crawl2clip.pipelines.options import Crawl2ClipOptions, output_flag_to_output_dir

    assert PortableOptions(["--output", "/x"]).output_executable_path == "/x"  # the trap itself
    for argv in (["--output", "/x"], ["--output=/x"]):
        options = Crawl2ClipOptions(output_flag_to_output_dir(argv))
        assert options.view_as(PortableOptions).output_executable_path is None
        assert options.view_as(Crawl2ClipOptions).output_dir == "/x"
