"""CLIP scoring on a GPU: the ViT-B-32 image tower in bf16, CPU preprocessing, and the whole stage.

Target (issue 6): >= 20,000 images/s for the ViT-B/32 image tower in bf16 on an H100, with
preprocessing keeping up. Three figures, in images/s:

  image_tower     random pixels already on the device, bf16 autocast, torch.inference_mode;
  preprocessing   the stage's own decode + open_clip preprocess (transforms/score/images.py) of
                  256 px JPEGs as the download stage stores them, on a thread pool of every core;
  stage           `crawl2clip score` end to end (read shards, decode ahead, both towers, content
                  heads, toxicity, write) on --images pairs.

Without a GPU it runs the same code on the CPU with a tiny --images count as a smoke check, and
says so in its output: the figures then say nothing about the target.

    .venv/bin/python bench/clip_gpu.py                          # on a GPU machine
    .venv/bin/python bench/clip_gpu.py --images 32 --batch-size 16   # smoke check anywhere
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "bench"))

from clip_speed import stage_seconds, write_download_dir  # noqa: E402

from crawl2clip.models.clip import ClipSpec, load_clip  # noqa: E402
from crawl2clip.transforms.score.images import prepare_image  # noqa: E402

RESULTS = os.path.join(REPO, "bench", "results", "clip_gpu.json")
TARGET_IMAGES_PER_S = 20_000


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def image_tower_rate(model, batch_size: int, seconds: float) -> float:
    pixels = torch.randn(batch_size, 3, model.image_size, model.image_size, device=model.device)
    with torch.inference_mode(), model._autocast():
        for _ in range(3):  # warm-up (cuDNN/cuBLAS choose kernels)
            model.model.encode_image(pixels)
        _synchronize(model.device)
        started, batches = time.perf_counter(), 0
        while time.perf_counter() - started < seconds:
            model.model.encode_image(pixels)
            batches += 1
        _synchronize(model.device)
    return batches * batch_size / (time.perf_counter() - started)


def preprocessing_rate(model, images: list[bytes], workers: int) -> float:
    """Images/s of the stage's decode + preprocess on a pool of `workers` threads."""
    with ThreadPoolExecutor(workers) as pool:
        started = time.perf_counter()
        prepared = list(pool.map(lambda data: prepare_image(data, model.preprocess), images))
        elapsed = time.perf_counter() - started
    assert all(p.pixels is not None for p in prepared)
    return len(images) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000, help="pairs through the preprocessing and the stage")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--tower-seconds", type=float, default=10.0)
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    model = load_clip(ClipSpec(args.model, None))  # device and precision: auto (bf16 on a GPU)
    report = {
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "smoke_check_only": not gpu,
        "note": None if gpu else "no GPU here: the same code ran on the CPU as a smoke check; "
                                 "these figures say nothing about the GPU target",
        "model": args.model, "weights": "random", "precision": model.precision, "batch_size": args.batch_size,
        "cpu_cores": os.cpu_count(), "loadavg_before": os.getloadavg(),
        "target": f">= {TARGET_IMAGES_PER_S} images/s image tower (bf16, H100), preprocessing keeping up",
    }
    report["image_tower_images_per_s"] = round(image_tower_rate(model, args.batch_size, args.tower_seconds), 1)
    work = tempfile.mkdtemp(prefix="clip-gpu-")
    try:
        download_dir = os.path.join(work, "images")
        pairs = write_download_dir(download_dir, args.images, shard_size=max(64, args.images // 8))
        rate = preprocessing_rate(model, [data for data, _ in pairs], os.cpu_count() or 1)
        report["preprocessing_images_per_s"] = round(rate, 1)
        report["preprocessing_keeps_up"] = bool(rate >= report["image_tower_images_per_s"])
        seconds = stage_seconds(download_dir, os.path.join(work, "scores"), args.model, args.batch_size,
                                extra=["--decode-workers", str(os.cpu_count() or 1)])
        report["stage_images_per_s"] = round(args.images / seconds, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["target_met"] = bool(gpu and report["image_tower_images_per_s"] >= TARGET_IMAGES_PER_S
                                and report["preprocessing_keeps_up"])
    report["loadavg_after"] = os.getloadavg()
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
