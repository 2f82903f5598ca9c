"""The run report: what happened at every step of a run, as `report.json` and an HTML page.

`crawl2clip report DIR` (also written at the end of every `crawl2clip run`) reads only the files
the stages wrote under DIR (extract/, download/, score/, prune/ and each stage's metrics.json),
so it works for a combined run, for stages run one by one, and for a run still in progress.
The page (`report.html`) and its PNG plots sit in DIR and open from disk with no network. DIR may
be on any Beam filesystem: every file goes through transforms/files.py.
"""

import base64
import html
import json
import os
import tarfile
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crawl2clip.pipelines.options import RUN_STAGES
from crawl2clip.pipelines.run import METRICS_FILE
from crawl2clip.transforms import files
from crawl2clip.transforms.consent.audit import REMOVED
from crawl2clip.transforms.download.shards import PARQUET, finished_files
from crawl2clip.transforms.embeddings import list_parts
from crawl2clip.transforms.prune.outputs import KEPT, SUMMARY
from crawl2clip.transforms.score.settings import SCORING_JSON
from crawl2clip.transforms.score.write import DROPPED

STAGES = RUN_STAGES
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
PLOTS = "report-plots"
SAMPLE_COUNT = 24
UNSAFE_THRESHOLD = 0.5  # LAION's published cut-offs: the share of kept pairs over them is shown
WATERMARK_THRESHOLD = 0.8
# content columns: LAION's cut-off (None: none) and the drop reason a --max-COLUMN filter records
TAG_CUTOFFS = {"punsafe": UNSAFE_THRESHOLD, "pwatermark": WATERMARK_THRESHOLD, "aesthetic": None, "ptoxic": None}
FILTER_REASONS = (("unsafe", "punsafe"), ("watermark", "pwatermark"), ("toxic", "ptoxic"))
NOT_COMPUTED = "not computed"


def _read_tables(paths: list[str], columns: list[str] | None = None) -> pa.Table | None:
    tables = []
    for path in paths:
        with files.open_read(path) as f:
            parquet = pq.ParquetFile(f)
            wanted = None if columns is None else [c for c in columns if c in parquet.schema_arrow.names]
            tables.append(parquet.read(columns=wanted))
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")


def _read_parquets(pattern: str, columns: list[str] | None = None) -> pa.Table | None:
    return _read_tables(files.match(pattern), columns)


def _read_scored(run_dir: str, columns: list[str]) -> pa.Table | None:
    """The finished scoring parts' metadata (the embeddings layout's parts, in order)."""
    return _read_tables([part.metadata for part in list_parts(files.join(run_dir, "score"))], columns)


def _read_json(path: str) -> dict[str, Any] | None:
    return files.read_marker(path) if files.exists(path) else None


def _value_counts(table: pa.Table | None, column: str) -> dict[str, int]:
    if table is None or column not in table.column_names:
        return {}
    counts = Counter(str(v) for v in table.column(column).to_pylist())
    return dict(counts.most_common())


def _stage_metrics(run_dir: str, stage: str) -> dict[str, Any] | None:
    return _read_json(files.join(run_dir, stage, METRICS_FILE))


def _rows(*tables: pa.Table | None) -> int | None:
    """Rows of the tables that exist; None when none does (the stage has not run)."""
    present = [table.num_rows for table in tables if table is not None]
    return sum(present) if present else None


def _numbers(table: pa.Table | None, column: str) -> list[float]:
    if table is None or column not in table.column_names:
        return []
    return [float(v) for v in table.column(column).to_pylist() if v is not None]


def _scoring(run_dir: str) -> dict[str, Any]:
    """The score stage's scoring.json (towers, tag sources, thresholds), or {} before it ran."""
    return _read_json(files.join(run_dir, "score", SCORING_JSON)) or {}


