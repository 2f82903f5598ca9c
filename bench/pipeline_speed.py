"""Whole-pipeline speed: `crawl2clip run` on the demo-sized sample crawl and on one 10x larger.

Each size: write the sample crawl, serve it with the replay proxy, run the demo's settings
(tiny CLIP, prune) in a fresh process, and read where the time went from the stages' own
metrics.json (each stage's seconds run from the previous stage's end to its own `_SUCCESS`).
Results: bench/results/pipeline_speed.json.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from crawl2clip.pipelines.cli import DEMO_FLAGS  # noqa: E402
from crawl2clip.pipelines.replay import replay_proxy  # noqa: E402
from crawl2clip.pipelines.sample_crawl import write_sample_crawl  # noqa: E402

STAGES = ("extract", "download", "score", "prune")


def measure(pages: int, work: str) -> dict:
    crawl = os.path.join(work, f"crawl-{pages}.warc.gz")
    summary = write_sample_crawl(crawl, pages=pages)
    run_dir = os.path.join(work, f"run-{pages}")
    load_before = os.getloadavg()
    with replay_proxy(crawl, max_requests=10**7) as (proxy, _):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-m", "crawl2clip.pipelines.cli", "run", "--input", crawl,
                        "--output", run_dir, "--proxy", proxy, *DEMO_FLAGS],
                       check=True, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
    with open(os.path.join(run_dir, "report.json")) as f:
        report = json.load(f)
    funnel = {step["step"]: step["count"] for step in report["funnel"]}
    stages = {stage: report["stages"][stage]["seconds"] for stage in STAGES if stage in report["stages"]}
    result = {
        "pages": pages, "archive_bytes": os.path.getsize(crawl), "pictures": summary["pictures"],
        "wall_seconds": round(seconds, 2),
        "candidate_pairs": funnel.get("candidates"), "downloaded": funnel.get("downloaded"),
        "clip_kept": funnel.get("CLIP-kept"), "kept_by_pruning": funnel.get("kept by pruning"),
        "pairs_per_second": round(funnel.get("candidates", 0) / seconds, 1),
        "images_per_second": round(funnel.get("downloaded", 0) / seconds, 1),
        "stage_seconds": stages,
        "fixed_seconds": round(seconds - sum(stages.values()), 2),  # start-up, imports, report
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
    }
    shutil.rmtree(run_dir)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pages", type=int, nargs="+", default=[200, 2000])
    parser.add_argument("--output", default=os.path.join(HERE, "results", "pipeline_speed.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        results = []
        for pages in args.pages:
            results.append(measure(pages, work))
            print(json.dumps(results[-1]), flush=True)
    with open(args.output, "w") as f:
        json.dump({"settings": DEMO_FLAGS, "cores": os.cpu_count(), "runs": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
