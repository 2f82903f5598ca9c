"""Flink scaling: the same extract job at parallelism 1 and 2 (one TaskManager with 2 slots, and
2 TaskManagers with 1 slot each), and the fixed start-up cost of a job.

Input: 8 links to the ~50 MB realistic WARC (bench/extract_speed.py builds it), so work can spread
over file-level parallelism. Each configuration starts its own local cluster with
deploy/cluster.sh, runs `crawl2clip extract` (EXTERNAL worker pool) and stops the cluster.
A job on one tiny WARC gives the fixed cost (job submission, staging, worker start-up).

    .venv/bin/python bench/cluster_scaling.py    # writes bench/results/cluster_scaling.json (~5 min)
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from extract_speed import DEFAULT_WARC_DIR, build_corpus  # noqa: E402

CLUSTER = str(REPO / "deploy" / "cluster.sh")
CRAWL2CLIP = str(REPO / ".venv" / "bin" / "crawl2clip")
FILES = 8
CONFIGS = [  # (TaskManagers, slots each, parallelism)
    (1, 2, 1),
    (1, 2, 2),
    (2, 1, 2),
]


def cluster(*args: str) -> str:
    return subprocess.run([CLUSTER, *args], check=True, capture_output=True, text=True, timeout=600).stdout


def timed_extract(inputs: list[str], output: str, flink_args: list[str], parallelism: int) -> float:
    started = time.perf_counter()
    subprocess.run([CRAWL2CLIP, "extract", "--input", *inputs, "--output", output, *flink_args,
                    "--parallelism", str(parallelism)], check=True, capture_output=True, timeout=900)
    return time.perf_counter() - started


def main() -> None:
    corpus, info = build_corpus(DEFAULT_WARC_DIR, REPO / ".cache" / "bench", size_mb=50)
    work = Path(tempfile.mkdtemp(prefix="cluster-scaling-"))
    inputs = []
    for i in range(FILES):
        link = work / f"part-{i}.warc.gz"
        os.link(corpus, link)
        inputs.append(str(link))
    tiny = work / "tiny.warc.gz"
    subprocess.run([CRAWL2CLIP, "sample-crawl", "--output", str(tiny), "--pages", "2"], check=True, capture_output=True)
    total_bytes = FILES * corpus.stat().st_size
    cluster("install")
    runs = []
    for taskmanagers, slots, parallelism in CONFIGS:
        cluster("flink", "start", "--taskmanagers", str(taskmanagers), "--slots", str(slots))
        try:
            flink_args = cluster("flink", "args").split()
            fixed = timed_extract([str(tiny)], str(work / "tiny-out"), flink_args, parallelism)
            seconds = timed_extract(inputs, str(work / f"out-{taskmanagers}-{parallelism}"), flink_args, parallelism)
        finally:
            cluster("flink", "stop")
        runs.append({
            "taskmanagers": taskmanagers, "slots_per_taskmanager": slots, "parallelism": parallelism,
            "seconds": round(seconds, 2), "fixed_job_seconds": round(fixed, 2),
            "mb_per_s_compressed": round(total_bytes / 1e6 / seconds, 2),
            "mb_per_s_net_of_fixed": round(total_bytes / 1e6 / max(seconds - fixed, 1e-9), 2),
        })
        print(runs[-1], flush=True)
    base = runs[0]
    result = {
        "input": {"files": FILES, "compressed_bytes": total_bytes, "file": info["file"]},
        "machine": {"cpus": os.cpu_count()},
        "runs": runs,
        "throughput_ratio_vs_parallelism_1": {
            f"{r['taskmanagers']}tm_p{r['parallelism']}": round(base["seconds"] / r["seconds"], 2) for r in runs
        },
        "net_throughput_ratio_vs_parallelism_1": {
            f"{r['taskmanagers']}tm_p{r['parallelism']}":
                round((base["seconds"] - base["fixed_job_seconds"]) / (r["seconds"] - r["fixed_job_seconds"]), 2)
            for r in runs
        },
    }
    (REPO / "bench" / "results").mkdir(exist_ok=True)
    (REPO / "bench" / "results" / "cluster_scaling.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
