"""The extract stage as Beam transforms: archive paths in, deduplicated candidate pairs out.

    patterns -> ExpandPatterns -> Reshuffle -> ReadArchiveRecords -> ExtractPairs -> DedupPairs
             [-> DropListedPairs (URL and domain removal lists)]

ExtractPairs drops the pairs of pages that opt out (transforms/consent/reservations.py) unless
told to keep them; either way the row says which reservation applied (`page_optout`).
"""

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from crawl2clip.transforms import httpfs  # noqa: F401  registers http(s):// with Beam's FileSystems
from crawl2clip.transforms.consent.audit import REMOVED
from crawl2clip.transforms.consent.blocklists import BlocklistSettings
from crawl2clip.transforms.consent.transform import DropListedRows
from crawl2clip.transforms.errors import ERRORS, count_error, counter, error_record
from crawl2clip.transforms.extract.archives import DEFAULT_MAX_RECORD_BYTES, ArchiveError, ArchiveRecord, iter_archive
from crawl2clip.transforms.extract.pairs import RecordPairs, pairs_from_record
from crawl2clip.transforms.extract.rules import ExtractionRules, pair_uid
from crawl2clip.transforms.progress import ProgressFile
from crawl2clip.transforms.schema import OCCURRENCES, OFFSET, PAGE_OPTOUT, PAGE_URL, SOURCE, TEXT, UID, URL

STAGE = "extract"
_GLOB_CHARACTERS = frozenset("*?[")


def open_archive(path: str):
    """Raw bytes of any Beam filesystem path: compression is the archive reader's business."""
    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


class ExpandPatterns(beam.DoFn):
    """A glob becomes the files it matches; a plain path passes unchanged (no listing or HEAD
    request per file, which matters for 90,000 Common Crawl URLs). A glob matching nothing is an
    error record, not a crash."""

    def process(self, pattern: str):
        if not _GLOB_CHARACTERS.intersection(pattern):
            yield pattern
            return
        try:
            files = FileSystems.match([pattern])[0].metadata_list
        except Exception as exc:
            files, detail = [], f"{type(exc).__name__}: {exc}"
        else:
            detail = "the pattern matched no file"
        if not files:
            yield beam.pvalue.TaggedOutput(ERRORS, count_error(error_record(STAGE, "no_match", pattern, detail=detail)))
        for metadata in sorted(files, key=lambda m: m.path):
            yield metadata.path


class ReadArchiveRecords(beam.DoFn):
    """Every record of an archive file; unreadable files and broken records go to ERRORS."""

    def __init__(self, progress_dir: str | None = None, max_record_bytes: int = DEFAULT_MAX_RECORD_BYTES):
        self.progress_dir = progress_dir
        self.max_record_bytes = max_record_bytes

    def setup(self):
        self._progress = ProgressFile(self.progress_dir, STAGE)

    def finish_bundle(self):
        self._progress.flush()

    def process(self, path: str):
        counter(STAGE, "files").inc()
        records = 0
        for item in _guarded(iter_archive(path, open_archive, self.max_record_bytes), path):
            records += 1
            if isinstance(item, ArchiveError):
                yield beam.pvalue.TaggedOutput(
                    ERRORS, count_error(error_record(STAGE, item.reason, item.source, item.offset, detail=item.detail))
                )
            else:
                counter(STAGE, f"records_{item.record_type}").inc()
                yield item
        self._progress.add(files=1, records=records)


class ExtractPairs(beam.DoFn):
    """Candidate pairs of one record, as rows; records that are not HTML pages are counted."""

    def __init__(self, rules: ExtractionRules, progress_dir: str | None = None, keep_page_optouts: bool = False):
        self.rules = rules
        self.progress_dir = progress_dir
        self.keep_page_optouts = keep_page_optouts

    def setup(self):
        self._progress = ProgressFile(self.progress_dir, STAGE)

    def finish_bundle(self):
        self._progress.flush()

    def process(self, record: ArchiveRecord):
        try:
            result = pairs_from_record(record, self.rules)
        except Exception as exc:  # a bug, not bad input: one record must still not stop the run
            result = RecordPairs(error=("internal_error", _describe(exc)))
        if result.error is not None:
            reason, detail = result.error
            yield beam.pvalue.TaggedOutput(
                ERRORS, count_error(error_record(STAGE, reason, record.source, record.offset, record.target_uri, detail))
            )
            return
        if result.skipped:
            counter(STAGE, f"skipped_{result.skipped}").inc()
            return
        counter(STAGE, "pages").inc()
        counter(STAGE, "images").inc(result.images)
        for reason, n in result.dropped.items():
            counter(STAGE, f"dropped_{reason}").inc(n)
        for reason, n in result.ignored.items():
            counter(STAGE, f"ignored_{reason}").inc(n)
        if result.lazy_src:
            counter(STAGE, "lazy_src_used").inc(result.lazy_src)
        optout = ",".join(result.reservations) or None
        if optout:
            counter(STAGE, "optout_pages").inc()
            counter(STAGE, f"optout_{result.reservations[0]}").inc(len(result.pairs))  # pairs, by first reason
            if not self.keep_page_optouts:
                result.pairs = []
        counter(STAGE, "candidates").inc(len(result.pairs))
        self._progress.add(pages=1, candidates=len(result.pairs))
        for url, text, page_url in result.pairs:
            yield {
                URL: url,
                TEXT: text,
                UID: pair_uid(url, text),
                PAGE_URL: page_url,
                SOURCE: record.source,
                OFFSET: record.offset,
                PAGE_OPTOUT: optout,
            }


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def _guarded(items, path: str):
    """The archive reader's items; an exception from it (a bug, or a filesystem failing mid-file)
    ends the file with an `internal_error` row instead of failing the bundle and the run."""
    try:
        yield from items
    except Exception as exc:
        yield ArchiveError(path, -1, "internal_error", _describe(exc))


