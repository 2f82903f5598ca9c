"""What a prune run writes into its output folder, local or on any Beam filesystem (every file
goes through transforms/files.py, committed whole).

    kept.parquet                   the kept rows: uid, hash, key (those the metadata has), part (N),
                                   row (in the part), cluster (DBP), distance (cosine, to its centroid);
                                   in input order
    duplicates.parquet             rows SemDeDup removed: their ids, part, row, and duplicate_of_uid /
                                   duplicate_of_part / duplicate_of_row / similarity of the kept row
                                   they duplicate (the most similar earlier kept one)
    clusters.parquet               per DBP cluster: size, d_intra, d_inter, complexity, probability,
                                   quota, kept, keep_rate
    complexity_vs_keep_rate.png    one dot per cluster
    prune.json                     the settings, the cluster counts used, and the totals
    errors/errors-*.parquet        rows and parts that could not be used (transforms/errors.py)

These names are defined here only: readers (prune-apply, remove, the report, compare) take them
from here.
"""

import io
import json
from collections.abc import Iterable
from dataclasses import asdict

import numpy as np
import pyarrow as pa
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from crawl2clip.transforms import files
from crawl2clip.transforms.errors import ERRORS_FOLDER
from crawl2clip.transforms.prune.settings import PruneSettings
from crawl2clip.transforms.prune.steps import Arrays, ClusterTable
from crawl2clip.transforms.tables import column_names, read_table, write_table
from crawl2clip.transforms.prune.vectors import Plan
from crawl2clip.transforms.schema import ERROR_SCHEMA, UID

KEPT = "kept.parquet"
DUPLICATES = "duplicates.parquet"
CLUSTERS = "clusters.parquet"
PLOT = "complexity_vs_keep_rate.png"
SUMMARY = "prune.json"
ERRORS_FILE = "errors-00000-of-00001.parquet"  # the one part of a run outside Beam, named as Beam names it
ID_COLUMNS = (UID, "hash", "key")
OUTPUT_FILES = (KEPT, DUPLICATES, CLUSTERS, PLOT, SUMMARY)  # beside errors/

_KEPT_SCHEMA = pa.schema([("part", pa.int64()), ("row", pa.int64()), ("uid", pa.string()), ("hash", pa.int64()),
                          ("key", pa.string()), ("cluster", pa.int32()), ("distance", pa.float32())])
_DUPLICATES_SCHEMA = pa.schema([*list(_KEPT_SCHEMA)[:5], ("duplicate_of_uid", pa.string()),
                                ("duplicate_of_part", pa.int64()), ("duplicate_of_row", pa.int64()),
                                ("similarity", pa.float32())])


def output_path(output_dir: str, name: str) -> str:
    """One of the files above (`KEPT`, `SUMMARY`, ...) in a prune's output folder."""
    return files.join(output_dir, name)


def error_files(output_dir: str) -> list[str]:
    """The error parts of a prune's output (a Beam run writes several, a run outside Beam one)."""
    return files.match(files.join(output_dir, ERRORS_FOLDER, "*.parquet"))


def read_summary(output_dir: str) -> dict:
    return files.read_marker(output_path(output_dir, SUMMARY))


def _joined(arrays: Iterable[Arrays]) -> Arrays:
    """Triples of arrays (indices, and two columns) joined column by column."""
    arrays = list(arrays)
    if not arrays:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    return tuple(np.concatenate([a[i] for a in arrays]) for i in range(3))


def row_ids(plan: Plan, indices: np.ndarray) -> pa.Table:
    """part, row and the id columns of the given global indices (sorted), read part by part."""
    indices = np.sort(np.asarray(indices, dtype=np.int64))
    where, rows = plan.locate(indices)
    tables = []
    for position in np.unique(where):
        part = plan.parts[position]
        names = column_names(part.metadata)
        chosen = rows[where == position]
        meta = read_table(part.metadata, columns=[c for c in ID_COLUMNS if c in names]).take(chosen)
        columns = {"part": pa.array(np.full(len(chosen), part.number), pa.int64()),
                   "row": pa.array(chosen, pa.int64())}
        for name in ID_COLUMNS:
            if name in meta.column_names:
                columns[name] = meta[name]
        tables.append(pa.table(columns))
    if not tables:
        return pa.table({"part": pa.array([], pa.int64()), "row": pa.array([], pa.int64())})
    return pa.concat_tables(tables, promote_options="default")


