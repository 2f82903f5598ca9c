#!/usr/bin/env python
"""How fast is the extract stage, on one core, compared with plain gzip decompression?

    .venv/bin/python bench/extract_speed.py [--size-mb 50] [--repeat 3] [--pipeline-repeat 3] [--cpu 0]

1. Builds (once; cached in .cache/bench/) a ~50 MB gzip WARC, one gzip member per record
   (Common Crawl style), from the real records of the shared web archives: every HTML page with
   its request and metadata records, redirects and error pages, small non-HTML responses and a
   rotating quarter of the image responses. The set is written again and again, each copy with
   its own host name (`c0042.books.toscrape.com`) in WARC-Target-URI, so relative image URLs
   resolve to new URLs and pairs are not all duplicates after dedup. Payloads are left
   byte-for-byte as crawled (chunked, gzip and brotli bodies stay valid). Deterministic.
2. Times on one core (this process is pinned to CPU 0, the pipeline runs under `taskset -c 0`),
   best of --repeat interleaved rounds (each round runs every measurement once, so a burst of
   load from other work on the machine spoils one round, not one measurement):
   (a) raw gzip decompression of the file with Python's zlib: zlib.decompressobj(wbits=31) member
       by member, and gzip.open; the faster is (a). fastwarc's own gzip reader (Rust zlib-rs) is
       timed too, for reference.
   (b) record iteration reading every record's content: warcio, fastwarc, and iter_archive
   (c) pairs_from_record over records already in memory; the same with the HTML part done by
       the lexbor HTML5 parser (selectolax) instead of the tokenizer; the HTML part alone
   (c+) iter_archive feeding pairs_from_record: the real per-file work
   (d) `crawl2clip extract --runner DirectRunner` as a subprocess (without the language stage,
       like (c), and once with it), its unique pairs checked against (c)'s;
       also a bare import of the CLI and the same command on a one-page WARC (the fixed cost)
3. Writes bench/results/extract_speed.json and prints a table. MB = 10^6 bytes.
"""

import argparse
import gc
import glob
import gzip
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
import uuid
import zlib
from importlib.metadata import version
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WARC_DIR = REPO.parent / "shared" / "data" / "warc"
DEFAULT_CACHE = REPO / ".cache" / "bench"
DEFAULT_RESULT = REPO / "bench" / "results" / "extract_speed.json"
MB = 1e6
_CPU = 0  # the one CPU everything runs on (--cpu)
BUILD_VERSION = 2  # bump when the corpus recipe changes: the cached file is rebuilt

# Real captures of several crawlers: Common Crawl (Nutch), wget, headless Chrome, WARCreate, Webrecorder.
# single-gzip-stream.warc.gz is warcreate-capture.warc gzipped as one stream: left out (same
# records); clipped-record.warc.gz (a truncated record) and the WAT/WET files are left out too.
SOURCES = (
    "books-toscrape.warc",
    "cc-main-2020-34-excerpt.warc.gz",
    "cc-main-2024-22-whirlwind.warc.gz",
    "commoncrawl-homepage-2019.warc.gz",
    "crlf-at-1k-boundary.warc.gz",
    "edsu-test.warc.gz",
    "iah-urls-wget.warc.gz",
    "link-extraction-test.warc",
    "node-warc-parseme.warc.gz",
    "warcreate-capture.warc",
    "warcio-example-revisit.warc.gz",
)
TINY_INPUT = "commoncrawl-homepage-2019.warc.gz"  # one page: the pipeline's fixed cost
SMALL_OTHER_BYTES = 16 * 1024  # non-HTML, non-image responses (css, js, robots.txt) up to this size
IMAGE_EVERY = 4  # each copy holds a different quarter of the image responses
GZIP_LEVEL = 6  # zlib's default, as gzip(1) and Java's GZIPOutputStream (Common Crawl's writer)
ID_NAMESPACE = uuid.UUID("6c1f3f0e-5b7c-4d0e-9a51-2c3b8f9d7e10")


# --------------------------------------------------------------------------------------------
# Corpus


def _rewrite_uri(uri: str, copy: int) -> str:
    """The same URI on host `cNNNN.<host>`; URIs without a host are left alone."""
    bracketed = uri.startswith("<") and uri.endswith(">")  # WARC/1.0 draft style <http://...>
    bare = uri[1:-1] if bracketed else uri
    try:
        parts = urlsplit(bare)
    except ValueError:
        return uri
    if not parts.netloc:
        return uri
    userinfo, at, hostport = parts.netloc.rpartition("@")
    new = urlunsplit(parts._replace(netloc=f"{userinfo}{at}c{copy:04d}.{hostport}"))
    return f"<{new}>" if bracketed else new