def _funnel(pairs: pa.Table | None, downloaded: int | None, kept: pa.Table | None, dropped: pa.Table | None,
            pruned: pa.Table | None, scoring: dict) -> list[tuple[str, int]]:
    """The steps that remove pairs, in pipeline order, only those that ran: each counts what is
    left after it, so the counts never go up. Content filters appear only when applied."""
    funnel = []
    if pairs is not None:
        funnel.append(("candidates", pairs.num_rows))
    if downloaded is not None:
        funnel.append(("downloaded", downloaded))
    if kept is not None:
        reasons = _value_counts(dropped, "drop_reason")
        left = kept.num_rows + sum(reasons.values()) - reasons.get("low_similarity", 0)
        funnel.append(("CLIP-kept", left))
        limits = scoring.get("thresholds", {}).get("max_tags", {})
        for reason, column in FILTER_REASONS:
            if column in limits:
                left -= reasons.get(reason, 0)
                funnel.append((f"{column} ≤ {limits[column]}", left))
    if pruned is not None:
        funnel.append(("kept by pruning", pruned.num_rows))
    return funnel


def _source_label(source: dict | None) -> str:
    if not source or source.get("source") == NOT_COMPUTED:
        return NOT_COMPUTED
    if source.get("source") == "zero-shot":
        return "zero-shot prompts"
    if source.get("path"):
        kind = source.get("architecture") or source.get("format") or source.get("name") or source.get("source")
        return f"{kind}: {os.path.basename(str(source['path']).rstrip('/'))}"
    return str(source.get("source"))


def _tags(kept: pa.Table | None, scoring: dict) -> list[dict[str, Any]]:
    """Per content column: what computed it (or "not computed") and, among the kept pairs, the
    share over LAION's cut-off."""
    sources = dict(scoring.get("tags", {}))
    sources.setdefault("ptoxic", scoring.get("toxicity"))
    rows = []
    for column, cutoff in TAG_CUTOFFS.items():
        values = _numbers(kept, column)
        label = _source_label(sources.get(column)) if column in sources else (NOT_COMPUTED if not values else "unknown")
        computed = label != NOT_COMPUTED and bool(values)
        rows.append({"column": column, "from": label, "computed": computed,
                     "cutoff": cutoff, "mean": round(sum(values) / len(values), 4) if computed else None,
                     "over_cutoff": sum(v > cutoff for v in values) if computed and cutoff is not None else None,
                     "rows": len(values)})
    return rows


def _notes(run_dir: str, funnel: list[tuple[str, int]]) -> list[str]:
    """Plain sentences for what a reader could take for a failure: an empty step, an empty prune."""
    notes = []
    empty = next((step for step, count in funnel if count == 0 and not step.startswith("split ")), None)
    if empty is not None:
        notes.append(f"No pair reached the step '{empty}': the later steps had nothing to work on.")
    note = (_read_json(files.join(run_dir, "prune", SUMMARY)) or {}).get("note")
    if note:
        notes.append(f"Prune: {note}.")
    return notes


def _removals(run_dir: str) -> dict[str, int]:
    """`<stage>:removed_<list kind>`: the audit rows of removal lists (each stage's `removed/`, and
    `removed/` of `crawl2clip remove`)."""
    counts = Counter()
    for folder in (*(files.join(run_dir, stage) for stage in STAGES), run_dir):
        table = _read_parquets(files.join(folder, REMOVED, "*.parquet"), ["stage", "reason"])
        if table is not None:
            counts.update(f"{s}:removed_{r.replace('-', '_')}" for s, r in zip(table.column("stage").to_pylist(),
                                                                               table.column("reason").to_pylist()))
    return dict(sorted(counts.items()))


