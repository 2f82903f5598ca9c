"""The audit of removals: one row per pair a removal list took out, in `removed/*.parquet` of the
stage that took it out (extract, download, or a later `crawl2clip remove`).

    uid, URL, page_url    the pair
    stage                 extract | download | remove
    reason                the list's kind (url, url-sha256, url-md5, domain, image-sha256, image-md5, image-phash)
    list, entry           the list file (as given) and the entry that named the pair
    matched               what the entry matched: URL, page_url or image
    detail                e.g. the pHash distance
"""

import pyarrow as pa
import pyarrow.parquet as pq

from crawl2clip.transforms import files
from crawl2clip.transforms.consent.blocklists import Match, counter_name
from crawl2clip.transforms.errors import counter
from crawl2clip.transforms.schema import PAGE_URL, UID, URL

REMOVED = "removed"  # the folder and the tagged output's name
REMOVED_SCHEMA = pa.schema(
    [
        pa.field(UID, pa.string(), nullable=False),
        pa.field(URL, pa.string()),
        pa.field(PAGE_URL, pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("list", pa.string(), nullable=False),
        pa.field("entry", pa.string(), nullable=False),
        pa.field("matched", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
    ]
)


def audit_row(row: dict, match: Match, stage: str, count: bool = True) -> dict:
    """The audit row of a removed pair, counted under `<stage>:removed_<kind>` (unless the caller
    counts it later, once per pair)."""
    if count:
        counter(stage, counter_name(match.kind)).inc()
    return {
        UID: row.get(UID) or "",
        URL: row.get(URL),
        PAGE_URL: row.get(PAGE_URL),
        "stage": stage,
        "reason": match.kind,
        "list": match.list,
        "entry": match.entry,
        "matched": match.matched,
        "detail": match.detail,
    }


def write_audit(path: str, rows: list[dict]) -> None:
    """Writes audit rows to one parquet file (local or any Beam filesystem), committed whole."""
    table = pa.Table.from_pylist(rows, schema=REMOVED_SCHEMA)
    files.write_atomic(path, lambda out: pq.write_table(table, out))
