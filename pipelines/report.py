"""The run report: what happened at every step of a run, as `report.json` and an HTML page.

`crawl2clip report DIR` (also written at the end of every `crawl2clip run`) reads only the files
the stages wrote under DIR (extract/, download/, score/, prune/ and each stage's metrics.json),
so it works for a combined run, for stages run one by one, and for a run still in progress.
The page (`report.html`) and its PNG plots sit in DIR and open from disk with no network.
"""

import base64
import glob
import html
import json
import os
import tarfile
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

STAGES = ("extract", "download", "score", "prune")
REPORT_JSON = "report.json"
REPORT_HTML = "report.html"
PLOTS = "report-plots"
SAMPLE_COUNT = 24
UNSAFE_THRESHOLD = 0.5  # LAION's published cut-offs, for the "safe and unwatermarked" step
WATERMARK_THRESHOLD = 0.8


def _read_parquets(pattern: str, columns: list[str] | None = None) -> pa.Table | None:
    paths = sorted(p for p in glob.glob(pattern) if not p.endswith(".tmp"))
    tables = []
    for path in paths:
        available = pq.read_schema(path).names
        wanted = None if columns is None else [c for c in columns if c in available]
        tables.append(pq.read_table(path, columns=wanted))
    if not tables:
        return None
    return pa.concat_tables(tables, promote_options="default")


def _value_counts(table: pa.Table | None, column: str) -> dict[str, int]:
    if table is None or column not in table.column_names:
        return {}
    counts = Counter(str(v) for v in table.column(column).to_pylist())
    return dict(counts.most_common())


