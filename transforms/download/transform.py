"""The download stage as Beam transforms: candidate rows in, img2dataset-layout shards out.

    rows -> KeyByShard -> GroupByKey -> DownloadShard (fetch, check, resize, write one shard)

A row's shard is a hash of its uid, so a rerun puts every row in the same shard whatever order
the input is read in; rows inside a shard are sorted by uid, so keys are stable too. A shard
whose stats file exists is finished and skipped: rerunning into the same folder after a crash
does only the missing shards.
"""

import os
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import pyarrow as pa

from crawl2clip.transforms.download.client import FetchOptions, Fetcher
from crawl2clip.transforms.download.images import ImageRejected, ProcessedImage, ResizeSpec, process_image
from crawl2clip.transforms.download.shards import SUCCESS, ShardWriter, stats_path
from crawl2clip.transforms.errors import counter
from crawl2clip.transforms.extract.rules import pair_uid
from crawl2clip.transforms.schema import TEXT, UID, URL

STAGE = "download"
# Failures worth another try later (--retry-failed): the server or the network, not the image.
RETRYABLE_STATUSES = ("timeout", "connection_error", "dns_error", "truncated", "http_429", "http_500",
                      "http_502", "http_503", "http_504")


def row_uid(row: dict) -> str:
    return row.get(UID) or pair_uid(str(row.get(URL)), str(row.get(TEXT)))


def shard_id_of(uid: str, shard_count: int) -> int:
    return int(uid[:15], 16) % shard_count


class _DownloadShard(beam.DoFn):
    def __init__(self, output_dir: str, fetch: FetchOptions, resize: ResizeSpec, input_schema: pa.Schema | None):
        self.output_dir = output_dir
        self.fetch = fetch
        self.resize = resize
        self.input_schema = input_schema

    def setup(self):
        # One HTTP session, DNS cache and robots.txt cache per worker, reused by every shard.
        self._fetcher = Fetcher(self.fetch)
        # Pillow releases the GIL while decoding, resizing and encoding: threads use every core.
        self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)

    def teardown(self):
        self._fetcher.close()
        self._pool.shutdown()

    def _checked_image(self, result) -> tuple[str, str | None, ProcessedImage | None]:
        if not result.ok:
            return result.status, result.error_message, None
        try:
            return SUCCESS, None, process_image(result.data, self.resize)
        except ImageRejected as rejected:
            return rejected.reason, rejected.detail, None

    def process(self, shard):  # (shard id, its rows)
        shard_id, rows = shard
        if os.path.exists(stats_path(self.output_dir, shard_id)):
            counter(STAGE, "shards_already_done").inc()
            return
        rows = sorted(rows, key=row_uid)
        fetched = self._fetcher.fetch_batch([str(row.get(URL)) for row in rows])
        with ShardWriter(self.output_dir, shard_id, self.resize.output_format, input_schema=self.input_schema) as writer:
            for row, (status, message, image) in zip(rows, self._pool.map(self._checked_image, fetched)):
                writer.write(row, image, status=status, error_message=message)
                counter(STAGE, "images" if status == SUCCESS else f"failed_{status}").inc()
        counter(STAGE, "shards").inc()
        yield {"shard": shard_id, "rows": writer.count}


class DownloadImages(beam.PTransform):
    """Rows with URL and TEXT (any other columns ride along) -> shards in `output_dir`:
    NNNNN.tar (webdataset), NNNNN.parquet (every row with status), NNNNN_stats.json."""

    def __init__(self, output_dir: str, shard_count: int, fetch: FetchOptions = FetchOptions(),
                 resize: ResizeSpec = ResizeSpec(), input_schema: pa.Schema | None = None):
        super().__init__()
        if shard_count < 1:
            raise ValueError("shard_count must be at least 1")
        self.output_dir = output_dir
        self.shard_count = shard_count
        self.fetch = fetch
        self.resize = resize
        self.input_schema = input_schema

    def expand(self, rows):
        shard_count = self.shard_count
        return (
            rows
            | "KeyByShard" >> beam.Map(lambda row: (shard_id_of(row_uid(row), shard_count), row))
            | "GroupShards" >> beam.GroupByKey()
            | "DownloadShard" >> beam.ParDo(_DownloadShard(self.output_dir, self.fetch, self.resize, self.input_schema))
        )
