"""What a prune run writes into its output folder.

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
"""

import io
import json
import os
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from crawl2clip.transforms.prune.settings import PruneSettings
from crawl2clip.transforms.prune.steps import ClusterTable
from crawl2clip.transforms.prune.vectors import Plan
from crawl2clip.transforms.schema import UID

KEPT = "kept.parquet"
DUPLICATES = "duplicates.parquet"
CLUSTERS = "clusters.parquet"
PLOT = "complexity_vs_keep_rate.png"
SUMMARY = "prune.json"
ID_COLUMNS = (UID, "hash", "key")


def _write_table(path: str, table: pa.Table) -> None:
    with FileSystems.create(path) as out:
        pq.write_table(table, out)


def row_ids(plan: Plan, indices: np.ndarray) -> pa.Table:
    """part, row and the id columns of the given global indices (sorted), read part by part."""
    indices = np.sort(np.asarray(indices, dtype=np.int64))
    where, rows = plan.locate(indices)
    tables = []
    for position in np.unique(where):
        part = plan.parts[position]
        names = pq.read_schema(part.metadata).names
        chosen = rows[where == position]
        meta = pq.read_table(part.metadata, columns=[c for c in ID_COLUMNS if c in names]).take(chosen)
        columns = {"part": pa.array(np.full(len(chosen), part.number), pa.int64()),
                   "row": pa.array(chosen, pa.int64())}
        for name in ID_COLUMNS:
            if name in meta.column_names:
                columns[name] = meta[name]
        tables.append(pa.table(columns))
    if not tables:
        return pa.table({"part": pa.array([], pa.int64()), "row": pa.array([], pa.int64())})
    return pa.concat_tables(tables, promote_options="default")


def write_kept(output_dir: str, plan: Plan, kept: tuple[np.ndarray, np.ndarray, np.ndarray]) -> int:
    indices, clusters, distances = kept
    order = np.argsort(indices)
    ids = row_ids(plan, indices[order])
    table = ids.append_column("cluster", pa.array(clusters[order], pa.int32())) \
               .append_column("distance", pa.array(distances[order], pa.float32()))
    _write_table(os.path.join(output_dir, KEPT), table)
    return table.num_rows


def write_duplicates(output_dir: str, plan: Plan, duplicates: tuple[np.ndarray, np.ndarray, np.ndarray]) -> int:
    removed, originals, similarity = duplicates
    order = np.argsort(removed)
    removed, originals, similarity = removed[order], originals[order], similarity[order]
    table = row_ids(plan, removed)
    unique, inverse = np.unique(originals, return_inverse=True)
    of = row_ids(plan, unique).take(pa.array(inverse))
    for name in of.column_names:
        if name in (UID, "part", "row"):
            table = table.append_column(f"duplicate_of_{name}", of[name])
    table = table.append_column("similarity", pa.array(similarity, pa.float32()))
    _write_table(os.path.join(output_dir, DUPLICATES), table)
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


def write_clusters(output_dir: str, table: ClusterTable, settings: PruneSettings, dedup_clusters: int) -> None:
    _write_table(os.path.join(output_dir, CLUSTERS), table.to_arrow())
    with FileSystems.create(os.path.join(output_dir, PLOT)) as out:
        out.write(complexity_plot(table, settings))
    summary = {
        "settings": asdict(settings),
        "dedup_clusters": min(dedup_clusters, table.valid_rows),  # k-means fits at most one per row
        "clusters": len(table.size),
        "valid_rows": table.valid_rows,
        "duplicates_removed": table.valid_rows - int(table.size.sum()),
        "after_dedup": int(table.size.sum()),
        "target": table.target,
        "kept": int(table.quota.sum()),
    }
    with FileSystems.create(os.path.join(output_dir, SUMMARY)) as out:
        out.write(json.dumps(summary, indent=2).encode())
