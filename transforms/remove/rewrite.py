"""Rewriting a finished run without the rows a `remove` plan names: plain functions, no Beam.

The run is cut into units, each rewritten alone:

    shard   a download shard NNNNN: .tar (members copied byte for byte), .parquet, _stats.json
    part    a scoring part N: img_emb_N.npy, text_emb_N.npy, metadata_N.parquet (rows aligned)
    rows    prune/kept.parquet or duplicates.parquet: rows dropped, `row` renumbered in the new parts
    table   any other parquet: rows dropped by uid, or error rows by their `url`; else untouched
    copy    any other file, copied (only when writing a cleaned copy elsewhere)

Every unit is crash-safe and idempotent. Its new files are written into a staging folder with a
list of where each goes; only then are they renamed into place (a part's metadata last, a
shard's stats last, as their writers do), and a done marker is written. A rerun skips done
units, finishes the renames of staged ones, and redoes the others from the files as they are:
removing the same uids twice removes nothing more.
"""

import functools
import json
import os
import shutil
import tarfile
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crawl2clip.transforms.consent.audit import REMOVED
from crawl2clip.transforms.consent.blocklists import Blocklists
from crawl2clip.transforms.download.shards import (
    KEY,
    PARQUET,
    SHARD_FILES,
    STATS,
    STATUS,
    SUCCESS,
    TAR,
    finished_shards,
    shard_file,
    tar_end,
)
from crawl2clip.transforms.embeddings import (
    EMBEDDING_DTYPE,
    IMG_EMB,
    METADATA,
    TEXT_EMB,
    list_parts,
    load_embeddings,
    part_paths,
)
from crawl2clip.transforms.errors import counter
from crawl2clip.transforms.prune.outputs import DUPLICATES, KEPT
from crawl2clip.transforms.schema import UID

STAGE = "remove"
SHARD_COLUMN = "shard"  # score metadata: the download tar holding the image
_MOVES = "MOVES.json"
_move = os.replace  # every rename of a new file into place (the tests crash a remove half-way here)
_TAR_BLOCK = 512


@dataclass(frozen=True)
class RunDirs:
    """The stage folders of a run, relative to it (pipelines/end_to_end.py decides them)."""

    download: str = "download"
    score: str = "score"
    prune: str = "prune"


@dataclass(frozen=True)
class Unit:
    kind: str  # shard, part, rows, table, copy
    name: str  # a file relative to the run folder; for shard/part, that of its number's first file
    source: str  # the run folder read
    target: str  # the run folder written (the same one when cleaning in place)
    number: int = -1
    dirs: RunDirs = RunDirs()

    @property
    def marker(self) -> str:
        return self.name.replace(os.sep, "__")

    @property
    def in_place(self) -> bool:
        return os.path.abspath(self.source) == os.path.abspath(self.target)


# ---------------------------------------------------------------- which units a run has


def list_units(source: str, target: str, dirs: RunDirs, skip: set[str]) -> list[Unit]:
    """Every unit of the run in `source`. Relative paths in `skip`, and everything under them, are
    left alone (the index and the report, made again afterwards; the remove's own files); audits
    (`removed/` folders) are never filtered: they name removed rows on purpose."""
    units: list[Unit] = []
    covered: set[str] = set()
    download = os.path.join(source, dirs.download)
    for number in sorted(finished_shards(download)):
        names = [shard_file(dirs.download, number, suffix) for suffix in SHARD_FILES]
        covered.update(names)
        units.append(Unit("shard", names[0], source, target, number, dirs))
    for part in list_parts(os.path.join(source, dirs.score)):
        names = [os.path.relpath(path, source) for path in (part.img_emb, part.text_emb, part.metadata)]
        covered.update(names)
        units.append(Unit("part", names[2], source, target, part.number, dirs))
    for name in (KEPT, DUPLICATES):
        path = os.path.join(dirs.prune, name)
        if os.path.isfile(os.path.join(source, path)):
            covered.add(path)
            units.append(Unit("rows", path, source, target, dirs=dirs))
    for folder, subfolders, files in os.walk(source):
        relative_folder = os.path.relpath(folder, source)
        if _skipped(relative_folder, skip):
            subfolders[:] = []
            continue
        subfolders.sort()
        for name in sorted(files):
            relative = os.path.normpath(os.path.join(relative_folder, name))
            if relative in covered or _skipped(relative, skip) or name.endswith(".tmp"):
                continue
            if name.endswith(".parquet") and REMOVED not in relative.split(os.sep):  # audits keep naming rows
                units.append(Unit("table", relative, source, target, dirs=dirs))
            elif os.path.abspath(source) != os.path.abspath(target):
                units.append(Unit("copy", relative, source, target, dirs=dirs))
    return units


