"""The download stage as Beam transforms: candidate rows in, img2dataset-layout shards out.

    rows -> KeyByShard -> GroupByKey -> DownloadShard (fetch, check, resize, write one shard)

Per worker, images are checked and resized on a thread pool as soon as they arrive, and up to
SHARDS_AHEAD shards download while an earlier one is written (all of a bundle's shards are
written before the bundle ends, so a failed bundle is redone whole and nothing is lost).

A row's shard is a hash of its uid, so a rerun puts every row in the same shard whatever order
the input is read in; rows inside a shard are sorted by uid, so keys are stable too. A shard
whose stats file exists is finished and skipped: rerunning into the same folder after a crash
does only the missing shards. The folder may be local or on any Beam filesystem (hdfs://, s3://):
every file goes through transforms/files.py.

With removal lists, a row a URL or domain list names is never requested and an image a hash
list names is never written: both leave the shard and become audit rows in
`removed/removed_NNNNN.parquet` (transforms/consent/audit.py).
"""

import math
import os
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import pyarrow as pa
from apache_beam.utils.windowed_value import WindowedValue

from crawl2clip.transforms.consent.audit import REMOVED, audit_row, write_audit
from crawl2clip.transforms.consent.blocklists import BlocklistSettings, load_blocklists
from crawl2clip.transforms.download.client import FetchOptions, Fetcher, FetchResult
from crawl2clip.transforms.download.images import ImageRejected, ProcessedImage, ResizeSpec, process_image
from crawl2clip.transforms import files
from crawl2clip.transforms.download.shards import SUCCESS, ShardWriter, shard_name, stats_path
from crawl2clip.transforms.errors import counter
from crawl2clip.transforms.extract.rules import pair_uid
from crawl2clip.transforms.schema import PAGE_URL, TEXT, UID, URL

STAGE = "download"
# Failures worth another try later (--retry-failed): the server or the network, not the image.
RETRYABLE_STATUSES = ("timeout", "connection_error", "dns_error", "truncated", "http_429", "http_500",
                      "http_502", "http_503", "http_504")


def row_uid(row: dict) -> str:
    return row.get(UID) or pair_uid(str(row.get(URL)), str(row.get(TEXT)))


def removed_path(output_dir: str, shard_id: int) -> str:
    """The audit rows of the pairs removal lists took out of a shard (consent/audit.py); written
    before the shard's stats file, so a finished shard always has its audit."""
    return files.join(output_dir, REMOVED, f"{REMOVED}_{shard_name(shard_id)}.parquet")


def shard_id_of(uid: str, shard_count: int) -> int:
    return int(uid[:15], 16) % shard_count


def shards_for(pairs: int, shard_size: int) -> int:
    """How many shards `pairs` rows fill at `shard_size` each (at least one)."""
    return max(1, math.ceil(pairs / shard_size))


class CountShards(beam.PTransform):
    """Rows -> one element: how many shards they fill, for DownloadImages' shard_count (as a
    side input) when the rows are only known once the job runs."""

    def __init__(self, shard_size: int):
        super().__init__()
        self.shard_size = shard_size

    def expand(self, rows):
        shard_size = self.shard_size
        return (rows
                | "CountPairs" >> beam.combiners.Count.Globally()
                | "ShardCount" >> beam.Map(lambda n: shards_for(n, shard_size)))


# Shards a worker has started but not written yet, beyond the one being written. While the
# oldest is written the others keep downloading (and their images keep being resized), so
# neither the writing nor the slowest request of a shard leaves the network or the CPUs idle.
SHARDS_AHEAD = 2


