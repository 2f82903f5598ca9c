"""Page-level opt-outs and URL removal lists at extract: real pages in a WARC (and the WAT a
crawler would have written for them) through the real `crawl2clip extract`."""

import glob
import hashlib
import json
import os

import pyarrow.parquet as pq
import pytest
from fastwarc.warc import ArchiveIterator
from selectolax.lexbor import LexborHTMLParser

from crawl2clip.pipelines.cli import main
from crawl2clip.transforms.consent.audit import REMOVED_SCHEMA
from crawl2clip.transforms.consent.reservations import META_NAMES, page_reservations, response_headers
from crawl2clip.transforms.extract.archives import ArchiveRecord, iter_archive, open_local
from crawl2clip.transforms.extract.html import detect_charset, iter_tags, unescape_attribute
from crawl2clip.transforms.extract.http import decoded_body, parse_http_response
from crawl2clip.transforms.extract.pairs import is_html, pairs_from_record
from crawl2clip.transforms.extract.rules import ExtractionRules
from crawl2clip.transforms.schema import CANDIDATE_SCHEMA
from tests.archive_files import warc_record, write_warc

# name -> (extra response headers, extra <head> markup, the reasons expected)
PAGES = {
    "meta-robots": ({}, '<meta name="robots" content="index, NoAI, noimageai">', ("meta_noai", "meta_noimageai")),
    "meta-token": ({}, "<META NAME=crawl2clip CONTENT=noimageai>", ("meta_noimageai",)),
    "tdm-meta": ({}, '<meta name="tdm-reservation" content="1"><meta name="tdm-policy" content="https://p.example/">',
                 ("tdm_meta",)),
    "tdm-header": ({"tdm-reservation": "1"}, "", ("tdm_header",)),
    "tdm-meta-lifts-header": ({"TDM-Reservation": "1"}, '<meta name="tdm-reservation" content="0">', ()),
    "x-robots": ({"X-Robots-Tag": "noimageai"}, "", ("x_robots_noimageai",)),
    "x-robots-scoped": ({"X-Robots-Tag": "crawl2clip: noai"}, "", ("x_robots_noai",)),
    "x-robots-other-bot": ({"X-Robots-Tag": "otherbot: noai, noimageai"}, "", ()),
    "noindex-only": ({"X-Robots-Tag": "noindex"}, '<meta name="robots" content="noindex, nofollow">', ()),
    "meta-in-comment": ({}, '<!-- <meta name="robots" content="noai"> --><script>"<meta name=robots content=noai>"</script>',
                        ()),
    "tdm-bad-value": ({"tdm-reservation": "yes"}, '<meta name="tdm-reservation" content="2">', ()),
    "plain": ({}, "", ()),
}
KEPT = {name for name, (_, _, reasons) in PAGES.items() if not reasons}


def page_url(name: str) -> str:
    host = "cdn.blocked.example" if name == "plain" else f"{name}.example.org"
    return f"https://{host}/articles/{name}.html"


def page_html(name: str, head: str) -> str:
    images = "".join(f'<img src="/img/{name}-{i}.jpg" alt="photo {i} from the {name} page">' for i in range(2))
    return f"<!doctype html><html><head><title>{name}</title>{head}</head><body>{images}</body></html>"