def collect(run_dir: str) -> dict[str, Any]:
    """Everything the report shows, read from the stages' files under `run_dir`."""
    pairs = _read_parquets(files.join(run_dir, "extract", "pairs", "*.parquet"), ["LANGUAGE", "split"])
    downloads = _read_tables(finished_files(files.join(run_dir, "download"), PARQUET),
                             ["status", "original_width", "original_height"])
    kept = _read_scored(run_dir, ["similarity", "punsafe", "pwatermark", "aesthetic", "ptoxic", "LANGUAGE", "split"])
    dropped = _read_parquets(files.join(run_dir, "score", DROPPED, "*.parquet"), ["similarity", "drop_reason"])
    pruned = _read_parquets(files.join(run_dir, "prune", KEPT))

    errors = Counter()
    for stage in STAGES:
        table = _read_parquets(files.join(run_dir, stage, "errors", "*.parquet"), ["stage", "reason"])
        if table is not None:
            errors.update(f"{s}:{r}" for s, r in zip(table.column("stage").to_pylist(),
                                                      table.column("reason").to_pylist()))
    statuses = _value_counts(downloads, "status")
    errors.update({f"download:{status}": n for status, n in statuses.items() if status != "success"})
    errors.update({f"score:{reason}": n for reason, n in _value_counts(dropped, "drop_reason").items()})
    removals = _removals(run_dir)

    scoring = _scoring(run_dir)
    funnel = _funnel(pairs, statuses.get("success", 0) if downloads is not None else None, kept, dropped, pruned,
                     scoring)
    splits = _value_counts(pairs, "split")

    stages = {}
    for stage in STAGES:
        metrics = _stage_metrics(run_dir, stage)
        if metrics is not None:
            stages[stage] = {"seconds": metrics.get("seconds"), "runner": metrics.get("runner"),
                             "counters": metrics.get("counters", {})}
    rows_out = {"extract": _rows(pairs), "download": _rows(downloads), "score": _rows(kept, dropped),
                "prune": _rows(pruned)}
    for stage, info in stages.items():
        rows = rows_out.get(stage)
        info["rows"] = rows
        info["rows_per_second"] = round(rows / info["seconds"], 2) if rows and info.get("seconds") else None

    success = downloads.filter(pc.equal(downloads.column("status"), "success")) if downloads is not None else None
    return {
        "run_dir": os.path.abspath(run_dir) if files.is_local(run_dir) else run_dir,
        "funnel": [{"step": step, "count": count} for step, count in funnel],
        "notes": _notes(run_dir, funnel),
        "splits": {split: splits.get(split, 0) for split in ("en", "multi", "nolang")} if pairs is not None else {},
        "languages": dict(list(_value_counts(pairs, "LANGUAGE").items())[:20]),
        "tags": _tags(kept, scoring),
        "towers": {key: scoring[key] for key in ("image_tower", "text_towers") if key in scoring},
        "download_status": statuses,
        "top_errors": [{"reason": reason, "count": n} for reason, n in errors.most_common(15)],
        "removals": removals,
        "stages": stages,
        "distributions": {
            "similarity_kept": _numbers(kept, "similarity"),
            "similarity_dropped": _numbers(dropped, "similarity"),
            "punsafe": _numbers(kept, "punsafe"),
            "pwatermark": _numbers(kept, "pwatermark"),
            "aesthetic": _numbers(kept, "aesthetic"),
            "original_width": _numbers(success, "original_width"),
            "original_height": _numbers(success, "original_height"),
        },
    }