def _record_id(copy: int, original: str) -> str:
    return f"<urn:uuid:{uuid.uuid5(ID_NAMESPACE, f'{copy}|{original}')}>"


def _select_source_records(warc_dir: Path) -> list[dict]:
    """The records each copy repeats, in file order, with why each was kept."""
    from fastwarc.warc import ArchiveIterator

    from crawl2clip.transforms.extract.http import HttpParseError, parse_http_response
    from crawl2clip.transforms.extract.pairs import is_html

    chosen = []
    image_index = 0
    for name in SOURCES:
        path = warc_dir / name
        records = []
        for record in ArchiveIterator(str(path), parse_http=False):
            headers = list(record.headers.items())
            records.append({
                "source": name,
                "version": record.headers.status_line.strip(),
                "headers": headers,
                "type": record.headers.get("WARC-Type", ""),
                "uri": record.headers.get("WARC-Target-URI", ""),
                "block": record.reader.read(),
            })
        kept_uris = set()
        image_uris = {}  # an image's request goes in and out of the copies with the image
        for rec in records:
            rec["kind"] = None
            if rec["type"] == "response":
                try:
                    http = parse_http_response(rec["block"])
                except HttpParseError:
                    continue
                content_type = http.headers.get("content-type", "").lower()
                if is_html(content_type, http.body) or not 200 <= http.status < 300:
                    rec["kind"] = "html" if 200 <= http.status < 300 else "non_2xx"
                elif content_type.startswith("image/"):
                    rec["kind"] = "image"
                    rec["image_index"] = image_uris[rec["uri"]] = image_index
                    image_index += 1
                elif len(rec["block"]) <= SMALL_OTHER_BYTES:
                    rec["kind"] = "other"
                if rec["kind"]:
                    kept_uris.add(rec["uri"])
            elif rec["type"] in ("revisit", "resource"):
                rec["kind"] = rec["type"]
        for rec in records:  # a page's request and metadata records come with it
            if rec["type"] in ("request", "metadata") and rec["uri"] in kept_uris:
                rec["kind"] = rec["type"]
                if rec["uri"] in image_uris:
                    rec["image_index"] = image_uris[rec["uri"]]
        chosen += [rec for rec in records if rec["kind"]]
    return chosen


def _member(version_line: str, headers: list[tuple[str, str]], block: bytes) -> bytes:
    head = version_line + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # gzip framing, mtime 0
    return compressor.compress(head.encode("utf-8")) + compressor.compress(block) + \
        compressor.compress(b"\r\n\r\n") + compressor.flush()


_DROPPED_HEADERS = {"warc-filename", "warc-warcinfo-id"}
_ID_HEADERS = {"warc-record-id", "warc-concurrent-to", "warc-refers-to"}


def _copy_headers(headers, copy: int, warcinfo_id: str) -> list[tuple[str, str]]:
    out = []
    for name, value in headers:
        lower = name.lower()
        if lower in _DROPPED_HEADERS:
            continue
        if lower in _ID_HEADERS:
            value = _record_id(copy, value)
        elif lower in ("warc-target-uri", "warc-refers-to-target-uri"):
            value = _rewrite_uri(value, copy)
        out.append((name, value))
    if not any(name.lower() == "warc-record-id" for name, _ in out):
        out.insert(0, ("WARC-Record-ID", _record_id(copy, repr(headers))))
    out.append(("WARC-Warcinfo-ID", warcinfo_id))
    return out


def build_corpus(warc_dir: Path, cache_dir: Path, size_mb: float) -> tuple[Path, dict]:
    """The cached benchmark WARC and its description; built if missing."""
    target = int(size_mb * MB)
    path = cache_dir / f"extract-speed-v{BUILD_VERSION}-{size_mb:g}MB.warc.gz"
    info_path = path.with_suffix(".json")
    if path.exists() and info_path.exists():
        return path, json.loads(info_path.read_text())
    cache_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pool = _select_source_records(warc_dir)
    warcinfo_id = _record_id(-1, "warcinfo")
    info_block = (
        "software: crawl2clip bench/extract_speed.py (records of the shared web archives, "
        "host-rewritten per copy)\r\nformat: WARC File Format 1.0\r\n"
    ).encode()
    kinds: dict[str, int] = {}
    written = uncompressed = records = copies = 0
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as out:
        member = _member("WARC/1.0", [
            ("WARC-Type", "warcinfo"), ("WARC-Date", "2024-01-01T00:00:00Z"),
            ("WARC-Record-ID", warcinfo_id), ("WARC-Filename", path.name),
            ("Content-Type", "application/warc-fields"), ("Content-Length", str(len(info_block))),
        ], info_block)
        out.write(member)
        written += len(member)
        records += 1
        while written < target:
            for rec in pool:
                if "image_index" in rec and (rec["image_index"] + copies) % IMAGE_EVERY:
                    continue
                headers = _copy_headers(rec["headers"], copies, warcinfo_id)
                member = _member(rec["version"], headers, rec["block"])
                out.write(member)
                written += len(member)
                records += 1
                kinds[rec["kind"]] = kinds.get(rec["kind"], 0) + 1
            copies += 1
    os.replace(tmp, path)
    info = {
        "file": str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path),
        "build_version": BUILD_VERSION,
        "sources": list(SOURCES),
        "copies": copies,
        "records_per_copy_pool": len(pool),
        "records_written": records,
        "records_by_kind": dict(sorted(kinds.items())),
        "gzip_level": GZIP_LEVEL,
        "compressed_bytes": path.stat().st_size,
        "build_seconds": round(time.perf_counter() - started, 2),
    }
    info_path.write_text(json.dumps(info, indent=2))
    return path, info