def _skipped(relative: str, skip: set[str]) -> bool:
    return any(relative == s or relative.startswith(s + os.sep) for s in skip)


# ---------------------------------------------------------------- running one unit


def apply_unit(unit: Unit, removed: frozenset, lists: Blocklists, work: str) -> dict[str, int]:
    """Rewrites one unit (or finishes a crashed rewrite of it); returns what it removed. `work` is
    the remove's progress folder in the target run (staging and done markers)."""
    done = os.path.join(work, "done", unit.marker + ".json")
    if os.path.exists(done):
        counter(STAGE, "units_already_done").inc()
        return {}
    staged = os.path.join(work, "staged", unit.marker)
    moves_file = os.path.join(staged, _MOVES)
    if not os.path.exists(moves_file):
        shutil.rmtree(staged, ignore_errors=True)
        os.makedirs(staged)
        moves, counts = _BUILDERS[unit.kind](unit, removed, lists, staged)
        _write_json(moves_file, {"moves": moves, "counts": counts})
    with open(moves_file) as f:
        plan = json.load(f)
    for name, final in plan["moves"]:  # in order: the file that marks a unit whole goes last
        path = os.path.join(staged, name)
        if os.path.exists(path):  # gone: renamed before a crash
            os.makedirs(os.path.dirname(final), exist_ok=True)
            _move(path, final)
    _write_json(done, {"kind": unit.kind, "counts": plan["counts"]})
    shutil.rmtree(staged, ignore_errors=True)
    for name, value in plan["counts"].items():
        counter(STAGE, name).inc(value)
    counter(STAGE, f"units_{unit.kind}").inc()
    return plan["counts"]


def totals(work: str) -> dict[str, int]:
    """What every finished unit removed, summed over however many attempts it took (the done
    markers keep each unit's counts), as `remove:` counters."""
    found: dict[str, int] = {}
    folder = os.path.join(work, "done")
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        with open(os.path.join(folder, name)) as f:
            marker = json.load(f)
        if "kind" not in marker:  # not a unit's marker
            continue
        for key, value in {**marker["counts"], f"units_{marker['kind']}": 1}.items():
            found[f"{STAGE}:{key}"] = found.get(f"{STAGE}:{key}", 0) + value
    return dict(sorted(found.items()))


def _write_json(path: str, value) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(temporary, path)


@functools.lru_cache(maxsize=2)
def _value_set(removed: frozenset) -> pa.Array:
    return pa.array(sorted(removed), pa.string())  # once per plan, not once per unit


def _kept(uids: pa.ChunkedArray | pa.Array, removed: frozenset) -> pa.Array:
    """True where a row stays."""
    return pc.invert(pc.fill_null(pc.is_in(uids, value_set=_value_set(removed)), False))


def _dropped(keep: pa.Array) -> int:
    return len(keep) - (pc.sum(pc.cast(keep, pa.int64())).as_py() or 0)


def _stage_of(unit: Unit) -> str:
    return unit.name.split(os.sep, 1)[0]


def _copy(unit: Unit, staged: str) -> list[list[str]]:
    shutil.copyfile(os.path.join(unit.source, unit.name), os.path.join(staged, "file"))
    return [["file", os.path.join(unit.target, unit.name)]]


# ---------------------------------------------------------------- the units


