"""Flink scaling, at parallelism 1 and 2, with the fixed start-up cost of a job beside each figure.

extract: the same extract job (one TaskManager with 2 slots, and 2 TaskManagers with 1 slot each).
  Input: 8 links to the ~50 MB realistic WARC (bench/extract_speed.py builds it), so work can spread
  over file-level parallelism. Each configuration starts its own local cluster with
  deploy/cluster.sh, runs `crawl2clip extract` (EXTERNAL worker pool) and stops the cluster.
download_score: `crawl2clip download` then `crawl2clip score` (the tiny CLIP) on 2 TaskManagers x
  1 slot, input and output on the project's HDFS, images from the replay proxy holding each answer
  back (--latency: a far web server), each worker fetching at most --concurrency images at once,
  so the download is bound by waiting, as a real crawl is. Input: the sample crawl's pairs.
A job on a tiny input (one small WARC; 4 pages' pairs) gives the fixed cost (job submission,
staging, worker start-up, model load); "net" figures subtract it.

    .venv/bin/python bench/cluster_scaling.py                         # both parts (~12 min)
    .venv/bin/python bench/cluster_scaling.py --parts download_score  # keeps the other part's figures
Writes bench/results/cluster_scaling.json.
"""

import argparse
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

import pyarrow.parquet as pq  # noqa: E402

from crawl2clip.pipelines.replay import replay_proxy  # noqa: E402
from crawl2clip.pipelines.sample_crawl import write_sample_crawl  # noqa: E402

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


def extract_scaling() -> dict:
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
    return {
        "input": {"files": FILES, "compressed_bytes": total_bytes, "file": info["file"]},
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


SCORE_FLAGS = ["--tiny-clip", "--min-similarity-en", "-1", "--min-similarity-multi", "-1"]


def timed_download_score(pairs: str, output: str, proxy: str, cluster_args: list[str], parallelism: int,
                         concurrency: int) -> dict:
    """Seconds of `crawl2clip download` and `crawl2clip score`, one job each, and the images kept."""
    common = [*cluster_args, "--parallelism", str(parallelism)]
    started = time.perf_counter()
    subprocess.run([CRAWL2CLIP, "download", "--input", pairs, "--output", f"{output}/download", "--proxy", proxy,
                    "--max-concurrency", str(concurrency), "--max-per-host", str(concurrency),
                    "--image-size", "64", "--min-image-bytes", "0", "--shard-size", "64", *common],
                   check=True, capture_output=True, timeout=1200)
    downloaded = time.perf_counter()
    subprocess.run([CRAWL2CLIP, "score", "--input", f"{output}/download", "--output", f"{output}/score",
                    *SCORE_FLAGS, *common], check=True, capture_output=True, timeout=1200)
    scored = time.perf_counter()
    return {"download_seconds": downloaded - started, "score_seconds": scored - downloaded,
            "seconds": scored - started}


def _extract_pairs(crawl: str, output: str) -> str:
    subprocess.run([CRAWL2CLIP, "extract", "--input", crawl, "--output", output], check=True, capture_output=True)
    return f"{output}/pairs/*.parquet"


def download_score_scaling(pages: int, latency: float, concurrency: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="cluster-scaling-"))
    crawl, tiny_crawl = str(work / "crawl.warc.gz"), str(work / "tiny.warc.gz")
    write_sample_crawl(crawl, pages=pages)
    write_sample_crawl(tiny_crawl, pages=4)
    pairs, tiny_pairs = _extract_pairs(crawl, str(work / "pairs")), _extract_pairs(tiny_crawl, str(work / "tiny"))
    count = pq.read_table(str(work / "pairs" / "pairs")).num_rows
    cluster("install")
    cluster("hdfs", "start")
    cluster("flink", "start", "--taskmanagers", "2", "--slots", "1")
    runs = []
    try:
        cluster_args = [*cluster("flink", "args").split(), *cluster("hdfs", "args").split()]
        root = f"hdfs://crawl2clip-bench/{work.name}"
        with replay_proxy(crawl, max_requests=10**7, latency=latency) as (proxy, _), \
                replay_proxy(tiny_crawl, max_requests=10**7, latency=latency) as (tiny_proxy, _):
            for parallelism in (1, 2):
                fixed = timed_download_score(tiny_pairs, f"{root}/tiny-p{parallelism}", tiny_proxy, cluster_args,
                                             parallelism, concurrency)
                timed = timed_download_score(pairs, f"{root}/p{parallelism}", proxy, cluster_args, parallelism,
                                             concurrency)
                runs.append({
                    "parallelism": parallelism, **{k: round(v, 2) for k, v in timed.items()},
                    "fixed_job_seconds": round(fixed["seconds"], 2),
                    "pairs_per_s": round(count / timed["seconds"], 2),
                    "pairs_per_s_net_of_fixed": round(count / max(timed["seconds"] - fixed["seconds"], 1e-9), 2),
                    "load_average_after": os.getloadavg(),
                })
                print(runs[-1], flush=True)
    finally:
        cluster("flink", "stop")
    one, two = runs
    return {
        "input": {"sample_crawl_pages": pages, "pairs": count, "proxy_latency_s": latency,
                  "max_concurrency_per_worker": concurrency, "filesystem": "hdfs (deploy/cluster.sh hdfs)",
                  "cluster": "Flink, 2 TaskManagers x 1 slot, EXTERNAL worker pool", "model": "tiny CLIP"},
        "runs": runs,
        "throughput_ratio_p2_over_p1": round(one["seconds"] / two["seconds"], 2),
        "net_throughput_ratio_p2_over_p1": round((one["seconds"] - one["fixed_job_seconds"])
                                                 / (two["seconds"] - two["fixed_job_seconds"]), 2),
        "goal": "net ratio >= 1.7",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", choices=["extract", "download_score"], default=["extract", "download_score"])
    parser.add_argument("--pages", type=int, default=200, help="sample crawl pages for download_score")
    parser.add_argument("--latency", type=float, default=0.5, help="seconds the proxy holds each answer")
    parser.add_argument("--concurrency", type=int, default=8, help="images a worker fetches at once")
    args = parser.parse_args()
    path = REPO / "bench" / "results" / "cluster_scaling.json"
    result = json.loads(path.read_text()) if path.exists() else {}
    if "runs" in result:  # the layout before download_score: extract's figures alone
        result = {"extract": {k: v for k, v in result.items() if k != "machine"}}
    result["machine"] = {"cpus": os.cpu_count()}
    if "extract" in args.parts:
        result["extract"] = extract_scaling()
    if "download_score" in args.parts:
        result["download_score"] = download_score_scaling(args.pages, args.latency, args.concurrency)
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