def http_response(body: str, headers: dict) -> bytes:
    data = body.encode()
    lines = ["HTTP/1.1 200 OK", "Content-Type: text/html; charset=utf-8", f"Content-Length: {len(data)}",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def wat_record(name: str, headers: dict, html: str) -> bytes:
    """The WAT metadata record a Common Crawl WAT generator writes for the page: its HTTP headers,
    `Head.Metas` (values as written) and image links."""
    tree = LexborHTMLParser(html)
    metas = [{k: v for k, v in node.attributes.items() if k in ("name", "content")} for node in tree.css("meta")]
    links = [{"path": "IMG@/src", "url": node.attributes["src"], "alt": node.attributes["alt"]} for node in tree.css("img")]
    envelope = {"Envelope": {
        "Format": "WARC",
        "WARC-Header-Metadata": {"WARC-Type": "response", "WARC-Target-URI": page_url(name)},
        "Payload-Metadata": {"HTTP-Response-Metadata": {
            "Response-Message": {"Status": "200", "Version": "HTTP/1.1", "Reason": "OK"},
            "Headers": {"Content-Type": "text/html; charset=utf-8", **headers},
            "HTML-Metadata": {"Head": {"Title": name, "Metas": metas}, "Links": links},
        }},
    }}
    return warc_record(page_url(name), json.dumps(envelope).encode(), "metadata", content_type="application/json")


@pytest.fixture(scope="module")
def crawl(tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("consent-crawl")
    warc, wat = str(folder / "pages.warc.gz"), str(folder / "pages.warc.wat.gz")
    write_warc(warc, [warc_record(page_url(n), http_response(page_html(n, head), headers))
                      for n, (headers, head, _) in PAGES.items()], compress=True)
    write_warc(wat, [wat_record(n, headers, page_html(n, head)) for n, (headers, head, _) in PAGES.items()],
               compress=True)
    return {"warc": warc, "wat": wat, "folder": str(folder)}


def _records(path: str) -> list[ArchiveRecord]:
    return [r for r in iter_archive(path, open_local) if isinstance(r, ArchiveRecord)]


def test_every_page_gives_its_reservations_from_the_warc_and_from_the_wat(crawl):
    for kind in ("warc", "wat"):
        found = {r.target_uri: pairs_from_record(r, ExtractionRules()).reservations for r in _records(crawl[kind])}
        assert found == {page_url(n): reasons for n, (_, _, reasons) in PAGES.items()}, kind


def test_extract_drops_reserving_pages_and_counts_each_reason(crawl, tmp_path):
    output = str(tmp_path / "out")
    assert main(["extract", "--input", crawl["warc"], "--output", output, "--no-langid"]) == 0
    table = pq.read_table(os.path.join(output, "pairs"))
    assert table.schema.equals(CANDIDATE_SCHEMA)
    assert sorted(set(table.column("page_url").to_pylist())) == sorted(page_url(n) for n in KEPT)
    assert table.num_rows == 2 * len(KEPT) and set(table.column("page_optout").to_pylist()) == {None}
    with open(os.path.join(output, "metrics.json")) as f:
        counters = json.load(f)["counters"]
    reserving = [reasons for _, _, reasons in PAGES.values() if reasons]
    assert counters["extract:optout_pages"] == len(reserving)
    for reason in ("meta_noai", "meta_noimageai", "tdm_meta", "tdm_header", "x_robots_noai", "x_robots_noimageai"):
        # each page's pairs (2) are counted once, under its first reason
        assert counters.get(f"extract:optout_{reason}", 0) == 2 * sum(r[0] == reason for r in reserving), reason
    assert counters["extract:candidates"] == table.num_rows


def test_ignore_page_optouts_keeps_them_and_says_why(crawl, tmp_path):
    output = str(tmp_path / "out")
    assert main(["extract", "--input", crawl["warc"], "--output", output, "--no-langid", "--ignore-page-optouts"]) == 0
    rows = pq.read_table(os.path.join(output, "pairs")).to_pylist()
    assert len(rows) == 2 * len(PAGES)
    by_page = {row["page_url"]: row["page_optout"] for row in rows}
    assert by_page == {page_url(n): ",".join(reasons) or None for n, (_, _, reasons) in PAGES.items()}


def test_wat_and_warc_extracts_agree(crawl, tmp_path):
    outputs = {}
    for kind in ("warc", "wat"):
        outputs[kind] = str(tmp_path / kind)
        assert main(["extract", "--input", crawl[kind], "--output", outputs[kind], "--no-langid",
                     "--ignore-page-optouts"]) == 0

    def rows(kind):
        table = pq.read_table(os.path.join(outputs[kind], "pairs"))
        return sorted(zip(*(table.column(c).to_pylist() for c in ("uid", "page_url", "page_optout"))))

    assert rows("warc") == rows("wat") and len(rows("warc")) == 2 * len(PAGES)


def test_url_and_domain_lists_remove_pairs_before_any_request(crawl, tmp_path):
    lists = tmp_path / "lists"
    lists.mkdir()
    # A URL list (the entry differs in scheme and host case: still the same image), a domain list
    # naming a parent of the plain page's host, a hashed-URL list (sha256 of a page URL).
    image = "https://x-robots-other-bot.example.org/img/x-robots-other-bot-0.jpg"
    (lists / "urls.txt").write_text(
        "# a comment line\n\nhttp://X-ROBOTS-OTHER-BOT.example.org/img/x-robots-other-bot-0.jpg\n")
    (lists / "domains.txt").write_text("# crawl2clip-blocklist: domain\n*.blocked.example  # the whole site\n")
    hashed = hashlib.sha256(page_url("noindex-only").encode()).hexdigest()
    (lists / "pages.sha256").write_text(f"{hashed.upper()}\n")
    output = str(tmp_path / "out")
    assert main(["extract", "--input", crawl["warc"], "--output", output, "--no-langid",
                 "--blocklist", str(lists / "urls.txt"), str(lists / "domains.txt"),
                 "--blocklist", f"url-sha256:{lists / 'pages.sha256'}"]) == 0
    pairs = pq.read_table(os.path.join(output, "pairs")).to_pylist()
    removed = pq.read_table(os.path.join(output, "removed"))
    assert removed.schema.equals(REMOVED_SCHEMA)
    audit = {(r["URL"], r["list"], r["entry"], r["matched"], r["reason"], r["stage"]) for r in removed.to_pylist()}
    assert audit == {
        (image, str(lists / "urls.txt"), "http://X-ROBOTS-OTHER-BOT.example.org/img/x-robots-other-bot-0.jpg",
         "URL", "url", "extract"),
        *((f"https://cdn.blocked.example/img/plain-{i}.jpg", str(lists / "domains.txt"), "*.blocked.example",
           "URL", "domain", "extract") for i in range(2)),
        *((f"https://noindex-only.example.org/img/noindex-only-{i}.jpg", str(lists / "pages.sha256"), hashed.upper(),
           "page_url", "url-sha256", "extract") for i in range(2)),
    }
    # entries are named as the lists write them
    assert {r["uid"] for r in removed.to_pylist()}.isdisjoint({p["uid"] for p in pairs})
    assert len(pairs) + removed.num_rows == 2 * len(KEPT)
    with open(os.path.join(output, "metrics.json")) as f:
        counters = json.load(f)["counters"]
    assert (counters["extract:removed_url"], counters["extract:removed_domain"],
            counters["extract:removed_url_sha256"]) == (1, 2, 2)


def test_unusable_lists_stop_the_command_before_any_work(crawl, tmp_path, capsys):
    hashes = tmp_path / "hashes.txt"
    hashes.write_text("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\n")
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("# crawl2clip-blocklist: url\nhttps://a.example/x.jpg\nnot a url\n")
    for bad, message in ((str(hashes), "cannot tell what it lists"), (str(mixed), "line 3: 'not'"),
                         (str(tmp_path / "missing.txt"), "cannot read it"),
                         (f"image-phash:{hashes}", "not image-phash entries")):
        output = str(tmp_path / "never")
        assert main(["extract", "--input", crawl["warc"], "--output", output, "--blocklist", bad]) == 2
        assert message in capsys.readouterr().err
        assert not os.path.exists(output)


def test_meta_tags_are_the_ones_the_lexbor_html5_parser_sees_on_every_real_page(warc_dir):
    compared = 0
    for path in sorted(glob.glob(os.path.join(warc_dir, "*.warc*"))):
        if "clipped" in path:
            continue
        for record in ArchiveIterator(path, parse_http=False):
            if record.headers.get("WARC-Type") != "response":
                continue
            block = record.reader.read()
            response = parse_http_response(block)
            if not is_html(response.headers.get("content-type", ""), response.body):
                continue
            page = decoded_body(response)
            charset = detect_charset(page)
            def text(raw: bytes) -> str:  # decoded as lexbor gets the page
                return unescape_attribute(raw.decode(charset, "replace"))

            ours = [(text(a.get(b"name", b"")), text(a.get(b"content", b"")))
                    for tag, a in iter_tags(page) if tag == b"meta"]
            theirs = [(n.attributes.get("name") or "", n.attributes.get("content") or "")
                      for n in LexborHTMLParser(page.decode(charset, "replace")).css("meta")]
            assert ours == theirs, record.headers.get("WARC-Target-URI")
            compared += len(ours)
            # and a real page's own headers parse: none of these pages reserves anything
            assert page_reservations([m for m in ours if m[0].lower().encode() in META_NAMES],
                                     response_headers(block[:len(block) - len(response.body)])) == ()
    assert compared > 50