def _table(unit: Unit, removed: frozenset, lists: Blocklists, staged: str):
    source = os.path.join(unit.source, unit.name)
    table = pq.read_table(source)
    if UID in table.column_names:
        keep = _kept(table[UID], removed)
    elif {"url", "reason"} <= set(table.column_names):  # an errors table: its rows name a URL, not a pair
        keep = pa.array([lists.match_url(url) is None for url in table["url"].to_pylist()], pa.bool_())
    else:
        keep = None
    dropped = 0 if keep is None else _dropped(keep)
    if not dropped:
        return ([] if unit.in_place else _copy(unit, staged)), {}
    pq.write_table(table.filter(keep), os.path.join(staged, "file"))
    return [["file", os.path.join(unit.target, unit.name)]], {f"rows_removed_{_stage_of(unit)}": dropped}


def _tar_members(path: str):
    """(the member, its sample key, its raw bytes: header(s), data, padding) of every member of a tar."""
    with open(path, "rb") as raw, tarfile.open(path) as tar:
        for member in tar:
            end = member.offset_data + -(-member.size // _TAR_BLOCK) * _TAR_BLOCK
            raw.seek(member.offset)
            yield member, os.path.basename(member.name).split(".", 1)[0], raw.read(end - member.offset)


def _shard(unit: Unit, removed: frozenset, lists: Blocklists, staged: str):
    paths = {suffix: (shard_file(os.path.join(unit.source, unit.dirs.download), unit.number, suffix),
                      shard_file(os.path.join(unit.target, unit.dirs.download), unit.number, suffix))
             for suffix in SHARD_FILES}
    table = pq.read_table(paths[PARQUET][0])
    keep = _kept(table[UID], removed) if UID in table.column_names else pa.array([True] * table.num_rows)
    gone = table.filter(pc.invert(keep))
    moves = [[f"shard{suffix}", final] for suffix, (_, final) in paths.items()]  # stats last
    if gone.num_rows == 0:
        if unit.in_place:
            return [], {}
        for suffix, (source, _) in paths.items():
            shutil.copyfile(source, os.path.join(staged, f"shard{suffix}"))
        return moves, {}
    gone_keys = set(gone[KEY].to_pylist())
    size = image_bytes = 0
    with open(os.path.join(staged, "shard.tar"), "wb") as out:
        for member, key, raw in _tar_members(paths[TAR][0]):
            if key in gone_keys:
                continue
            out.write(raw)
            size += len(raw)
            image_bytes += member.size if member.name.rpartition(".")[2] not in ("txt", "json") else 0
        out.write(tar_end(size))
    kept = table.filter(keep)
    pq.write_table(kept, os.path.join(staged, "shard.parquet"))
    with open(paths[STATS][0]) as f:
        stats = json.load(f)
    statuses = pc.value_counts(kept[STATUS]).to_pylist() if kept.num_rows else []
    counts = dict(sorted((s["values"], s["counts"]) for s in statuses))
    successes_gone = sum(1 for s in gone[STATUS].to_pylist() if s == SUCCESS)
    successes = counts.get(SUCCESS, 0)
    stats.update(count=kept.num_rows, successes=successes, failures=kept.num_rows - successes, status_counts=counts,
                 image_bytes=image_bytes, tar_bytes=size + len(tar_end(size)),
                 removed_rows=stats.get("removed_rows", 0) + gone.num_rows)
    _write_json(os.path.join(staged, "shard_stats.json"), stats)
    return moves, {"rows_removed_download": gone.num_rows, "samples_removed_download": successes_gone}


def _part(unit: Unit, removed: frozenset, lists: Blocklists, staged: str):
    source, target = part_paths(os.path.join(unit.source, unit.dirs.score), unit.number), \
        part_paths(os.path.join(unit.target, unit.dirs.score), unit.number)
    metadata = pq.read_table(source.metadata)
    keep = _kept(metadata[UID], removed)
    dropped = _dropped(keep)
    if not dropped and unit.in_place:
        return [], {}
    mask = np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool)
    for label, path in ((IMG_EMB, source.img_emb), (TEXT_EMB, source.text_emb)):
        if not dropped:
            shutil.copyfile(path, os.path.join(staged, f"{label}.npy"))
            continue
        vectors = load_embeddings(path)
        with open(os.path.join(staged, f"{label}.npy"), "wb") as f:
            np.save(f, np.asarray(vectors[mask], dtype=EMBEDDING_DTYPE))
        del vectors
    metadata = metadata.filter(keep)
    if not unit.in_place and SHARD_COLUMN in metadata.column_names:
        metadata = _moved_shards(metadata, unit)
    pq.write_table(metadata, os.path.join(staged, f"{METADATA}.parquet"))
    moves = [[f"{IMG_EMB}.npy", target.img_emb], [f"{TEXT_EMB}.npy", target.text_emb],
             [f"{METADATA}.parquet", target.metadata]]  # metadata last: the part exists only once it does
    return moves, ({"rows_removed_score": dropped} if dropped else {})


