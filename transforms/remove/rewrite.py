"""Rewriting a finished run without the rows a `remove` plan names: plain functions, no Beam.

The run is cut into units, each rewritten alone:

    shard   a download shard NNNNN: .tar (members copied byte for byte), .parquet, _stats.json
    part    a scoring part N: img_emb_N.npy, text_emb_N.npy, metadata_N.parquet (rows aligned)
    rows    prune/kept.parquet or duplicates.parquet: rows dropped, `row` renumbered in the new parts
    table   any other parquet: rows dropped by uid, or error rows by their `url`; else untouched
    copy    any other file, copied (only when writing a cleaned copy elsewhere)

Every unit is crash-safe and idempotent. Its new files are written into a staging folder, then a
journal of where each goes (MOVES.json); only then are they renamed into place (a part's metadata
last, a shard's stats last, as their writers do), and a done marker is written. A rerun skips
done units, finishes the renames of journalled ones, and redoes the others from the files as
they are: removing the same uids twice removes nothing more.

Every path is read, written, listed and renamed through transforms/files.py, so the run may be
local or on any Beam filesystem (hdfs://, s3://, gs://); its layouts are those of the stages that
wrote it (download/shards.py, embeddings.py, prune/outputs.py).
"""

import functools
import os
import shutil
import tarfile
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystem import BeamIOError

from crawl2clip.transforms import files
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
    read_shard_table,
    read_stats,
    shard_file,
    tar_end,
)
from crawl2clip.transforms.embeddings import (
    list_parts,
    load_embeddings,
    part_paths,
    read_part_metadata,
    write_part,
)
from crawl2clip.transforms.errors import counter
from crawl2clip.transforms.prune.outputs import DUPLICATES, KEPT, output_path
from crawl2clip.transforms.tables import read_table, write_table
from crawl2clip.transforms.schema import ERROR_SCHEMA, UID
from crawl2clip.transforms.score.write import SHARD

STAGE = "remove"
_MOVES = "MOVES.json"
_LEGACY_TEMPORARY = ".tmp"  # what writers before transforms/files.py left: NAME.tmp, NAME.<pid>.tmp


def move(staged: str, final: str) -> None:
    """Gives a staged file (or folder) its final name, replacing a file there: every rename of a
    remove goes through here (the tests crash a remove half-way at it). A folder goes only where
    nothing is: HDFS would move it into a folder of that name."""
    files.makedirs(files.split(final)[0])
    files.move(staged, final)


def is_temporary(name: str) -> bool:
    """A file an unfinished write left: the file layer's `.NAME.tmp-<attempt>` or an older
    writer's `NAME.tmp`."""
    return files.is_temporary(name) or name.endswith(_LEGACY_TEMPORARY)


# ---------------------------------------------------------------- paths of a run


def normalised(path: str) -> str:
    """A path to compare: absolute when local, without a trailing slash."""
    return os.path.abspath(path) if files.is_local(path) else path.rstrip("/")


def relative(path: str, root: str) -> str:
    """`path` relative to the folder `root` ("/"-separated), as listings and joins spell it."""
    path, root = normalised(path), normalised(root)
    if not path.startswith(root + "/"):
        raise ValueError(f"{path} is not inside {root}")
    return path[len(root) + 1:]


def same_folder(a: str, b: str) -> bool:
    return normalised(a) == normalised(b)


def inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies under it."""
    return (normalised(path) + "/").startswith(normalised(folder) + "/")


def _skipped(name: str, skip: set[str]) -> bool:
    return any(name == s or name.startswith(s + "/") for s in skip)


def run_files(root: str, known: set[str], skip: set[str], folder: str = "") -> list[str]:
    """Every file under `root` (names relative to it), except those under `skip` and
    temporaries. A `**` listing reaches the whole tree where listings hold files only (local
    disks, object stores); an HDFS listing holds one folder, its subfolders included, so an entry
    is asked for its own listing, which a file there refuses. `known` files (the layouts') are not
    asked (files.walk would do this in the file layer; asked of the lead)."""
    found = []
    for path in files.match(files.join(root, folder, "**") if folder else files.join(root, "**")):
        name = relative(path, root)
        if _skipped(name, skip) or is_temporary(name.rpartition("/")[2]):
            continue
        if name in known:
            found.append(name)
            continue
        try:
            below = files.match(files.join(path, "**"))
        except BeamIOError:  # HDFS: a file
            below = None
        if below:  # a folder of a filesystem whose listings hold folders
            found.extend(run_files(root, known, skip, name))
        elif below is None or files.is_local(path) or files.size(path):
            found.append(name)
        # else an empty remote entry: an empty HDFS folder (or an empty object), nothing to clean
    return sorted(found)


# ---------------------------------------------------------------- which units a run has


@dataclass(frozen=True)
class RunDirs:
    """The stage folders of a run, relative to it (pipelines/end_to_end.py decides them)."""

    download: str = "download"
    score: str = "score"
    prune: str = "prune"


@dataclass(frozen=True)
class Unit:
    kind: str  # shard, part, rows, table, copy
    name: str  # a file relative to the run folder ("/"-separated); for shard/part, one of its files
    source: str  # the run folder read
    target: str  # the run folder written (the same one when cleaning in place)
    number: int = -1
    dirs: RunDirs = RunDirs()

    @property
    def marker(self) -> str:
        return self.name.replace("/", "__")

    @property
    def in_place(self) -> bool:
        return same_folder(self.source, self.target)

    def path(self, run: str) -> str:
        """The unit's file in `run` (its source or its target)."""
        return files.join(run, *self.name.split("/"))


def list_units(source: str, target: str, dirs: RunDirs, skip: set[str]) -> list[Unit]:
    """Every unit of the run in `source`. Relative paths in `skip`, and everything under them, are
    left alone (the index and the report, made again afterwards; the remove's own files); audits
    (`removed/` folders) are never filtered: they name removed rows on purpose."""
    units: list[Unit] = []
    known: set[str] = set()
    download = files.join(source, dirs.download)
    for number in sorted(finished_shards(download)):
        names = [relative(shard_file(download, number, suffix), source) for suffix in SHARD_FILES]
        known.update(names)
        units.append(Unit("shard", names[0], source, target, number, dirs))
    for part in list_parts(files.join(source, dirs.score)):
        names = [relative(path, source) for path in (part.img_emb, part.text_emb, part.metadata)]
        known.update(names)
        units.append(Unit("part", names[2], source, target, part.number, dirs))
    for name in (KEPT, DUPLICATES):
        path = output_path(files.join(source, dirs.prune), name)
        if files.exists(path):
            known.add(relative(path, source))
            units.append(Unit("rows", relative(path, source), source, target, dirs=dirs))
    for name in run_files(source, known, skip):
        if name in known:
            continue
        if name.endswith(".parquet") and REMOVED not in name.split("/"):  # audits keep naming rows
            units.append(Unit("table", name, source, target, dirs=dirs))
        elif not same_folder(source, target):
            units.append(Unit("copy", name, source, target, dirs=dirs))
    return units


# ---------------------------------------------------------------- running one unit


def apply_unit(unit: Unit, removed: frozenset, lists: Blocklists, work: str) -> dict[str, int]:
    """Rewrites one unit (or finishes a crashed rewrite of it); returns what it removed. `work` is
    the remove's progress folder in the target run (staging and done markers)."""
    done = files.join(work, "done", unit.marker + ".json")
    if files.exists(done):
        counter(STAGE, "units_already_done").inc()
        return {}
    staged = files.join(work, "staged", unit.marker)
    journal = files.join(staged, _MOVES)
    if not files.exists(journal):
        files.delete(staged)  # what an attempt that died before its journal left
        moves, counts = _BUILDERS[unit.kind](unit, removed, lists, staged)
        files.write_marker(journal, {"moves": moves, "counts": counts})  # from now on, the unit only moves
    plan = files.read_marker(journal)
    for name, final in plan["moves"]:  # in order: the file that marks a unit whole goes last
        path = files.join(staged, name)
        if files.exists(path):  # gone: renamed before a crash
            move(path, final)
    files.write_marker(done, {"kind": unit.kind, "counts": plan["counts"]})
    files.delete(staged)
    for name, value in plan["counts"].items():
        counter(STAGE, name).inc(value)
    counter(STAGE, f"units_{unit.kind}").inc()
    return plan["counts"]


def totals(work: str) -> dict[str, int]:
    """What every finished unit removed, summed over however many attempts it took (the done
    markers keep each unit's counts), as `remove:` counters."""
    found: dict[str, int] = {}
    for path in files.match(files.join(work, "done", "*.json")):
        marker = files.read_marker(path)
        if "kind" not in marker:  # not a unit's marker
            continue
        for key, value in {**marker["counts"], f"units_{marker['kind']}": 1}.items():
            found[f"{STAGE}:{key}"] = found.get(f"{STAGE}:{key}", 0) + value
    return dict(sorted(found.items()))


@functools.lru_cache(maxsize=2)
def _value_set(removed: frozenset) -> pa.Array:
    return pa.array(sorted(removed), pa.string())  # once per plan, not once per unit


def _kept(uids: pa.ChunkedArray | pa.Array, removed: frozenset) -> pa.Array:
    """True where a row stays."""
    return pc.invert(pc.fill_null(pc.is_in(uids, value_set=_value_set(removed)), False))


def _dropped(keep: pa.Array) -> int:
    return len(keep) - (pc.sum(pc.cast(keep, pa.int64())).as_py() or 0)


def _stage_of(unit: Unit) -> str:
    return unit.name.split("/", 1)[0]


def _copy_file(source: str, staged: str) -> None:
    with files.open_read(source) as f:
        files.write_atomic(staged, lambda out: shutil.copyfileobj(f, out, 1 << 20))


def _copy(unit: Unit, staged: str) -> list[list[str]]:
    _copy_file(unit.path(unit.source), files.join(staged, "file"))
    return [["file", unit.path(unit.target)]]


# ---------------------------------------------------------------- the units


def _table(unit: Unit, removed: frozenset, lists: Blocklists, staged: str):
    table = read_table(unit.path(unit.source))
    if UID in table.column_names:
        keep = _kept(table[UID], removed)
    elif set(ERROR_SCHEMA.names) <= set(table.column_names):  # an errors table: its rows name a URL, not a pair
        keep = pa.array([lists.match_url(url) is None for url in table["url"].to_pylist()], pa.bool_())
    else:
        keep = None
    dropped = 0 if keep is None else _dropped(keep)
    if not dropped:
        return ([] if unit.in_place else _copy(unit, staged)), {}
    write_table(files.join(staged, "file"), table.filter(keep))
    return [["file", unit.path(unit.target)]], {f"rows_removed_{_stage_of(unit)}": dropped}


def _tar_members(path: str):
    """(the member, its sample key, its raw bytes: header(s), data, padding) of every member of a
    tar, read in one pass (tarfile goes on from where each member's bytes end)."""
    with files.open_read(path) as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
        for member in tar:
            end = member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
            raw.seek(member.offset)
            yield member, member.name.rpartition("/")[2].split(".", 1)[0], raw.read(end - member.offset)


def _shard(unit: Unit, removed: frozenset, lists: Blocklists, staged: str):
    source, target = (files.join(run, unit.dirs.download) for run in (unit.source, unit.target))
    table = read_shard_table(source, unit.number)
    keep = _kept(table[UID], removed) if UID in table.column_names else pa.array([True] * table.num_rows)
    gone = table.filter(pc.invert(keep))
    moves = [[f"shard{suffix}", shard_file(target, unit.number, suffix)] for suffix in SHARD_FILES]  # stats last
    if gone.num_rows == 0:
        if unit.in_place:
            return [], {}
        for suffix in SHARD_FILES:
            _copy_file(shard_file(source, unit.number, suffix), files.join(staged, f"shard{suffix}"))
        return moves, {}
    gone_keys = set(gone[KEY].to_pylist())
    written = {"size": 0, "image_bytes": 0}

    def write_tar(out) -> None:
        for member, key, raw in _tar_members(shard_file(source, unit.number, TAR)):
            if key in gone_keys:
                continue
            out.write(raw)
            written["size"] += len(raw)
            written["image_bytes"] += member.size if member.name.rpartition(".")[2] not in ("txt", "json") else 0
        out.write(tar_end(written["size"]))

    files.write_atomic(files.join(staged, f"shard{TAR}"), write_tar)
    kept = table.filter(keep)
    write_table(files.join(staged, f"shard{PARQUET}"), kept)
    stats = read_stats(source, unit.number)
    statuses = pc.value_counts(kept[STATUS]).to_pylist() if kept.num_rows else []
    counts = dict(sorted((s["values"], s["counts"]) for s in statuses))
    successes_gone = sum(1 for s in gone[STATUS].to_pylist() if s == SUCCESS)
    successes = counts.get(SUCCESS, 0)
    size = written["size"]
    stats.update(count=kept.num_rows, successes=successes, failures=kept.num_rows - successes, status_counts=counts,
                 image_bytes=written["image_bytes"], tar_bytes=size + len(tar_end(size)),
                 removed_rows=stats.get("removed_rows", 0) + gone.num_rows)
    files.write_marker(files.join(staged, f"shard{STATS}"), stats)
    return moves, {"rows_removed_download": gone.num_rows, "samples_removed_download": successes_gone}


def _part(unit: Unit, removed: frozenset, lists: Blocklists, staged: str):
    source = part_paths(files.join(unit.source, unit.dirs.score), unit.number)
    target = part_paths(files.join(unit.target, unit.dirs.score), unit.number)
    new = part_paths(staged, unit.number)  # the part, laid out in the staging folder
    metadata = read_part_metadata(source)
    keep = _kept(metadata[UID], removed)
    dropped = _dropped(keep)
    if not dropped and unit.in_place:
        return [], {}
    metadata = metadata.filter(keep)
    if not unit.in_place and SHARD in metadata.column_names:
        metadata = _moved_shards(metadata, unit)
    if dropped:
        mask = np.asarray(keep.to_numpy(zero_copy_only=False), dtype=bool)
        write_part(staged, unit.number, load_embeddings(source.img_emb)[mask], load_embeddings(source.text_emb)[mask],
                   metadata)
    else:  # a copy, nothing removed: the arrays as they are
        _copy_file(source.img_emb, new.img_emb)
        _copy_file(source.text_emb, new.text_emb)
        write_table(new.metadata, metadata)
    moves = [[relative(new.img_emb, staged), target.img_emb], [relative(new.text_emb, staged), target.text_emb],
             [relative(new.metadata, staged), target.metadata]]  # metadata last: the part exists only once it does
    return moves, ({"rows_removed_score": dropped} if dropped else {})


def _moved_shards(metadata: pa.Table, unit: Unit) -> pa.Table:
    """The `shard` column of a cleaned copy points at the copy's download tars."""
    old, new = (normalised(files.join(run, unit.dirs.download)) + "/" for run in (unit.source, unit.target))
    paths = [new + path[len(old):] if path and path.startswith(old) else path
             for path in metadata[SHARD].to_pylist()]
    at = metadata.column_names.index(SHARD)
    return metadata.set_column(at, metadata.schema.field(SHARD), pa.array(paths, pa.string()))


def new_rows(score_dir: str, parts: set[int], removed: frozenset) -> dict[int, dict[str, int]]:
    """part -> uid -> its row once the removed rows are gone. The same whether the part has been
    rewritten yet or not (the removed uids are filtered out either way)."""
    positions = {}
    for number in sorted(parts):
        part = part_paths(score_dir, number)
        uids = read_part_metadata(part, [UID]).column(UID).to_pylist() if files.exists(part.metadata) else []
        positions[number] = {uid: row for row, uid in enumerate(u for u in uids if u not in removed)}
    return positions


def _rows(unit: Unit, removed: frozenset, lists: Blocklists, staged: str):
    original = table = read_table(unit.path(unit.source))
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
    positions = new_rows(files.join(unit.source, unit.dirs.score), parts, removed)
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
    write_table(files.join(staged, "file"), table)
    return [["file", unit.path(unit.target)]], ({"rows_removed_prune": dropped} if dropped else {})


_BUILDERS = {"table": _table, "shard": _shard, "part": _part, "rows": _rows,
             "copy": lambda unit, removed, lists, staged: (_copy(unit, staged), {})}
