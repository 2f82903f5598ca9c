"""Parquet tables read and written through transforms/files.py, so they may lie on any Beam
filesystem (a local disk, hdfs://, s3://, gs://): the prune's and remove's inputs and outputs."""

import pyarrow as pa
import pyarrow.parquet as pq

from crawl2clip.transforms import files


def read_table(path: str, columns: list[str] | None = None) -> pa.Table:
    with files.open_read(path) as f:
        return pq.read_table(f, columns=columns)


def column_names(path: str) -> list[str]:
    with files.open_read(path) as f:
        return pq.read_schema(f).names


def row_count(path: str) -> int:
    """From the footer only: no column is read."""
    with files.open_read(path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def write_table(path: str, table: pa.Table) -> str:
    """Committed whole (files.write_atomic): a reader never sees half a table under `path`."""
    return files.write_atomic(path, lambda f: pq.write_table(table, f))