def _moved_shards(metadata: pa.Table, unit: Unit) -> pa.Table:
    """The `shard` column of a cleaned copy points at the copy's download tars."""
    old = os.path.abspath(os.path.join(unit.source, unit.dirs.download)) + os.sep
    new = os.path.abspath(os.path.join(unit.target, unit.dirs.download)) + os.sep
    paths = [new + path[len(old):] if path and path.startswith(old) else path
             for path in metadata[SHARD_COLUMN].to_pylist()]
    at = metadata.column_names.index(SHARD_COLUMN)
    return metadata.set_column(at, metadata.schema.field(SHARD_COLUMN), pa.array(paths, pa.string()))


def new_rows(score_dir: str, parts: set[int], removed: frozenset) -> dict[int, dict[str, int]]:
    """part -> uid -> its row once the removed rows are gone. The same whether the part has been
    rewritten yet or not (the removed uids are filtered out either way)."""
    positions = {}
    for number in sorted(parts):
        path = part_paths(score_dir, number).metadata
        uids = pq.read_table(path, columns=[UID]).column(UID).to_pylist() if os.path.exists(path) else []
        positions[number] = {uid: row for row, uid in enumerate(u for u in uids if u not in removed)}
    return positions


def _rows(unit: Unit, removed: frozenset, lists: Blocklists, staged: str):
    original = table = pq.read_table(os.path.join(unit.source, unit.name))
    if table.num_rows == 0:
        return ([] if unit.in_place else _copy(unit, staged)), {}
    if UID not in table.column_names or "part" not in table.column_names:  # cannot tell its rows apart
        return ([] if unit.in_place else _copy(unit, staged)), {"prune_tables_without_uid": 1}
    keep = _kept(table[UID], removed)
    dropped = _dropped(keep)
    table = table.filter(keep)
    parts = set(table["part"].to_pylist())
    duplicate_of = "duplicate_of_uid" in table.column_names and "duplicate_of_part" in table.column_names
    if duplicate_of:
        parts |= {p for p in table["duplicate_of_part"].to_pylist() if p is not None}
    positions = new_rows(os.path.join(unit.source, unit.dirs.score), parts, removed)
    rows = [positions[p].get(u, r) for p, u, r in zip(table["part"].to_pylist(), table[UID].to_pylist(),
                                                      table["row"].to_pylist())]
    table = table.set_column(table.column_names.index("row"), table.schema.field("row"), pa.array(rows, pa.int64()))
    if duplicate_of and "duplicate_of_row" in table.column_names:
        # The row a duplicate duplicates may itself be listed: then it no longer points anywhere.
        of = list(zip(table["duplicate_of_part"].to_pylist(), table["duplicate_of_uid"].to_pylist(),
                      table["duplicate_of_row"].to_pylist()))
        gone = [u is not None and u in removed for _, u, _ in of]
        for name, values in (("duplicate_of_uid", [None if g else u for (_, u, _), g in zip(of, gone)]),
                             ("duplicate_of_part", [None if g else p for (p, _, _), g in zip(of, gone)]),
                             ("duplicate_of_row", [None if g else positions[p].get(u, r)
                                                   for (p, u, r), g in zip(of, gone)])):
            field = table.schema.field(name)
            table = table.set_column(table.column_names.index(name), field, pa.array(values, field.type))
    if table.equals(original):  # nothing it names was removed
        return ([] if unit.in_place else _copy(unit, staged)), {}
    pq.write_table(table, os.path.join(staged, "file"))
    return [["file", os.path.join(unit.target, unit.name)]], ({"rows_removed_prune": dropped} if dropped else {})


_BUILDERS = {"table": _table, "shard": _shard, "part": _part, "rows": _rows,
             "copy": lambda unit, removed, lists, staged: (_copy(unit, staged), {})}
