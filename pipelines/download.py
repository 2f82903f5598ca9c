"""The download job: candidate pairs (parquet) -> webdataset shards with parquet metadata."""


import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from crawl2clip.pipelines.options import Crawl2ClipOptions
from crawl2clip.transforms import files
from crawl2clip.transforms.download.shards import OUTPUT_COLUMNS, retryable_rows
from crawl2clip.transforms.download.transform import RETRYABLE_STATUSES, DownloadImages, shards_for


def input_files(options: Crawl2ClipOptions) -> list[str]:
    found = sorted({path for pattern in options.input for path in files.match(pattern)})
    if not found:
        raise ValueError(f"no parquet file matches {' '.join(options.input)}")
    return found


def _input_schema(paths: list[str]) -> pa.Schema:
    with files.open_read(paths[0]) as f:
        schema = pq.read_schema(f)
    return pa.schema([field for field in schema if field.name not in OUTPUT_COLUMNS])


def _row_count(paths: list[str]) -> int:
    total = 0
    for path in paths:
        with files.open_read(path) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def build_download(pipeline: beam.Pipeline, options: Crawl2ClipOptions) -> None:
    if options.retry_failed:
        rows = retryable_rows(options.retry_failed, RETRYABLE_STATUSES)
        schema = None
        count = len(rows)
        source = pipeline | "RetryableRows" >> beam.Create(rows)
    else:
        paths = input_files(options)
        schema, count = _input_schema(paths), _row_count(paths)
        source = pipeline | "InputFiles" >> beam.Create(paths) | "ReadPairs" >> beam.io.ReadAllFromParquet()
    shard_count = shards_for(count, options.shard_size)
    source | "DownloadImages" >> DownloadImages(options.output_dir, shard_count, options.fetch_options(),
                                                 options.resize_spec(), schema, options.blocklist_settings())
