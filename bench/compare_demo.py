"""Does filtering help? `crawl2clip compare --demo`, and what its figures mean on a crawl whose
truth is known.

Runs the demo (sample crawl -> whole pipeline -> raw, clip, clip+safe, dbp:0.5, each the tiny
CLIP's architecture trained from scratch with the same compute) in a fresh process, then, with
the sample crawl's ground truth (which caption belongs to which rendered scene, which pictures are
watermarked, which are copies of a popular picture):
  - what each variant's training set holds: the share of true captions, watermarked pictures and
    near-duplicate copies;
  - held-out retrieval again on the held-out pairs whose caption is true (the held-out set has
    the crawl's misaligned captions too, which no model can retrieve);
  - the committed tiny CLIP (trained on clean rendered scenes with about six times the samples)
    on the same evaluation sets, as a reference;
  - with `--seeds 0 1`, the comparison again with other seeds (initial weights, data order) into
    DIR/compare-seedN, for the spread between runs.
Results: bench/results/compare_demo.json.

    .venv/bin/python bench/compare_demo.py [--output output/compare-demo] [--seeds 0 1]
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from crawl2clip.models.clip import ClipSpec, load_clip, tiny_clip_spec  # noqa: E402
from crawl2clip.models.scene_captions import LANGUAGES, caption  # noqa: E402
from crawl2clip.models.scenes import random_scene, scene_rng  # noqa: E402
from crawl2clip.pipelines import compare_demo  # noqa: E402
from crawl2clip.pipelines.sample_crawl import SCENE_SEED  # noqa: E402
from crawl2clip.transforms.compare.evaluate import (  # noqa: E402
    HeldOut,
    evaluate,
    load_zero_shot,
    read_class_folders,
    read_held_out,
)

PICTURE = re.compile(r"/scenes/(?:copies/)?(\d{4})(?:-\d+)?\.jpg$")


def _truth(url: str, text: str) -> dict:
    match = PICTURE.search(url)
    if not match:
        return {"gallery": False, "true": False, "watermarked": False, "copy": False}
    index = int(match.group(1))
    scene = random_scene(scene_rng(SCENE_SEED, index))
    return {"gallery": True, "true": text in {caption(scene, language) for language in LANGUAGES},
            "watermarked": index % 7 == 3, "copy": "/copies/" in url}


def _urls(run_dir: str) -> dict[str, str]:
    table = pq.read_table(os.path.join(run_dir, "extract", "pairs"), columns=["uid", "URL"])
    return dict(zip(table["uid"].to_pylist(), table["URL"].to_pylist()))


def _training_sets(compare_dir: str, urls: dict[str, str]) -> dict:
    sets = {}
    for name in sorted(os.listdir(os.path.join(compare_dir, "variants"))):
        rows = pq.read_table(os.path.join(compare_dir, "variants", name, "rows.parquet"), columns=["uid", "TEXT"])
        truths = [_truth(urls[u], t) for u, t in zip(rows["uid"].to_pylist(), rows["TEXT"].to_pylist())]
        sets[name] = {"pairs": len(truths),
                      **{f"share_{k}": round(float(np.mean([t[k] for t in truths])), 4) if truths else None
                         for k in ("true", "watermarked", "copy")}}
    return sets


def _true_subset(held_out: HeldOut, compare_dir: str, urls: dict[str, str]) -> HeldOut:
    """The held-out pairs whose caption describes their picture (rows in read_held_out's order)."""
    rows = pq.read_table(os.path.join(compare_dir, "held-out", "rows.parquet"), columns=["uid", "TEXT"])
    true = [_truth(urls[u], t)["true"] for u, t in zip(rows["uid"].to_pylist(), rows["TEXT"].to_pylist())]
    assert len(true) == len(held_out.texts), "an unreadable held-out image: rows and texts no longer align"
    used = sorted({int(held_out.text_image[i]) for i, ok in enumerate(true) if ok})
    renumber = {old: new for new, old in enumerate(used)}
    keep = [i for i, ok in enumerate(true) if ok]
    return HeldOut([held_out.images[i] for i in used], [held_out.texts[i] for i in keep],
                   np.array([renumber[int(held_out.text_image[i])] for i in keep], np.int64))


def _rounded(value):
    if isinstance(value, float):
        return round(value, 4)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def analyse(output: str, compare_dir: str) -> dict:
    run_dir = os.path.join(output, "run")
    urls = _urls(run_dir)
    with open(os.path.join(compare_dir, "comparison.json")) as f:
        comparison = json.load(f)
    held_out = read_held_out(os.path.join(compare_dir, "held-out"))
    true_held_out = _true_subset(held_out, compare_dir, urls)
    zero_shot = load_zero_shot(read_class_folders(os.path.join(output, "zero-shot")))
    on_true = {}
    for row in comparison["variants"]:
        slug = row["variant"].replace(":", "-")
        checkpoint = os.path.join(compare_dir, "train", slug, "checkpoints", f"epoch_{row['epochs']}.pt")
        model = load_clip(ClipSpec("crawl2clip-tiny", checkpoint, device="cpu"))
        on_true[row["variant"]] = _rounded(evaluate(model, true_held_out, None)["retrieval"])
    reference = load_clip(tiny_clip_spec("cpu"))
    return {
        "comparison": [{k: _rounded(v) for k, v in row.items() if k not in ("model", "device", "precision", "note")}
                       for row in comparison["variants"]],
        "training_sets": _training_sets(compare_dir, urls),
        "held_out": {**comparison["held_out"], "true_captions": len(true_held_out.texts),
                     "images_with_a_true_caption": len(true_held_out.images)},
        "retrieval_on_true_held_out_captions": on_true,
        "committed_tiny_clip": {"all_held_out": _rounded(evaluate(reference, held_out, zero_shot)),
                                "true_held_out_captions": _rounded(evaluate(reference, true_held_out, None))},
    }


def _earlier(path: str, key: str):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f).get(key)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=compare_demo.DEMO_OUTPUT)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--result", default=os.path.join(HERE, "results", "compare_demo.json"))
    args = parser.parse_args()
    load_before = os.getloadavg()
    fresh = not os.path.exists(os.path.join(args.output, "compare", "comparison.json"))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "crawl2clip.pipelines.cli", "compare", "--demo", "--output", args.output],
                   check=True, cwd=REPO)
    demo_seconds = time.perf_counter() - started
    with open(os.path.join(args.output, "run", "report.json")) as f:
        report = json.load(f)
    runs = {"seed 0": analyse(args.output, os.path.join(args.output, "compare"))}
    for seed in (s for s in args.seeds if s != 0):
        compare_dir = os.path.join(args.output, f"compare-seed{seed}")
        subprocess.run([sys.executable, "-m", "crawl2clip.pipelines.cli", "compare", "--run",
                        os.path.join(args.output, "run"), "--zero-shot-dir", os.path.join(args.output, "zero-shot"),
                        "--output", compare_dir, "--variants", compare_demo.VARIANTS,
                        *compare_demo.TRAINING_FLAGS, "--seed", str(seed)], check=True, cwd=REPO)
        runs[f"seed {seed}"] = analyse(args.output, compare_dir)
    result = {
        "command": f"crawl2clip compare --demo --output {args.output}",
        "crawl": {"pages": compare_demo.PAGES, **asdict(compare_demo.GALLERY)},
        "training": compare_demo.TRAINING_FLAGS, "variants": compare_demo.VARIANTS,
        "funnel": {step["step"]: step["count"] for step in report["funnel"]},
        "pipeline_stage_seconds": {name: info["seconds"] for name, info in report["stages"].items()},
        # a demo resumed from an earlier one takes seconds: keep the first run's time
        "demo_wall_seconds": round(demo_seconds, 1) if fresh else _earlier(args.result, "demo_wall_seconds"),
        "runs": runs,
        "cores": os.cpu_count(), "load_average_before": load_before, "load_average_after": os.getloadavg(),
    }
    os.makedirs(os.path.dirname(args.result), exist_ok=True)
    with open(args.result, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
