"""Column names and Arrow types of everything the stages write, defined once.

LAION-5B's names (`URL`, `TEXT`, ...) are kept so its tools read our output unchanged; our own
columns are lower-case.
"""

from typing import NamedTuple, Optional

import apache_beam as beam
import pyarrow as pa

URL = "URL"  # the image URL, absolute
TEXT = "TEXT"  # the caption (alt text)
UID = "uid"  # stable hash of URL + TEXT, the key of a pair across every stage
PAGE_URL = "page_url"
SOURCE = "source"  # the archive file the pair came from
OFFSET = "offset"  # byte offset of the record in that file (gzip member start when compressed)
OCCURRENCES = "occurrences"  # how many times the crawl held this exact pair
LANGUAGE = "LANGUAGE"  # ISO 639 code of the caption's language (fastText lid.176)
LANGUAGE_SCORE = "LANGUAGE_SCORE"  # the model's probability for it
SPLIT = "split"  # LAION's split: en, multi or nolang
PAGE_OPTOUT = "page_optout"  # the page's reservations (noai, TDMRep, ...), kept with --ignore-page-optouts

CANDIDATE_SCHEMA = pa.schema(
    [
        pa.field(URL, pa.string(), nullable=False),
        pa.field(TEXT, pa.string(), nullable=False),
        pa.field(UID, pa.string(), nullable=False),
        pa.field(PAGE_URL, pa.string(), nullable=False),
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(OFFSET, pa.int64(), nullable=False),
        pa.field(OCCURRENCES, pa.int64(), nullable=False),
        # null when language identification is off; LANGUAGE/LANGUAGE_SCORE also when a rule
        # decided `nolang` without asking the model
        pa.field(LANGUAGE, pa.string()),
        pa.field(LANGUAGE_SCORE, pa.float32()),
        pa.field(SPLIT, pa.string()),
        pa.field(PAGE_OPTOUT, pa.string()),  # null: the page reserves nothing
    ]
)

ERROR_SCHEMA = pa.schema(
    [
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("offset", pa.int64(), nullable=False),
        pa.field("url", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
    ]
)


class CandidateRow(NamedTuple):
    """A candidate pair as a schema'd Beam row, for Beam YAML and other schema-aware users."""

    URL: str
    TEXT: str
    uid: str
    page_url: str
    source: str
    offset: int
    occurrences: int
    LANGUAGE: Optional[str] = None
    LANGUAGE_SCORE: Optional[float] = None
    split: Optional[str] = None
    page_optout: Optional[str] = None


class ErrorRow(NamedTuple):
    stage: str
    reason: str
    source: str
    offset: int
    url: str
    detail: str


beam.coders.registry.register_coder(CandidateRow, beam.coders.RowCoder)
beam.coders.registry.register_coder(ErrorRow, beam.coders.RowCoder)
