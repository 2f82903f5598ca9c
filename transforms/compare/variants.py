"""The variants a comparison trains on, and the rows of a finished run each one selects.

    raw         every downloaded pair
    clip        the pairs the run's CLIP kept (over its similarity thresholds)
    clip+safe   those, under a limit on each content tag the run computed
    dbp[:F]     the prune's kept rows (SemDeDup + DBP of the CLIP-kept pairs; with F, a prune
                keeping that fraction)

Selections are sets of uids; pairs.py's training pool (the held-out pairs already out) is
filtered by them, so every variant is a subset of the same downloaded pairs. The run's scoring
output and kept lists are read through transforms/files.py and their layouts' definitions.
"""

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crawl2clip.transforms import files
from crawl2clip.transforms.compare.pairs import STAGE
from crawl2clip.transforms.embeddings import list_parts
from crawl2clip.transforms.errors import error_record
from crawl2clip.transforms.prune.apply import kept_rows_by_part
from crawl2clip.transforms.schema import UID
from crawl2clip.transforms.score.filters import LOW_SIMILARITY, TAG_REASONS
from crawl2clip.transforms.score.write import DROP_REASON, DROPPED
from crawl2clip.transforms.score.settings import NOT_COMPUTED, SCORING_JSON

RAW, CLIP, CLIP_SAFE, DBP = "raw", "clip", "clip+safe", "dbp"
KINDS = (RAW, CLIP, CLIP_SAFE, DBP)
TAG_COLUMNS = tuple(TAG_REASONS)  # the tags a run can filter on: punsafe, pwatermark, ptoxic


@dataclass(frozen=True)
class Variant:
    kind: str
    keep_fraction: float | None = None  # dbp only: None is the run's own prune

    @property
    def name(self) -> str:
        return self.kind if self.keep_fraction is None else f"{self.kind}:{self.keep_fraction:g}"

    @property
    def slug(self) -> str:
        """The name as a folder name."""
        return self.name.replace(":", "-")


def parse_variants(text: str) -> list[Variant]:
    """`raw,clip,clip+safe,dbp:0.5` -> variants; ValueError naming what is wrong."""
    variants: list[Variant] = []
    for item in (part.strip() for part in text.split(",")):
        kind, colon, fraction = item.partition(":")
        if kind not in KINDS:
            raise ValueError(f"--variants: unknown variant {item!r} (choose from raw, clip, clip+safe, dbp[:F])")
        if colon and kind != DBP:
            raise ValueError(f"--variants: {item!r}: only dbp takes a keep fraction")
        keep = None
        if colon:
            try:
                keep = float(fraction)
            except ValueError:
                keep = -1.0
            if not 0.0 < keep <= 1.0:
                raise ValueError(f"--variants: {item!r}: the keep fraction must be a number in (0, 1]")
        variant = Variant(kind, keep)
        if any(v.name == variant.name for v in variants):
            raise ValueError(f"--variants: {variant.name} is named twice")
        variants.append(variant)
    return variants


def read_scoring(score_dir: str) -> dict:
    return files.read_marker(files.join(score_dir, SCORING_JSON))


def _read_parquet(path: str, columns: list[str]) -> pa.Table:
    """The columns of `columns` that the file has."""
    with files.open_read(path) as f:
        parquet = pq.ParquetFile(f)
        return parquet.read(columns=[c for c in columns if c in parquet.schema_arrow.names])


def _read_columns(paths: list[str], columns: list[str]) -> list[pa.Table]:
    tables = []
    for path in paths:
        table = _read_parquet(path, columns)
        for column in columns:
            if column not in table.column_names:
                table = table.append_column(column, pa.nulls(table.num_rows, pa.float32()))
        tables.append(table.select(columns))
    return tables


def clip_kept(score_dir: str) -> pa.Table:
    """The pairs the run's CLIP kept, with their tags: the scoring output's rows, and the dropped
    rows set aside by a content limit rather than by similarity (they passed CLIP first)."""
    columns = [UID, *TAG_COLUMNS]
    kept = _read_columns([part.metadata for part in list_parts(score_dir)], columns)
    dropped = []
    for table in _read_columns(files.match(files.join(score_dir, DROPPED, "*.parquet")), columns + [DROP_REASON]):
        dropped.append(table.filter(pc.not_equal(table[DROP_REASON], LOW_SIMILARITY)).select(columns))
    tables = kept + dropped
    if not tables:
        return pa.schema([(UID, pa.string())] + [(c, pa.float32()) for c in TAG_COLUMNS]).empty_table()
    return pa.concat_tables(tables, promote_options="default")


def safe_limits(scoring: dict, cutoffs: dict[str, float]) -> tuple[dict[str, float], dict[str, str]]:
    """The limit on each content tag for clip+safe, and a sentence per tag. A tag the run computed
    is limited by the run's own --max-TAG where it set one, else by `cutoffs` (LAION's); a tag it
    did not compute has no limit, and the sentence says so."""
    sources = {**scoring.get("tags", {}), "ptoxic": scoring.get("toxicity")}
    run_limits = scoring.get("thresholds", {}).get("max_tags", {})
    limits, notes = {}, {}
    for column in TAG_COLUMNS:
        described = sources.get(column) or {}
        if described.get("source", NOT_COMPUTED) == NOT_COMPUTED:
            notes[column] = f"{NOT_COMPUTED}: no limit"
            continue
        source = described.get("name") or described["source"]  # the head's name, else its kind
        limit = run_limits.get(column, cutoffs.get(column))
        if limit is None:
            notes[column] = f"computed ({source}), no limit"
            continue
        limits[column] = float(limit)
        origin = f"the run's --max-{column}" if column in run_limits else "LAION's cut-off"
        notes[column] = f"<= {limit:g} ({origin}; computed by {source})"
    return limits, notes


def under_limits(rows: pa.Table, limits: dict[str, float]) -> pa.Table:
    """The rows whose every limited tag is at most its limit (a null value is not over it)."""
    for column, limit in limits.items():
        over = pc.fill_null(pc.greater(rows[column], limit), False)
        rows = rows.filter(pc.invert(over))
    return rows


def kept_by_prune(kept_path: str, score_dir: str) -> tuple[set[str], list[dict]]:
    """The uids of a prune's kept rows, read as prune-apply reads a kept list (rows by part) and
    checked against the scoring output's rows as it checks them: a part whose rows or uids do
    not match is an error record, and none of its rows is kept."""
    parts = {part.number: part for part in list_parts(score_dir)}
    kept, errors = set(), []
    for number, (rows, uids) in kept_rows_by_part(kept_path).items():
        part = parts.get(number)
        if part is None:
            errors.append(error_record(STAGE, "kept_mismatch", source=kept_path, offset=number,
                                       detail=f"kept rows of part {number}, which {score_dir} does not have"))
            continue
        metadata = _read_parquet(part.metadata, [UID])
        if len(rows) and int(rows.max()) >= metadata.num_rows:
            errors.append(error_record(STAGE, "kept_mismatch", source=part.metadata, offset=number,
                                       detail=f"kept row {int(rows.max())} of a part with {metadata.num_rows} rows"))
            continue
        found = metadata.take(pa.array(rows, pa.int64()))[UID].to_pylist()
        if uids is not None and found != uids:
            errors.append(error_record(STAGE, "kept_mismatch", source=part.metadata, offset=number,
                                       detail="the kept uids are not those of this folder's rows"))
            continue
        kept.update(found)
    return kept, errors