def write_kept(output_dir: str, plan: Plan, kept: Iterable[Arrays]) -> int:
    """kept: (indices, cluster, distance) arrays, one triple per cluster, in any order."""
    indices, clusters, distances = _joined(kept)
    order = np.argsort(indices)
    ids = row_ids(plan, indices[order])
    table = ids.append_column("cluster", pa.array(clusters[order], pa.int32())) \
               .append_column("distance", pa.array(distances[order], pa.float32()))
    write_table(output_path(output_dir, KEPT), table)
    return table.num_rows


def write_duplicates(output_dir: str, plan: Plan, duplicates: Iterable[Arrays]) -> int:
    """duplicates: (removed, the kept row each duplicates, similarity) arrays, in any order."""
    removed, originals, similarity = _joined(duplicates)
    order = np.argsort(removed)
    removed, originals, similarity = removed[order], originals[order], similarity[order]
    table = row_ids(plan, removed)
    unique, inverse = np.unique(originals, return_inverse=True)
    of = row_ids(plan, unique).take(pa.array(inverse))
    for name in of.column_names:
        if name in (UID, "part", "row"):
            table = table.append_column(f"duplicate_of_{name}", of[name])
    table = table.append_column("similarity", pa.array(similarity, pa.float32()))
    write_table(output_path(output_dir, DUPLICATES), table)
    return table.num_rows


def complexity_plot(table: ClusterTable, settings: PruneSettings) -> bytes:
    """PNG: complexity (x) against keep rate (y), dot area by cluster size."""
    figure = Figure(figsize=(7, 5), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    present = table.size > 0
    rate = table.quota[present] / table.size[present]
    sizes = 8 + 120 * table.size[present] / max(1, table.size.max())
    axes.scatter(table.complexity[present], rate, s=sizes, alpha=0.6, edgecolors="none")
    axes.axhline(table.target / max(1, table.size.sum()), color="grey", linestyle="--", linewidth=1,
                 label="overall keep rate")
    axes.set_xlabel("cluster complexity  C = d_inter x d_intra")
    axes.set_ylabel("keep rate (kept / members after SemDeDup)")
    axes.set_title(f"DBP: {len(table.size)} clusters, tau = {settings.temperature}, "
                   f"kept {table.target:,} of {table.valid_rows:,}")
    axes.set_ylim(-0.02, 1.02)
    axes.legend(loc="lower right")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _write_summary(output_dir: str, summary: dict) -> None:
    files.write_atomic(output_path(output_dir, SUMMARY), json.dumps(summary, indent=2).encode())


def write_clusters(output_dir: str, table: ClusterTable, settings: PruneSettings, dedup_clusters: int) -> None:
    """clusters.parquet, the plot and prune.json (the totals)."""
    write_table(output_path(output_dir, CLUSTERS), table.to_arrow())
    files.write_atomic(output_path(output_dir, PLOT), complexity_plot(table, settings))
    _write_summary(output_dir, {
        "settings": asdict(settings),
        "dedup_clusters": min(dedup_clusters, table.valid_rows),  # k-means fits at most one per row
        "clusters": len(table.size),
        "valid_rows": table.valid_rows,
        "duplicates_removed": table.valid_rows - int(table.size.sum()),
        "after_dedup": int(table.size.sum()),
        "target": table.target,
        "kept": int(table.quota.sum()),
    })


def write_errors(output_dir: str, errors: list[dict]) -> None:
    """The error records of a run outside Beam, as the one part a Beam run would write."""
    write_table(files.join(output_dir, ERRORS_FOLDER, ERRORS_FILE), pa.Table.from_pylist(errors, schema=ERROR_SCHEMA))


def write_nothing_to_prune(output_dir: str, settings: PruneSettings, errors: list[dict]) -> dict:
    """The outputs of a prune over no usable row (every pair dropped before, or none downloaded):
    empty tables and a summary that says so; returns the totals, all zero."""
    write_table(output_path(output_dir, KEPT), _KEPT_SCHEMA.empty_table())
    write_table(output_path(output_dir, DUPLICATES), _DUPLICATES_SCHEMA.empty_table())
    empty = np.zeros(0)
    table = ClusterTable(empty.astype(np.int64), empty, empty, empty, empty, empty.astype(np.int64), 0, 0)
    write_table(output_path(output_dir, CLUSTERS), table.to_arrow())
    _write_summary(output_dir, {
        "settings": asdict(settings), "dedup_clusters": 0, "clusters": 0, "valid_rows": 0,
        "duplicates_removed": 0, "after_dedup": 0, "target": 0, "kept": 0,
        "note": "no usable row to prune: the scoring output holds no pair with a usable embedding"})
    write_errors(output_dir, errors)
    return {"valid_rows": 0, "after_dedup": 0, "kept": 0, "errors": len(errors)}