# --------------------------------------------------------------------------------------------
# Timing helpers


def best_of(repeat: int, fn):
    """(best wall seconds, cpu seconds of that run, result of the last run)."""
    best = cpu_best = None
    result = None
    for _ in range(repeat):
        gc.collect()
        cpu0, t0 = time.process_time(), time.perf_counter()
        result = fn()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        if best is None or elapsed < best:
            best, cpu_best = elapsed, cpu
    return best, cpu_best, result


def measurement(seconds: float, cpu: float, compressed: int, uncompressed: int, **extra) -> dict:
    return {
        "seconds": round(seconds, 4),
        "cpu_seconds": round(cpu, 4) if cpu is not None else None,
        "mb_per_s_compressed": round(compressed / MB / seconds, 2),
        "mb_per_s_uncompressed": round(uncompressed / MB / seconds, 2),
        **extra,
    }


# --------------------------------------------------------------------------------------------
# (a) gzip


def gunzip_zlib(path: Path, chunk_size: int = 64 * 1024) -> int:
    """Multi-member gzip through zlib.decompressobj(wbits=31), one object per member. Small
    reads: `unused_data` copies the rest of the chunk at every member end."""
    total = 0
    decompressor = zlib.decompressobj(wbits=31)
    with open(path, "rb", buffering=0) as f:
        while True:
            chunk = f.read(chunk_size)
            if not chunk:
                break
            while chunk:
                total += len(decompressor.decompress(chunk))
                if decompressor.eof:
                    chunk = decompressor.unused_data
                    decompressor = zlib.decompressobj(wbits=31)
                else:
                    chunk = b""
    return total


def gunzip_fastwarc(path: Path, chunk_size: int = 1 << 20) -> int:
    """fastwarc's own gzip reader (Rust, zlib-rs): the inflate fastwarc's iteration runs on."""
    from fastwarc.stream_io import GzipReader

    total = 0
    reader = GzipReader(str(path))
    try:
        while True:
            data = reader.read(chunk_size)
            if not data:
                return total
            total += len(data)
    finally:
        reader.close()


def gunzip_gzip_module(path: Path, chunk_size: int = 1 << 20) -> int:
    total = 0
    with gzip.open(path, "rb") as f:
        while True:
            data = f.read(chunk_size)
            if not data:
                return total
            total += len(data)


# --------------------------------------------------------------------------------------------
# (b) iteration


def iterate_warcio(path: Path) -> tuple[int, int]:
    from warcio.archiveiterator import ArchiveIterator

    records = content = 0
    with open(path, "rb") as f:
        for record in ArchiveIterator(f, no_record_parse=True):  # block unparsed, as fastwarc's
            content += len(record.raw_stream.read())
            records += 1
    return records, content


def iterate_warcio_http(path: Path) -> tuple[int, int]:
    from warcio.archiveiterator import ArchiveIterator

    records = content = 0
    with open(path, "rb") as f:
        for record in ArchiveIterator(f):  # warcio's default: HTTP headers parsed
            content += len(record.raw_stream.read())
            records += 1
    return records, content


def iterate_fastwarc(path: Path, native: bool) -> tuple[int, int]:
    from fastwarc.warc import ArchiveIterator

    records = content = 0
    if native:  # fastwarc opens and buffers the file itself
        iterator = ArchiveIterator(str(path), parse_http=False, fsspec_args=False)
        for record in iterator:
            content += len(record.reader.read())
            records += 1
        return records, content
    with open(path, "rb") as f:
        for record in ArchiveIterator(f, parse_http=False):
            content += len(record.reader.read())
            records += 1
    return records, content