def _plot_histograms(report: dict, out_dir: str) -> dict[str, str]:
    """PNG files (matplotlib, no display) for the report's distributions; name -> relative path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dist = report["distributions"]
    plots = {}

    def save(fig, name: str) -> None:
        path = f"{PLOTS}/{name}.png"  # relative to the page
        fig.tight_layout()
        files.write_atomic(files.join(out_dir, PLOTS, f"{name}.png"), lambda out: fig.savefig(out, format="png", dpi=90))
        plt.close(fig)
        plots[name] = path

    if report["funnel"]:
        fig, ax = plt.subplots(figsize=(7, 3.2))
        steps = [f["step"] for f in report["funnel"]][::-1]
        ax.barh(steps, [f["count"] for f in report["funnel"]][::-1], color="#3b7dd8")
        ax.set_xlabel("pairs")
        ax.set_title("Funnel")
        save(fig, "funnel")
    if dist["similarity_kept"] or dist["similarity_dropped"]:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.hist([dist["similarity_kept"], dist["similarity_dropped"]], bins=30, stacked=True,
                label=["kept", "dropped"], color=["#2a9d55", "#d94b3b"])
        ax.set_xlabel("CLIP cosine similarity")
        ax.legend()
        save(fig, "similarity")
    for name, label in (("punsafe", "punsafe (kept pairs)"), ("pwatermark", "pwatermark (kept pairs)"),
                        ("aesthetic", "aesthetic score (kept pairs)")):
        if dist[name]:
            fig, ax = plt.subplots(figsize=(6, 3))
            ax.hist(dist[name], bins=20, range=None if name == "aesthetic" else (0, 1), color="#8a5cc2")
            ax.set_xlabel(label)
            save(fig, name)
    if dist["original_width"]:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.hist([dist["original_width"], dist["original_height"]], bins=30, label=["width", "height"])
        ax.set_xlabel("original image size (pixels)")
        ax.legend()
        save(fig, "image_sizes")
    if report["languages"]:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.bar(list(report["languages"]), list(report["languages"].values()), color="#e0a030")
        ax.set_ylabel("pairs")
        ax.set_title("Caption languages (candidates)")
        ax.tick_params(axis="x", rotation=60)
        save(fig, "languages")
    return plots


def _samples(run_dir: str, count: int = SAMPLE_COUNT) -> list[dict[str, Any]]:
    """A few kept pairs (or downloaded ones when nothing was scored) with their thumbnails inlined."""
    meta = _read_scored(run_dir, ["key", "shard", "TEXT", "similarity"])
    if meta is None or meta.num_rows == 0:
        return []
    rows = meta.slice(0, count).to_pylist()
    wanted: dict[str, list[dict]] = {}
    for row in rows:
        wanted.setdefault(row["shard"], []).append(row)
    samples = []
    for shard, shard_rows in wanted.items():
        if not shard or not files.exists(shard):
            continue
        keys = {row["key"]: row for row in shard_rows}
        with files.open_read(shard) as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
            for member in tar:
                stem, _, ext = member.name.rpartition(".")
                if stem in keys and ext in ("jpg", "jpeg", "webp", "png"):
                    data = tar.extractfile(member).read()
                    mime = "image/jpeg" if ext in ("jpg", "jpeg") else f"image/{ext}"
                    samples.append({**keys[stem], "image": f"data:{mime};base64,{base64.b64encode(data).decode()}"})
    return samples


def _tag_row(tag: dict) -> str:
    e = html.escape
    over = "–" if tag["over_cutoff"] is None else f"{tag['over_cutoff']:,} of {tag['rows']:,} (&gt; {tag['cutoff']})"
    mean = "–" if tag["mean"] is None else f"{tag['mean']:.3f}"
    return (f"<tr><td>{e(tag['column'])}</td><td>{e(tag['from'])}</td><td class=n>{mean}</td>"
            f"<td class=n>{over}</td></tr>")


def _html_page(report: dict, plots: dict[str, str], samples: list[dict]) -> str:
    e = html.escape
    funnel_rows = "".join(f"<tr><td>{e(f['step'])}</td><td class=n>{f['count']:,}</td></tr>" for f in report["funnel"])
    stage_rows = "".join(
        f"<tr><td>{e(name)}</td><td class=n>{info.get('rows') if info.get('rows') is not None else '–'}</td>"
        f"<td class=n>{info.get('seconds') or '–'}</td><td class=n>{info.get('rows_per_second') or '–'}</td></tr>"
        for name, info in report["stages"].items())
    split_rows = "".join(f"<tr><td>{e(split)}</td><td class=n>{n:,}</td></tr>" for split, n in report["splits"].items())
    tag_rows = "".join(_tag_row(t) for t in report["tags"])
    towers = report.get("towers", {})
    tower_text = "; ".join(
        ([f"every image: {towers['image_tower'].get('model')}"] if "image_tower" in towers else [])
        + [f"{route} captions: {t.get('model') or t.get('source')} ({t.get('kind')})"
           for route, t in towers.get("text_towers", {}).items()])
    error_rows = "".join(f"<tr><td>{e(x['reason'])}</td><td class=n>{x['count']:,}</td></tr>"
                         for x in report["top_errors"]) or "<tr><td colspan=2>none</td></tr>"
    removal_rows = "".join(f"<tr><td>{e(name)}</td><td class=n>{n:,}</td></tr>"
                           for name, n in report.get("removals", {}).items()) or "<tr><td colspan=2>none</td></tr>"
    notes = "".join(f"<p class=note>{e(note)}</p>" for note in report.get("notes", []))
    figures = "".join(f"<figure><img src='{e(path)}' alt='{e(name)}'><figcaption>{e(name)}</figcaption></figure>"
                      for name, path in plots.items())
    grid = "".join(
        f"<div class=card><img src='{s['image']}' alt=''><p>{e(str(s['TEXT']))}</p>"
        f"<p class=score>similarity {s['similarity']:.3f}</p></div>" for s in samples)
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>crawl2clip run report</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}}
table{{border-collapse:collapse;margin:0 2em 1em 0;display:inline-table;vertical-align:top}}
td,th{{border-bottom:1px solid #ddd;padding:.25em .8em;text-align:left}} .n{{text-align:right}}
figure{{display:inline-block;margin:0 1em 1em 0}} figure img{{max-width:520px}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:12px}}
.card{{border:1px solid #ddd;padding:6px;font-size:.85em}} .card img{{width:100%;height:140px;object-fit:cover}}
.score{{color:#666}} .note{{background:#fff4d6;padding:.4em .8em}}
</style></head><body>
<h1>crawl2clip run report</h1>
<p>{e(report['run_dir'])}</p>
{notes}
<h2>Funnel</h2><table id=funnel><tr><th>step</th><th>pairs</th></tr>{funnel_rows}</table>
<table id=splits><tr><th>candidates by split</th><th>pairs</th></tr>{split_rows}</table>
<table id=stages><tr><th>stage</th><th>rows out</th><th>seconds</th><th>rows/s</th></tr>{stage_rows}</table>
<table id=errors><tr><th>top error reasons</th><th>count</th></tr>{error_rows}</table>
<table id=removals><tr><th>removed by lists</th><th>pairs</th></tr>{removal_rows}</table>
<h2>Distributions</h2>
<p id=towers>{e(tower_text)}</p>
<table id=tags><tr><th>content tag</th><th>computed by</th><th>mean (kept)</th><th>kept pairs over LAION's cut-off</th></tr>{tag_rows}</table>
{figures}
<h2>Samples</h2><div class=grid id=samples>{grid}</div>
</body></html>
"""


def write_report(run_dir: str) -> str:
    """Writes DIR/report.json, DIR/report.html and DIR/report-plots/*.png; returns the page's path."""
    report = collect(run_dir)
    plots = _plot_histograms(report, run_dir)
    samples = _samples(run_dir)
    summary = {**report, "plots": plots, "samples": len(samples)}
    # The raw distributions are for the plots; the JSON keeps their sizes and means instead.
    summary["distributions"] = {name: {"count": len(values), "mean": (sum(values) / len(values)) if values else None}
                                for name, values in report["distributions"].items()}
    files.write_atomic(files.join(run_dir, REPORT_JSON), json.dumps(summary, indent=2).encode())
    return files.write_atomic(files.join(run_dir, REPORT_HTML), _html_page(report, plots, samples).encode())