class _DownloadShard(beam.DoFn):
    def __init__(self, output_dir: str, fetch: FetchOptions, resize: ResizeSpec, input_schema: pa.Schema | None,
                 blocklists: BlocklistSettings = BlocklistSettings()):
        self.output_dir = output_dir
        self.fetch = fetch
        self.resize = resize
        self.input_schema = input_schema
        self.blocklists = blocklists

    def setup(self):
        # One HTTP session, DNS cache and robots.txt cache per worker, reused by every shard.
        self._fetcher = Fetcher(self.fetch)
        # Pillow releases the GIL while decoding, resizing and encoding: threads use every core.
        self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
        self._in_flight: deque = deque()
        self._lists = load_blocklists(self.blocklists) if self.blocklists else None

    def teardown(self):
        self._give_up_in_flight()
        self._fetcher.close()
        self._pool.shutdown(cancel_futures=True)

    def start_bundle(self):
        self._give_up_in_flight()  # left over by a failed bundle: Beam retries those shards

    def _give_up_in_flight(self):
        while self._in_flight:
            self._in_flight.popleft()[2].cancel()

    def _checked_image(self, result: FetchResult) -> tuple[str, str | None, ProcessedImage | None]:
        """Runs on the pool as soon as the body has arrived."""
        if not result.ok:
            return result.status, result.error_message, None
        try:
            image = process_image(result.data, self.resize)
        except ImageRejected as rejected:
            return rejected.reason, rejected.detail, None
        # Image-hash lists: on the bytes as downloaded, before anything is written.
        match = self._lists.match_image_bytes(result.data, image.sha256) if self._lists else None
        return (REMOVED, match, None) if match is not None else (SUCCESS, None, image)

    def _drop_listed(self, rows: list) -> tuple[list, list[dict]]:
        """The rows no URL or domain list names (never requested otherwise), and the others' audit rows."""
        if self._lists is None or not self._lists.url_lists:
            return rows, []
        kept, removed = [], []
        for row in rows:
            match = self._lists.match_url(row.get(URL), row.get(PAGE_URL))
            if match is None:
                kept.append(row)
            else:
                removed.append(audit_row(row, match, STAGE))
        return kept, removed

    def process(self, shard, window=beam.DoFn.WindowParam, timestamp=beam.DoFn.TimestampParam):
        shard_id, rows = shard  # (shard id, its rows)
        if files.marker_exists(stats_path(self.output_dir, shard_id)):
            counter(STAGE, "shards_already_done").inc()
            return
        rows, removed = self._drop_listed(sorted(rows, key=row_uid))
        checked = self._fetcher.submit([str(row.get(URL)) for row in rows], self._checked_image, self._pool)
        self._in_flight.append((shard_id, rows, checked, window, timestamp, removed))
        while len(self._in_flight) > SHARDS_AHEAD:
            yield self._write_oldest()

    def finish_bundle(self):
        while self._in_flight:
            yield self._write_oldest()

    def _write_oldest(self) -> WindowedValue:
        shard_id, rows, checked, window, timestamp, removed = self._in_flight.popleft()
        statuses = Counter()
        with ShardWriter(self.output_dir, shard_id, self.resize.output_format, input_schema=self.input_schema) as writer:
            for row, (status, message, image) in zip(rows, checked.result()):
                if status == REMOVED:  # `message` is the list's Match
                    removed.append(audit_row(row, message, STAGE))
                    continue
                writer.write(row, image, status=status, error_message=message)
                statuses[status] += 1
            if removed:
                write_audit(removed_path(self.output_dir, shard_id), removed)
        for status, count in statuses.items():
            counter(STAGE, "images" if status == SUCCESS else f"failed_{status}").inc(count)
        counter(STAGE, "shards").inc()
        return WindowedValue({"shard": shard_id, "rows": writer.count}, timestamp, [window])


class DownloadImages(beam.PTransform):
    """Rows with URL and TEXT (any other columns ride along) -> shards in `output_dir`:
    NNNNN.tar (webdataset), NNNNN.parquet (every row with status), NNNNN_stats.json."""

    def __init__(self, output_dir: str, shard_count: "int | beam.pvalue.AsSingleton",
                 fetch: FetchOptions = FetchOptions(),
                 resize: ResizeSpec = ResizeSpec(), input_schema: pa.Schema | None = None,
                 blocklists: BlocklistSettings = BlocklistSettings()):
        super().__init__()
        # A number, or a side input holding it when it is only known at run time (crawl2clip run).
        if isinstance(shard_count, int) and shard_count < 1:
            raise ValueError("shard_count must be at least 1")
        self.output_dir = output_dir
        self.shard_count = shard_count
        self.fetch = fetch
        self.resize = resize
        self.input_schema = input_schema
        self.blocklists = blocklists  # removal lists: URLs before any request, image hashes after it

    def expand(self, rows):
        return (
            rows
            | "KeyByShard" >> beam.Map(lambda row, count: (shard_id_of(row_uid(row), count), row), self.shard_count)
            | "GroupShards" >> beam.GroupByKey()
            | "DownloadShard" >> beam.ParDo(_DownloadShard(self.output_dir, self.fetch, self.resize, self.input_schema,
                                                          self.blocklists))
        )