def iterate_project(path: Path) -> tuple[int, int]:
    from crawl2clip.transforms.extract.archives import ArchiveRecord, iter_archive, open_local

    records = content = 0
    for item in iter_archive(str(path), open_local):
        if isinstance(item, ArchiveRecord):
            records += 1
            content += len(item.block)
    return records, content


# --------------------------------------------------------------------------------------------
# (c) extraction


def lexbor_pairs_from_html(page: bytes, page_url: str, content_type: str, rules, headers=None):
    """pairs_from_html with the tokenizer replaced by a full lexbor HTML5 parse (the page
    decoded with the same charset first, as tests/test_html.py compares them). The page's
    opt-out headers and meta tags are not read: this compares the tag scanners."""
    from urllib.parse import urljoin

    from selectolax.lexbor import LexborHTMLParser

    from crawl2clip.transforms.extract import pairs as pairs_module
    from crawl2clip.transforms.extract.html import detect_charset, looks_binary

    result = pairs_module.RecordPairs()
    if looks_binary(page):
        result.error = ("undecodable_html", "binary content (NUL bytes) in an HTML response")
        return result
    charset = detect_charset(page, content_type)
    tree = LexborHTMLParser(page.decode(charset, "replace"))
    base = tree.css_first("base[href]")
    base_url = urljoin(page_url, (base.attributes.get("href") or "").strip()) if base is not None else page_url
    names = ("alt", "src", "data-src", "data-lazy-src", "data-original")
    images = [{k: (v or "") for k, v in node.attributes.items() if k in names} for node in tree.css("img")]
    pairs_module._collect(result, images, base_url, page_url, rules)
    return result


def extract_all(records, rules) -> tuple[int, list]:
    from crawl2clip.transforms.extract.pairs import pairs_from_record

    pages = 0
    pairs = []
    for record in records:
        result = pairs_from_record(record, rules)
        if result.error is None and not result.skipped:
            pages += 1
            pairs += result.pairs
    return pages, pairs


def iterate_and_extract(path: Path, rules) -> tuple[int, int, list]:
    from crawl2clip.transforms.extract.archives import ArchiveRecord, iter_archive, open_local
    from crawl2clip.transforms.extract.pairs import pairs_from_record

    records = pages = 0
    pairs = []
    for item in iter_archive(str(path), open_local):
        if isinstance(item, ArchiveRecord):
            records += 1
            result = pairs_from_record(item, rules)
            if result.error is None and not result.skipped:
                pages += 1
                pairs += result.pairs
    return records, pages, pairs


def html_bodies(records) -> list[tuple[bytes, str, str]]:
    """(decoded body, page URL, content type) of every HTML page: the input of pairs_from_html."""
    from crawl2clip.transforms.extract.http import HttpParseError, decoded_body, parse_http_response
    from crawl2clip.transforms.extract.pairs import is_html

    pages = []
    for record in records:
        if record.record_type != "response":
            continue
        try:
            response = parse_http_response(record.block)
            content_type = response.headers.get("content-type", "")
            if 200 <= response.status < 300 and is_html(content_type, response.body):
                pages.append((decoded_body(response), record.target_uri, content_type))
        except HttpParseError:
            pass
    return pages


# --------------------------------------------------------------------------------------------
# (d) pipeline


def crawl2clip_command() -> list[str]:
    script = Path(sys.executable).parent / "crawl2clip"
    return [str(script)] if script.exists() else [sys.executable, "-m", "crawl2clip.pipelines.cli"]


def run_pipeline(path: Path, work: Path, extra: list[str]) -> dict:
    out = work / "out"
    shutil.rmtree(out, ignore_errors=True)
    arguments = ["extract", "--input", str(path), "--output", str(out), "--runner", "DirectRunner", *extra]
    command = ["taskset", "-c", str(_CPU), *crawl2clip_command(), *arguments]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(command, cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    import pyarrow.parquet as pq

    files = sorted(glob.glob(str(out / "pairs" / "pairs-*.parquet")))
    table = pq.read_table(files, columns=["uid"]) if files else None
    uids = set(table.column("uid").to_pylist()) if table is not None else set()
    report = json.loads((out / "metrics.json").read_text())
    return {
        "command": " ".join(["taskset", "-c", str(_CPU), "crawl2clip", *arguments]).replace(str(REPO) + "/", ""),
        "wall_seconds": wall,
        "cpu_seconds": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        "pipeline_seconds": report["seconds"],  # inside run_pipeline: build + run + wait
        "rows": table.num_rows if table is not None else 0,
        "unique_uids": len(uids),
        "uids": uids,
        "counters": report["counters"],
    }


def import_seconds() -> float:
    """Wall time of a bare `import` of the CLI (Python + Beam start-up), pinned to the CPU."""
    command = ["taskset", "-c", str(_CPU), sys.executable, "-c", "import crawl2clip.pipelines.cli"]
    t0 = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO)
    return time.perf_counter() - t0


