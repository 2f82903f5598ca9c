"""Errors are data: one record shape for every stage, counted and written next to the output.

A stage's DoFn emits bad input on the `ERRORS` tagged output (an `error_record`) and bumps the
matching counter; the pipeline flattens every stage's errors and writes them to `DIR/errors/`.
"""

import functools

import apache_beam as beam
from apache_beam.metrics import Metrics

from crawl2clip.transforms import files
from crawl2clip.transforms.schema import ERROR_SCHEMA

ERRORS = "errors"  # the tag of every stage's error output
ERRORS_FOLDER = "errors"  # every stage writes its error rows under OUTPUT/errors/
_PART_PREFIX = "errors"  # WriteErrors' parts: errors-SSSSS-of-NNNNN.parquet
MAX_DETAIL_CHARS = 1000


def error_record(
    stage: str, reason: str, source: str = "", offset: int = -1, url: str = "", detail: str = ""
) -> dict:
    """One row of the errors output. `reason` is a short machine-readable word."""
    return {
        "stage": stage,
        "reason": reason,
        "source": source,
        "offset": int(offset),
        "url": url,
        "detail": detail[:MAX_DETAIL_CHARS],
    }


@functools.lru_cache(maxsize=None)
def counter(stage: str, name: str):
    """The Beam counter `stage:name` (cached: counters are looked up per element on hot paths)."""
    return Metrics.counter(stage, name)


def error_parts(output_dir: str) -> str:
    """The glob of the error parts WriteErrors writes for a stage's output folder."""
    return files.join(output_dir, ERRORS_FOLDER, f"{_PART_PREFIX}-*.parquet")


def count_error(record: dict) -> dict:
    """Counts an error under `<stage>:error_<reason>` and returns it, for use in a DoFn."""
    counter(record["stage"], "error_" + record["reason"]).inc()
    return record


class WriteErrors(beam.PTransform):
    """Writes error records as parquet under `output_dir/errors/`."""

    def __init__(self, output_dir: str):
        super().__init__()
        self.output_dir = output_dir

    def expand(self, errors):
        return errors | "WriteErrorParquet" >> beam.io.WriteToParquet(
            files.join(self.output_dir, ERRORS_FOLDER, _PART_PREFIX),
            ERROR_SCHEMA,
            file_name_suffix=".parquet",
        )
