"""Speed and peak memory of the whole prune (SemDeDup + k-means + quotas + selection) on one machine.

Synthetic 512-d CLIP-like image embeddings in the scoring stage's layout (float16 on disk, as
the layout stores them; all arithmetic is float32): 2,000 concepts of varied spread and 3% planted
near-duplicates. 1M rows are built once in .cache/bench/prune/ (about 2 GB, reused); the 100k and
300k sets are the first parts of it (links). Each size runs `crawl2clip prune
--prune-single-machine` with k = 500 in a fresh process, timed from outside (wall, imports
included) with the process's peak resident memory (ru_maxrss); the phases come from the run
itself. Targets: 1M rows in under 10 minutes and under 6 GB peak.

    .venv/bin/python bench/prune_speed.py                      # ~10 minutes; bench/results/prune_speed.json
    .venv/bin/python bench/prune_speed.py --sizes 100000       # one size
    .venv/bin/python bench/prune_speed.py --beam 100000        # also the Beam path (DirectRunner) at that size
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from crawl2clip.transforms.embeddings import IMG_EMB, METADATA, TEXT_EMB, list_parts, write_part  # noqa: E402

DATA = os.path.join(REPO, ".cache", "bench", "prune")
RESULTS = os.path.join(REPO, "bench", "results")
DIM = 512
PART_ROWS = 10_000
CONCEPTS = 2_000
DUPLICATE_SHARE = 0.03
TARGET_SECONDS = 600
TARGET_PEAK_GB = 6.0


def build(rows: int, seed: int = 0) -> str:
    """The full synthetic set (once); returns its folder."""
    folder = os.path.join(DATA, f"full-{rows}")
    if len(list_parts(folder)) == -(-rows // PART_ROWS):
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CONCEPTS, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spreads = np.exp(rng.uniform(np.log(0.015), np.log(0.06), CONCEPTS)).astype(np.float32)
    popularity = rng.dirichlet(np.full(CONCEPTS, 2.0))
    for part, start in enumerate(range(0, rows, PART_ROWS)):
        n = min(PART_ROWS, rows - start)
        labels = rng.choice(CONCEPTS, size=n, p=popularity)
        x = centres[labels] + spreads[labels, None] * rng.standard_normal((n, DIM), dtype=np.float32)
        copies = rng.random(n) < DUPLICATE_SHARE  # a near-copy of an earlier row of the part
        sources = (rng.random(n) * np.arange(n)).astype(int)
        x[copies] = x[sources[copies]] + 0.002 * rng.standard_normal((int(copies.sum()), DIM), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        meta = pa.table({"uid": [f"{start + i:032x}" for i in range(n)],
                         "key": [f"{part:05d}{i:04d}" for i in range(n)]})
        write_part(folder, part, x, x, meta)
    return folder


def subset(full: str, rows: int) -> str:
    """The first parts of the full set, as links."""
    folder = os.path.join(DATA, f"first-{rows}")
    parts = list_parts(full)[: -(-rows // PART_ROWS)]
    shutil.rmtree(folder, ignore_errors=True)
    for sub in (IMG_EMB, TEXT_EMB, METADATA):
        os.makedirs(os.path.join(folder, sub))
    for part in parts:
        for path, sub in ((part.img_emb, IMG_EMB), (part.text_emb, TEXT_EMB), (part.metadata, METADATA)):
            os.symlink(path, os.path.join(folder, sub, os.path.basename(path)))
    return folder


# Runs the command as its only child and prints that child's peak RSS (KiB): each run measured alone.
_MEASURE = ("import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
            "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def run(args: list[str]) -> dict:
    """Runs a command; wall seconds, its peak RSS and the load average around it."""
    load_before = os.getloadavg()
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _MEASURE, *args], capture_output=True, text=True, cwd=REPO)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    peak_kb = int(done.stdout.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    return {"seconds": round(seconds, 1),
            "peak_rss_gb": round(peak_kb / 2**20, 3),
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "stdout": done.stdout}


def phases(stdout: str) -> dict:
    out = {}
    for line in stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith(("seconds_", "valid_rows", "after_dedup", "kept")):
            out[parts[0]] = float(parts[1].replace(",", ""))
    return out


def plot(results: list[dict], path: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=110)
    FigureCanvasAgg(figure)
    rows = [r["rows"] for r in results]
    left, right = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    bottom = np.zeros(len(rows))
    for name in ("dedup_fit", "dedup_assign", "dedup", "dbp_fit", "dbp_assign", "quotas_select", "write"):
        values = np.array([r["phases"].get(f"seconds_{name}", 0.0) for r in results])
        left.bar([str(n) for n in rows], values, bottom=bottom, label=name)
        bottom += values
    left.plot([str(n) for n in rows], [r["seconds"] for r in results], "ko-", label="wall (with start-up)")
    left.axhline(TARGET_SECONDS, color="red", linestyle="--", label="target")
    left.set_ylabel("seconds")
    left.set_xlabel("rows (512-d)")
    left.legend(fontsize=7)
    left.set_title("prune --prune-single-machine, k = 500")
    right.plot(rows, [r["peak_rss_gb"] for r in results], "o-")
    right.axhline(TARGET_PEAK_GB, color="red", linestyle="--", label="target")
    right.set_xscale("log")
    right.set_ylabel("peak RSS (GB)")
    right.set_xlabel("rows")
    right.legend()
    figure.tight_layout()
    figure.savefig(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--beam", type=int, nargs="*", default=[], help="sizes to run the Beam path at too")
    parser.add_argument("--keep-fraction", type=float, default=0.3)
    args = parser.parse_args()
    full = build(max(args.sizes + args.beam))
    results = []
    common = ["--keep-fraction", str(args.keep_fraction), "--prune-clusters", "500"]
    for rows in sorted(args.sizes):
        folder = subset(full, rows)
        out = os.path.join(REPO, "bench", "results", "tmp", f"prune-{rows}")
        shutil.rmtree(out, ignore_errors=True)
        measured = run([sys.executable, "-m", "crawl2clip.pipelines.cli", "prune", "--input", folder,
                        "--output", out, *common, "--prune-single-machine"])
        summary = json.load(open(os.path.join(out, "prune.json")))
        result = {"rows": rows, "path": "single-machine", **{k: v for k, v in measured.items() if k != "stdout"},
                  "phases": phases(measured["stdout"]),
                  "summary": {k: v for k, v in summary.items() if k != "settings"}}
        results.append(result)
        print(json.dumps(result), flush=True)
    beam_results = []
    for rows in args.beam:
        folder = subset(full, rows)
        out = os.path.join(REPO, "bench", "results", "tmp", f"prune-beam-{rows}")
        shutil.rmtree(out, ignore_errors=True)
        measured = run([sys.executable, "-m", "crawl2clip.pipelines.cli", "prune", "--input", folder,
                        "--output", out, *common])
        single = os.path.join(REPO, "bench", "results", "tmp", f"prune-{rows}")
        same = {name: pq.read_table(os.path.join(out, name)).equals(pq.read_table(os.path.join(single, name)))
                for name in ("kept.parquet", "clusters.parquet", "duplicates.parquet")
                if os.path.exists(os.path.join(single, name))}
        beam_results.append({"rows": rows, "path": "beam DirectRunner", "same_as_single_machine": same,
                             **{k: v for k, v in measured.items() if k != "stdout"}})
        print(json.dumps(beam_results[-1]), flush=True)
    largest = max(results, key=lambda r: r["rows"])
    report = {
        "what": "crawl2clip prune --prune-single-machine (SemDeDup + DBP k=500), synthetic 512-d embeddings",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "data": {"dim": DIM, "concepts": CONCEPTS, "planted_duplicate_share": DUPLICATE_SHARE,
                 "stored_as": "float16 (the layout's dtype)", "part_rows": PART_ROWS},
        "settings": {"keep_fraction": args.keep_fraction, "clusters": 500},
        "results": results,
        "beam": beam_results,
        "targets": {"rows": largest["rows"], "seconds": TARGET_SECONDS, "peak_gb": TARGET_PEAK_GB,
                    "seconds_met": largest["seconds"] < TARGET_SECONDS,
                    "peak_met": largest["peak_rss_gb"] < TARGET_PEAK_GB},
    }
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "prune_speed.json"), "w") as f:
        json.dump(report, f, indent=2)
    plot(results, os.path.join(RESULTS, "prune_speed.png"))
    print(json.dumps(report["targets"]))


if __name__ == "__main__":
    main()