def calibration_seconds() -> float:
    """A fixed piece of pure-Python work (~0.1 s on an idle core): how loaded the machine was.
    The same value in every round means a quiet machine; a spread means others took the CPU."""
    t0 = time.perf_counter()
    total = 0
    for i in range(2_000_000):
        total += i & 7
    return time.perf_counter() - t0


class QuietWaiter:
    """Before a timed run: runs the calibration loop and, while it is clearly slower than the best
    seen (others are using the CPU), waits a little and tries again, within a total budget."""

    def __init__(self, budget_seconds: float = 60.0, slack: float = 1.25):
        self.best = None
        self.left = budget_seconds
        self.slack = slack
        self.log: list[float] = []
        self.waited = 0.0

    def __call__(self) -> None:
        while True:
            value = calibration_seconds()
            self.best = value if self.best is None else min(self.best, value)
            if value <= self.best * self.slack or self.left <= 0:
                self.log.append(round(value, 4))
                return
            time.sleep(2.0)
            self.left -= 2.0 + value
            self.waited += 2.0 + value


# --------------------------------------------------------------------------------------------


def machine_info() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu_model": cpu,
        "cpus_online": os.cpu_count(),
        "pinned_to_cpus": sorted(os.sched_getaffinity(0)),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "zlib": zlib.ZLIB_RUNTIME_VERSION,
        "libraries": {name: version(name) for name in ("fastwarc", "warcio", "selectolax", "apache-beam", "pyarrow")},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warc-dir", type=Path, default=DEFAULT_WARC_DIR, help="the shared web archives")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="where the built WARC is kept")
    parser.add_argument("--output", type=Path, default=DEFAULT_RESULT, help="the JSON to write")
    parser.add_argument("--size-mb", type=float, default=50, help="compressed size of the built WARC (MB)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the in-process measurements (best kept)")
    parser.add_argument("--pipeline-repeat", type=int, default=3, help="rounds of the pipeline runs (best kept)")
    parser.add_argument("--cpu", type=int, default=0, help="the one CPU to run on")
    parser.add_argument("--max-wait", type=float, default=60,
                        help="seconds the run may spend in all waiting for other work to leave the CPU")
    args = parser.parse_args(argv)

    global _CPU
    _CPU = args.cpu
    os.sched_setaffinity(0, {args.cpu})
    from crawl2clip.transforms.extract import pairs as pairs_module
    from crawl2clip.transforms.extract.archives import ArchiveRecord, iter_archive, open_local
    from crawl2clip.transforms.extract.html import detect_charset, iter_tags
    from crawl2clip.transforms.extract.rules import ExtractionRules, pair_uid
    from selectolax.lexbor import LexborHTMLParser

    started = time.perf_counter()
    load_before = os.getloadavg()
    path, corpus = build_corpus(args.warc_dir, args.cache_dir, args.size_mb)
    compressed = path.stat().st_size
    rules = ExtractionRules()
    print(f"corpus {path} ({compressed / MB:.1f} MB, {corpus['copies']} copies)", flush=True)

    # Inputs of (c), read once, outside any timing.
    records = [item for item in iter_archive(str(path), open_local) if isinstance(item, ArchiveRecord)]
    uncompressed = gunzip_zlib(path)
    bodies = html_bodies(records)
    html_bytes = sum(len(body) for body, _, _ in bodies)
    original_pairs_from_html = pairs_module.pairs_from_html

    def extract_with_lexbor():
        pairs_module.pairs_from_html = lexbor_pairs_from_html
        try:
            return extract_all(records, rules)
        finally:
            pairs_module.pairs_from_html = original_pairs_from_html

    def html_only(fn):
        def run():
            for body, url, content_type in bodies:
                fn(body, url, content_type, rules)
        return run

    def tokens_only():
        for body, _, _ in bodies:
            for _ in iter_tags(body):
                pass

    def lexbor_only():
        for body, _, content_type in bodies:
            tree = LexborHTMLParser(body.decode(detect_charset(body, content_type), "replace"))
            for node in tree.css("img"):
                node.attributes

    def pre_read():
        return [i for i in iter_archive(str(path), open_local) if isinstance(i, ArchiveRecord)]

    # name -> function. Each round runs every one once, so a burst of load from elsewhere on
    # the machine spoils one round of each rather than every run of one measurement.
    benches = {
        "a_gunzip_zlib_decompressobj": lambda: gunzip_zlib(path),
        "a_gunzip_gzip_open": lambda: gunzip_gzip_module(path),
        "a_ref_gunzip_fastwarc_gzipreader": lambda: gunzip_fastwarc(path),  # not zlib: reference
        "b_warcio_raw_stream": lambda: iterate_warcio(path),
        "b_warcio_http_parsed": lambda: iterate_warcio_http(path),
        "b_fastwarc_python_file": lambda: iterate_fastwarc(path, native=False),
        "b_fastwarc_native_file": lambda: iterate_fastwarc(path, native=True),
        "b_iter_archive": lambda: iterate_project(path),
        "c_pre_read_records": pre_read,
        "c_pairs_from_record": lambda: extract_all(records, rules),
        "c_pairs_from_record_lexbor": extract_with_lexbor,
        "c_html_pairs_from_html": html_only(original_pairs_from_html),
        "c_html_pairs_from_html_lexbor": html_only(lexbor_pairs_from_html),
        "c_html_iter_tags_only": tokens_only,
        "c_html_lexbor_parse_css_only": lexbor_only,
        "c_plus_iter_archive_and_extract": lambda: iterate_and_extract(path, rules),
    }
    best: dict[str, tuple[float, float]] = {}  # name -> (least wall seconds, least CPU seconds)
    last: dict[str, object] = {}
    quiet = QuietWaiter(budget_seconds=args.max_wait)
    for _ in range(3):  # a first idea of an idle core
        quiet()
    quiet.log.clear()
    for round_number in range(args.repeat):
        for name, fn in benches.items():
            gc.collect()
            quiet()
            cpu0, t0 = time.process_time(), time.perf_counter()
            last[name] = fn()
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            if name in best:
                elapsed, cpu = min(elapsed, best[name][0]), min(cpu, best[name][1])
            best[name] = (elapsed, cpu)
            last[name] = last[name] if round_number == args.repeat - 1 else None
        print(f"  round {round_number + 1}/{args.repeat} done", flush=True)

    def m(name: str, **extra) -> dict:
        return measurement(*best[name], compressed, uncompressed, **extra)

    results: dict[str, dict] = {}
    for name in ("a_gunzip_zlib_decompressobj", "a_gunzip_gzip_open", "a_ref_gunzip_fastwarc_gzipreader"):
        assert last[name] == uncompressed, name
        results[name] = m(name)
    for name in ("b_warcio_raw_stream", "b_warcio_http_parsed", "b_fastwarc_python_file",
                 "b_fastwarc_native_file", "b_iter_archive"):
        n_records, content = last[name]
        results[name] = m(name, records=n_records, content_bytes=content)
    results["c_pre_read_records"] = m("c_pre_read_records", records=len(last["c_pre_read_records"]))
    pages, tokenizer_pairs = last["c_pairs_from_record"]
    results["c_pairs_from_record"] = m("c_pairs_from_record", records=len(records), pages=pages,
                                       pairs=len(tokenizer_pairs))
    l_pages, l_pairs = last["c_pairs_from_record_lexbor"]
    results["c_pairs_from_record_lexbor"] = m(
        "c_pairs_from_record_lexbor", records=len(records), pages=l_pages, pairs=len(l_pairs),
        same_pairs_as_tokenizer=sorted(l_pairs) == sorted(tokenizer_pairs),
        pair_set_difference=len(set(l_pairs) ^ set(tokenizer_pairs)))
    for name in ("c_html_pairs_from_html", "c_html_pairs_from_html_lexbor", "c_html_iter_tags_only",
                 "c_html_lexbor_parse_css_only"):
        results[name] = m(name, pages=len(bodies), html_bytes=html_bytes,
                          mb_per_s_html=round(html_bytes / MB / best[name][0], 2))
    cp_records, cp_pages, cp_pairs = last["c_plus_iter_archive_and_extract"]
    results["c_plus_iter_archive_and_extract"] = m("c_plus_iter_archive_and_extract", records=cp_records,
                                                   pages=cp_pages, pairs=len(cp_pairs))
    t_uid, c_uid, unique = best_of(1, lambda: {pair_uid(url, text) for url, text, _ in cp_pairs})
    results["c_pair_uid_dedup"] = measurement(t_uid, c_uid, compressed, uncompressed, pairs=len(cp_pairs),
                                              unique_pairs=len(unique))
    assert cp_pairs == tokenizer_pairs
    total_records = results["b_fastwarc_python_file"]["records"]
    del records, bodies, last, cp_pairs, l_pairs

    # (d) ------------------------------------------------------------------------------------
    work = args.cache_dir / "pipeline-run"
    work.mkdir(parents=True, exist_ok=True)
    tiny = args.warc_dir / TINY_INPUT
    # The language stage has its own benchmark (bench/langid_speed.py): (d) is timed without it,
    # like (c), and once with it for reference.
    variants = {
        "d_pipeline_tiny_input": (tiny, ["--no-langid"]),
        "d_pipeline_direct_runner": (path, ["--no-langid"]),
        "d_pipeline_with_language_stage": (path, []),
        # The same file given 4 times (200 MB of gzip): how the fixed start-up amortizes.
        "d_pipeline_4x_input": (path, ["--input", str(path), str(path), str(path)]),
    }
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    imports = []
    for round_number in range(args.pipeline_repeat):
        quiet()
        imports.append(import_seconds())
        for name, (input_path, extra) in variants.items():
            quiet()
            runs[name].append(run_pipeline(input_path, work, extra))
        print(f"  pipeline round {round_number + 1}/{args.pipeline_repeat} done", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    results["d_import_crawl2clip_cli"] = {"seconds": round(min(imports), 4),
                                          "all_wall_seconds": [round(t, 3) for t in imports]}
    pipeline_checks = {}
    for name in variants:
        run = dict(min(runs[name], key=lambda r: r["wall_seconds"]))
        run["cpu_seconds"] = min(r["cpu_seconds"] for r in runs[name])
        uids, counters = run.pop("uids"), run.pop("counters")
        extra = {
            "command": run["command"], "runs": len(runs[name]),
            "all_wall_seconds": [round(r["wall_seconds"], 3) for r in runs[name]],
            "pipeline_seconds": run["pipeline_seconds"],
            "records": sum(v for k, v in counters.items() if k.startswith("extract:records_")),
            "pages": counters.get("extract:pages"), "pairs": counters.get("extract:candidates"),
            "unique_pairs_written": run["rows"], "unique_uids_written": len(uids),
            "errors": sum(v for k, v in counters.items() if ":error_" in k),
        }
        if name == "d_pipeline_tiny_input":
            results[name] = {"seconds": round(run["wall_seconds"], 4), "cpu_seconds": round(run["cpu_seconds"], 4),
                             "input": TINY_INPUT, **extra}
            continue
        if name == "d_pipeline_4x_input":
            extra["inputs"] = 4
            results[name] = measurement(run["wall_seconds"], run["cpu_seconds"], 4 * compressed, 4 * uncompressed,
                                        **extra)
            continue
        extra["unique_pairs_match_in_memory"] = uids == unique and run["rows"] == len(unique)
        pipeline_checks[name] = extra["unique_pairs_match_in_memory"]
        results[name] = measurement(run["wall_seconds"], run["cpu_seconds"], compressed, uncompressed, **extra)

    # Targets ---------------------------------------------------------------------------------
    t_a = min(best["a_gunzip_zlib_decompressobj"][0], best["a_gunzip_gzip_open"][0])
    a_name = min(("a_gunzip_zlib_decompressobj", "a_gunzip_gzip_open"), key=lambda k: best[k][0])
    t_c = best["c_pairs_from_record"][0]
    t_cp = best["c_plus_iter_archive_and_extract"][0]
    t_d = results["d_pipeline_direct_runner"]["seconds"]
    t_fixed = results["d_pipeline_tiny_input"]["seconds"]
    t_import = results["d_import_crawl2clip_cli"]["seconds"]
    c_vs_a = t_a / t_c  # the same bytes: the ratio of MB/s is the inverse ratio of times
    d_vs_c = t_d / t_cp
    targets = {
        "c_vs_a": {"value": round(c_vs_a, 3), "target": ">= 0.5", "pass": c_vs_a >= 0.5,
                   "meaning": f"(c) pairs_from_record MB/s / (a) {a_name} MB/s"},
        "d_vs_c": {"value": round(d_vs_c, 3), "target": "<= 2.0", "pass": d_vs_c <= 2.0,
                   "meaning": "(d) `crawl2clip extract --runner DirectRunner` wall time / "
                              "(c+) iter_archive + pairs_from_record time"},
    }
    cpu = {name: best[name][1] for name in best}
    c_vs_a_cpu = min(cpu["a_gunzip_zlib_decompressobj"], cpu["a_gunzip_gzip_open"]) / cpu["c_pairs_from_record"]
    d_vs_c_cpu = results["d_pipeline_direct_runner"]["cpu_seconds"] / cpu["c_plus_iter_archive_and_extract"]
    targets["c_vs_a"]["value_from_cpu_time"] = round(c_vs_a_cpu, 3)
    targets["c_vs_a"]["same_verdict_from_cpu_time"] = (c_vs_a_cpu >= 0.5) == targets["c_vs_a"]["pass"]
    targets["d_vs_c"]["value_from_cpu_time"] = round(d_vs_c_cpu, 3)
    targets["d_vs_c"]["same_verdict_from_cpu_time"] = (d_vs_c_cpu <= 2.0) == targets["d_vs_c"]["pass"]
    reference = {
        "c_vs_fastwarc_gunzip": round(best["a_ref_gunzip_fastwarc_gzipreader"][0] / t_c, 3),
        "c_plus_vs_a": round(t_a / t_cp, 3),
        "d_minus_fixed_cost_vs_c_plus": round((t_d - t_fixed) / t_cp, 3),
        "d_4x_input_vs_4x_c_plus": round(results["d_pipeline_4x_input"]["seconds"] / (4 * t_cp), 3),
        "lexbor_vs_tokenizer_time_c": round(best["c_pairs_from_record_lexbor"][0] / t_c, 3),
    }
    breakdown = {
        "total": round(t_d, 3),
        "python_and_beam_import": round(t_import, 3),
        "pipeline_fixed_cost_besides_import": round(t_fixed - t_import, 3),
        "per_data_work": round(t_d - t_fixed, 3),
        "c_plus_extraction_for_comparison": round(t_cp, 3),
        "beam_per_element_dedup_and_write_estimate": round(t_d - t_fixed - t_cp, 3),
        "note": "fixed cost = the same command on a one-page WARC; per-data work = (d) minus that",
    }
    doc = {
        "benchmark": "bench/extract_speed.py",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "method": {
            "mb": "10^6 bytes",
            "repeat": args.repeat, "pipeline_repeat": args.pipeline_repeat,
            "statistic": "least wall time over interleaved rounds (seconds, MB/s); cpu_seconds is the "
                         "least CPU time over the same runs, a cross-check that is less hurt by other "
                         "processes taking the CPU",
            "single_core": f"this process pinned to CPU {args.cpu}; the pipeline runs as "
                           f"`taskset -c {args.cpu} crawl2clip extract ...`",
            "a_used": a_name,
            "load_average_before_after": [list(load_before), list(os.getloadavg())],
            "calibration_seconds_per_run": quiet.log,
            "calibration_best_seconds": round(quiet.best, 4),
            "seconds_waited_for_a_quiet_cpu": round(quiet.waited, 1),
            "calibration_note": "the same fixed Python loop before every timed run (in-process "
                                "runs first, then pipeline runs), after waiting (within a "
                                "budget) until it ran within 25% of its best; a spread means other "
                                "work shared the CPU and the numbers are noisier",
        },
        "input": {
            **corpus,
            "compressed_bytes": compressed,
            "uncompressed_bytes": uncompressed,
            "compression_ratio": round(uncompressed / compressed, 2),
            "records": total_records,
            "html_pages": pages,
            "html_bytes_decoded": html_bytes,
            "pairs": len(tokenizer_pairs),
            "unique_pairs": len(unique),
        },
        "measurements": results,
        "targets": targets,
        "reference_ratios": reference,
        "d_time_breakdown": breakdown,
        "pipeline_matches_in_memory": pipeline_checks,
        "total_seconds": round(time.perf_counter() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(doc, indent=2) + "\n")

    print(f"\ninput: {compressed / MB:.1f} MB gzip = {uncompressed / MB:.1f} MB WARC; {total_records} records, "
          f"{pages} HTML pages, {len(tokenizer_pairs)} pairs, {len(unique)} unique")
    print(f"{'measurement':<36} {'seconds':>8} {'cpu s':>7} {'MB/s gz':>8} {'MB/s WARC':>9}")
    for name, r in results.items():
        cpu_text = f"{r['cpu_seconds']:7.3f}" if r.get("cpu_seconds") is not None else " " * 7
        if "mb_per_s_compressed" in r:
            print(f"{name:<36} {r['seconds']:8.3f} {cpu_text} {r['mb_per_s_compressed']:8.1f} "
                  f"{r['mb_per_s_uncompressed']:9.1f}")
        else:
            print(f"{name:<36} {r['seconds']:8.3f} {cpu_text}")
    for key, target in targets.items():
        print(f"{key} = {target['value']:.3f} (target {target['target']}): {'PASS' if target['pass'] else 'FAIL'}"
              f"; from CPU time {target['value_from_cpu_time']:.3f}  [{target['meaning']}]")
    print(f"reference: {reference}")
    print(f"(d) breakdown: {breakdown}")
    print(f"pipeline unique pairs == in-memory unique pairs: {pipeline_checks}")
    print(f"calibration loop before each run: {min(quiet.log):.3f}-{max(quiet.log):.3f} s "
          f"(best {quiet.best:.3f}; waited {quiet.waited:.0f} s for a quiet CPU)")
    print(f"wrote {args.output} in {doc['total_seconds']} s")
    return 0 if all(pipeline_checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