def _first_seen_key(row: dict) -> tuple:
    return row[SOURCE], row[OFFSET], row[PAGE_URL]


class KeepFirstSeen(beam.CombineFn):
    """Of all rows with one uid, keeps the earliest by (source, offset, page URL), so every runner
    picks the same row, and counts how many there were."""

    def create_accumulator(self):
        return None, 0

    def add_input(self, accumulator, row):
        best, n = accumulator
        if best is None or _first_seen_key(row) < _first_seen_key(best):
            best = row
        return best, n + 1

    def merge_accumulators(self, accumulators):
        best, total = None, 0
        for row, n in accumulators:
            total += n
            if row is not None and (best is None or _first_seen_key(row) < _first_seen_key(best)):
                best = row
        return best, total

    def extract_output(self, accumulator):
        row, n = accumulator
        return {**row, OCCURRENCES: n}


def _count_unique(row: dict) -> dict:
    counter(STAGE, "unique_pairs").inc()
    counter(STAGE, "duplicate_pairs").inc(row[OCCURRENCES] - 1)
    return row


class DedupPairs(beam.PTransform):
    """One row per uid across the whole run (not per file)."""

    def expand(self, rows):
        return (
            rows
            | "KeyByUid" >> beam.Map(lambda row: (row[UID], row))
            | "KeepFirstSeen" >> beam.CombinePerKey(KeepFirstSeen())
            | "DropKeys" >> beam.Values()
            | "CountUnique" >> beam.Map(_count_unique)
        )


class ExtractCandidates(beam.PTransform):
    """Web archive paths or globs -> {"pairs": unique candidate rows, "errors": error rows} and,
    with removal lists, "removed": audit rows of the pairs they name."""

    def __init__(self, patterns: list[str], rules: ExtractionRules = ExtractionRules(),
                 progress_dir: str | None = None, keep_page_optouts: bool = False,
                 blocklists: BlocklistSettings = BlocklistSettings()):
        super().__init__()
        self.patterns = list(patterns)
        self.rules = rules
        self.progress_dir = progress_dir  # where workers keep running totals (transforms/progress.py)
        self.keep_page_optouts = keep_page_optouts
        self.blocklists = blocklists

    def expand(self, pbegin):
        paths = (
            pbegin
            | "ArchivePatterns" >> beam.Create(self.patterns)
            | "ExpandPatterns" >> beam.ParDo(ExpandPatterns()).with_outputs(ERRORS, main="paths")
        )
        records = (
            paths.paths
            # One big file list must not stay on the worker that listed it.
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadArchiveRecords" >> beam.ParDo(ReadArchiveRecords(self.progress_dir, self.rules.max_record_bytes))
            .with_outputs(ERRORS, main="records")
        )
        pairs = records.records | "ExtractPairs" >> beam.ParDo(
            ExtractPairs(self.rules, self.progress_dir, self.keep_page_optouts)).with_outputs(ERRORS, main="pairs")
        unique = pairs.pairs | "DedupPairs" >> DedupPairs()
        errors = (paths[ERRORS], records[ERRORS], pairs[ERRORS]) | "AllErrors" >> beam.Flatten()
        if not self.blocklists:
            return {"pairs": unique, "errors": errors}
        # After dedup: one audit row per pair, judged on the row the dataset keeps.
        listed = unique | "DropListedPairs" >> beam.ParDo(DropListedRows(self.blocklists, STAGE)).with_outputs(
            REMOVED, main="pairs")
        return {"pairs": listed.pairs, "errors": errors, "removed": listed[REMOVED]}
