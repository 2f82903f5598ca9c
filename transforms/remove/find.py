"""Finding the rows of a finished run that removal lists name: plain functions, no Beam.

Rows are judged on what the run kept of them: URL kinds on `URL` and `page_url` of every table
that has them (candidate pairs, download rows, score metadata and dropped rows); `image-sha256`
on the download rows' `sha256` (of the image as downloaded); `image-phash` on the images in the
download tars (transforms/consent/phash.py stored_image_phashes: the stored image is a resized
copy, so a border is cut off first). A finished run keeps no MD5 of the originals.
"""

import tarfile

import pyarrow as pa

from crawl2clip.transforms import files
from crawl2clip.transforms.consent.audit import REMOVED_SCHEMA, audit_row
from crawl2clip.transforms.consent.blocklists import Blocklists
from crawl2clip.transforms.consent.phash import stored_image_phashes
from crawl2clip.transforms.download.shards import KEY, ORIGINAL_HEIGHT, ORIGINAL_WIDTH, SHA256, STATUS, SUCCESS
from crawl2clip.transforms.tables import column_names, read_table, write_table
from crawl2clip.transforms.schema import PAGE_URL, UID, URL

STAGE = "remove"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "webp", "png")
_ROW_COLUMNS = (UID, URL, PAGE_URL, SHA256)


class Unreadable(Exception):
    """A file of the run that could not be searched; `path` names it."""

    def __init__(self, path: str, cause: Exception):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.path = path


def _read_rows(path: str, columns: tuple[str, ...] | None = None) -> list[dict]:
    """The rows of a parquet table: all its columns, or those of `columns` it has ([] when it
    has no `uid` then: no pairs); Unreadable when its reader refuses it."""
    try:
        names = column_names(path)
        if columns is not None and UID not in names:
            return []
        return read_table(path, columns=None if columns is None else [c for c in columns if c in names]).to_pylist()
    except Exception as exc:  # whatever a damaged file makes its reader raise
        raise Unreadable(path, exc) from exc


def listed_rows(path: str, lists: Blocklists) -> list[dict]:
    """Audit rows of the rows of one parquet table that a list names (tables without `uid` have no pairs)."""
    rows = _read_rows(path, _ROW_COLUMNS)
    found = []
    for row in rows:
        match = lists.match_url(row.get(URL), row.get(PAGE_URL)) or lists.match_image(sha256=row.get(SHA256))
        if match is not None:
            found.append(audit_row(row, match, STAGE, count=False))
    return found


def listed_images(tar_path: str, parquet_path: str, lists: Blocklists) -> list[dict]:
    """Audit rows of the successes of one download shard whose stored image is within the
    pHash distance of an `image-phash` entry."""
    if not lists.needs_phash:
        return []
    rows = {row[KEY]: row for row in _read_rows(parquet_path) if row.get(STATUS) == SUCCESS}
    found = []
    try:
        with files.open_read(tar_path) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:
                stem, _, extension = member.name.rpartition("/")[2].rpartition(".")
                row = rows.get(stem)
                if row is None or not member.isfile() or extension not in IMAGE_EXTENSIONS:
                    continue
                original = (row.get(ORIGINAL_WIDTH) or 0, row.get(ORIGINAL_HEIGHT) or 0)
                match = lists.match_image(phashes=stored_image_phashes(tar.extractfile(member).read(), original))
                if match is not None:
                    found.append(audit_row(row, match, STAGE, count=False))
    except Exception as exc:  # a damaged tar, or an image in it that does not decode
        raise Unreadable(tar_path, exc) from exc
    return found


def first_match(rows: list[dict], list_order: dict[str, int]) -> dict:
    """Of the audit rows one pair got from several places, the one of the earliest list (then the
    image URL before the page URL before the image), so every runner picks the same."""
    return min(rows, key=lambda r: (list_order.get(r["list"], len(list_order)), r["matched"], r["entry"]))


def write_plan(path: str, rows: list[dict]) -> str:
    """The audit of a `remove` (one row per pair, by uid), written atomically: once it exists the
    rows it names are what every unit removes, whatever was rewritten before a crash."""
    return write_table(path, pa.Table.from_pylist(sorted(rows, key=lambda r: r[UID]), schema=REMOVED_SCHEMA))


def read_plan_uids(path: str) -> frozenset[str]:
    return frozenset(read_table(path, columns=[UID]).column(UID).to_pylist())