def _stage_metrics(run_dir: str, stage: str) -> dict[str, Any] | None:
    path = os.path.join(run_dir, stage, "metrics.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _rows(*tables: pa.Table | None) -> int | None:
    """Rows of the tables that exist; None when none does (the stage has not run)."""
    present = [table.num_rows for table in tables if table is not None]
    return sum(present) if present else None


def _numbers(table: pa.Table | None, column: str) -> list[float]:
    if table is None or column not in table.column_names:
        return []
    return [float(v) for v in table.column(column).to_pylist() if v is not None]


def _content_sources(run_dir: str) -> dict[str, Any]:
    """Where punsafe/pwatermark/ptoxic came from (a head file or zero-shot prompts), as scored."""
    path = os.path.join(run_dir, "score", "scoring.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        scoring = json.load(f)
    return {"heads": scoring.get("heads", {}), "toxicity": scoring.get("toxicity")}


def collect(run_dir: str) -> dict[str, Any]:
    """Everything the report shows, read from the stages' files under `run_dir`."""
    pairs = _read_parquets(os.path.join(run_dir, "extract", "pairs", "*.parquet"), ["LANGUAGE", "split"])
    downloads = _read_parquets(os.path.join(run_dir, "download", "*.parquet"),
                               ["status", "original_width", "original_height"])
    kept = _read_parquets(os.path.join(run_dir, "score", "metadata", "*.parquet"),
                          ["similarity", "punsafe", "pwatermark", "LANGUAGE", "split"])
    dropped = _read_parquets(os.path.join(run_dir, "score", "dropped", "*.parquet"), ["similarity", "drop_reason"])
    pruned = _read_parquets(os.path.join(run_dir, "prune", "kept.parquet"))

    errors = Counter()
    for stage in STAGES:
        table = _read_parquets(os.path.join(run_dir, stage, "errors", "*.parquet"), ["stage", "reason"])
        if table is not None:
            errors.update(f"{s}:{r}" for s, r in zip(table.column("stage").to_pylist(),
                                                      table.column("reason").to_pylist()))
    statuses = _value_counts(downloads, "status")
    errors.update({f"download:{status}": n for status, n in statuses.items() if status != "success"})
    errors.update({f"score:{reason}": n for reason, n in _value_counts(dropped, "drop_reason").items()})

    funnel = []
    if pairs is not None:
        funnel.append(("candidates", pairs.num_rows))
        splits = _value_counts(pairs, "split")
        funnel += [(f"split {split}", splits.get(split, 0)) for split in ("en", "multi", "nolang")]
    if downloads is not None:
        funnel.append(("downloaded", statuses.get("success", 0)))
    if kept is not None:
        funnel.append(("CLIP-kept", kept.num_rows))
        if "punsafe" in kept.column_names and "pwatermark" in kept.column_names:
            safe = pc.and_(pc.less_equal(kept.column("punsafe"), UNSAFE_THRESHOLD),
                           pc.less_equal(kept.column("pwatermark"), WATERMARK_THRESHOLD))
            funnel.append(("safe and unwatermarked", int(pc.sum(pc.cast(safe, pa.int64())).as_py() or 0)))
    if pruned is not None:
        funnel.append(("kept by pruning", pruned.num_rows))

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
        "run_dir": os.path.abspath(run_dir),
        "funnel": [{"step": step, "count": count} for step, count in funnel],
        "languages": dict(list(_value_counts(pairs, "LANGUAGE").items())[:20]),
        "content_sources": _content_sources(run_dir),
        "download_status": statuses,
        "top_errors": [{"reason": reason, "count": n} for reason, n in errors.most_common(15)],
        "stages": stages,
        "distributions": {
            "similarity_kept": _numbers(kept, "similarity"),
            "similarity_dropped": _numbers(dropped, "similarity"),
            "punsafe": _numbers(kept, "punsafe"),
            "pwatermark": _numbers(kept, "pwatermark"),
            "original_width": _numbers(success, "original_width"),
            "original_height": _numbers(success, "original_height"),
        },
    }


def _plot_histograms(report: dict, out_dir: str) -> dict[str, str]:
    """PNG files (matplotlib, no display) for the report's distributions; name -> relative path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(os.path.join(out_dir, PLOTS), exist_ok=True)
    dist = report["distributions"]
    plots = {}

    def save(fig, name: str) -> None:
        path = os.path.join(PLOTS, f"{name}.png")
        fig.tight_layout()
        fig.savefig(os.path.join(out_dir, path), dpi=90)
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
    for name, label in (("punsafe", "punsafe (kept pairs)"), ("pwatermark", "pwatermark (kept pairs)")):
        if dist[name]:
            fig, ax = plt.subplots(figsize=(6, 3))
            ax.hist(dist[name], bins=20, range=(0, 1), color="#8a5cc2")
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
    meta = _read_parquets(os.path.join(run_dir, "score", "metadata", "*.parquet"),
                          ["key", "shard", "TEXT", "similarity"])
    if meta is None or meta.num_rows == 0:
        return []
    rows = meta.slice(0, count).to_pylist()
    wanted: dict[str, list[dict]] = {}
    for row in rows:
        wanted.setdefault(row["shard"], []).append(row)
    samples = []
    for shard, shard_rows in wanted.items():
        if not shard or not os.path.exists(shard):
            continue
        keys = {row["key"]: row for row in shard_rows}
        with tarfile.open(shard) as tar:
            for member in tar:
                stem, _, ext = member.name.rpartition(".")
                if stem in keys and ext in ("jpg", "jpeg", "webp", "png"):
                    data = tar.extractfile(member).read()
                    mime = "image/jpeg" if ext in ("jpg", "jpeg") else f"image/{ext}"
                    samples.append({**keys[stem], "image": f"data:{mime};base64,{base64.b64encode(data).decode()}"})
    return samples


def _html_page(report: dict, plots: dict[str, str], samples: list[dict]) -> str:
    e = html.escape
    funnel_rows = "".join(f"<tr><td>{e(f['step'])}</td><td class=n>{f['count']:,}</td></tr>" for f in report["funnel"])
    stage_rows = "".join(
        f"<tr><td>{e(name)}</td><td class=n>{info.get('rows') if info.get('rows') is not None else '–'}</td>"
        f"<td class=n>{info.get('seconds') or '–'}</td><td class=n>{info.get('rows_per_second') or '–'}</td></tr>"
        for name, info in report["stages"].items())
    error_rows = "".join(f"<tr><td>{e(x['reason'])}</td><td class=n>{x['count']:,}</td></tr>"
                         for x in report["top_errors"]) or "<tr><td colspan=2>none</td></tr>"
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
.score{{color:#666}}
</style></head><body>
<h1>crawl2clip run report</h1>
<p>{e(report['run_dir'])}</p>
<h2>Funnel</h2><table id=funnel><tr><th>step</th><th>pairs</th></tr>{funnel_rows}</table>
<table id=stages><tr><th>stage</th><th>rows out</th><th>seconds</th><th>rows/s</th></tr>{stage_rows}</table>
<table id=errors><tr><th>top error reasons</th><th>count</th></tr>{error_rows}</table>
<h2>Distributions</h2>
<p id=sources>Content scores from: <code>{e(json.dumps(report.get("content_sources", {})))}</code></p>
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
    with open(os.path.join(run_dir, REPORT_JSON), "w") as f:
        json.dump(summary, f, indent=2)
    page = os.path.join(run_dir, REPORT_HTML)
    with open(page, "w") as f:
        f.write(_html_page(report, plots, samples))
    return page

