"""CLIP scoring on a GPU, in one run: each tower alone, the preparation alone, the whole stage, and
the stage over the towers.

Issue 18's target: the whole `crawl2clip score` stage at >= 8,000 pairs/s on one H100 (ViT-B-32,
bf16). Figures (images, captions or pairs per second):

  image_tower        random pixels already on the device, autocast as the stage runs it;
  text_tower         real captions tokenised beforehand: the whole 77-token context, and the
                     stage's way (sorted by length, each batch cut to its longest caption);
                     the tokenizer alone on one thread beside it (the stage tokenises ahead);
  preparation        bytes -> model input on the device: the CPU path (decoding on a thread per
                     core; with CUDA, uint8 copied from pinned memory, resized and normalised on
                     the GPU) and, with CUDA, the GPU path (nvJPEG too); today's way (Pillow +
                     open_clip's transform per image, on the CPU) for reference;
  image_pipeline     the stage's preparation ahead of the image tower, without Beam or captions;
  stage              `crawl2clip score` end to end (DirectRunner: read shards, prepare ahead, both
                     towers, content heads, toxicity, write), wall time, and net of its fixed cost
                     (a run of one batch: start-up, model load);
  stage_over_towers  the stage's net pairs/s over what the two towers alone allow.

The pairs: the shared real photos (../shared/data/photos, or --photos) stored at 256 px as the
download stage stores them, under real captions (../shared/data/pairs, or --captions), cycled to
--images; rendered scenes and their captions where those files are not there. Random weights,
no network, no faiss. Without a GPU it runs the same code on the CPU as a smoke check and says so.

    python bench/clip_gpu.py                                               # on a GPU machine
    .venv/bin/python bench/clip_gpu.py --images 64 --batch-size 16 --tower-seconds 2   # smoke check
"""

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # clip_speed, beside this file

from clip_speed import stage_seconds, write_download_dir  # noqa: E402

from crawl2clip.models.clip import ClipSpec, autocast, load_clip  # noqa: E402
from crawl2clip.models.scenes import render_example  # noqa: E402
from crawl2clip.transforms.download.images import ResizeSpec, process_image  # noqa: E402
from crawl2clip.transforms.score.images import prepare_image  # noqa: E402
from crawl2clip.transforms.score.pixels import PixelSpec  # noqa: E402
from crawl2clip.transforms.score.preparation import BatchPreparer, image_preparer, prepared_ahead  # noqa: E402
from crawl2clip.transforms.score.scoring import chunks  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "..", "shared", "data")
RESULTS = os.path.join(REPO, "bench", "results", "clip_gpu.json")
TARGET_PAIRS_PER_S = 8_000


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def timed_rate(work, items: int, device: str, seconds: float) -> float:
    """Items/s of `work()` (which handles `items` items), repeated for about `seconds` after a warm-up."""
    work()
    _synchronize(device)
    started, rounds = time.perf_counter(), 0
    while rounds == 0 or time.perf_counter() - started < seconds:
        work()
        rounds += 1
    _synchronize(device)
    return rounds * items / (time.perf_counter() - started)


def pairs_data(args) -> tuple[list, list[str], str]:
    """(stored images, captions, what they are)."""
    photos = args.photos or os.path.join(DATA, "photos")
    captions = args.captions or os.path.join(DATA, "pairs", "url-caption-10k.parquet")
    if os.path.isdir(photos) and os.path.isfile(captions):
        raw = [open(os.path.join(photos, name), "rb").read() for name in sorted(os.listdir(photos))]
        texts = pq.read_table(captions, columns=["TEXT"])["TEXT"].to_pylist()
        described = f"{len(raw)} real photos ({photos}), {len(texts)} real captions, cycled"
    else:
        scenes = [render_example(2024, i, size=320) for i in range(64)]
        raw = []
        for image, _ in scenes:
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=90)
            raw.append(buffer.getvalue())
        texts = [scene.caption() for _, scene in scenes]
        described = "64 rendered scenes and their captions, cycled (the shared real data was not found)"
    stored = [process_image(data, ResizeSpec(256, "border", min_bytes=0)) for data in raw]
    return stored, texts, described


def tower_figures(model, texts: list[str], batch: int, seconds: float) -> dict:
    device = model.device
    pixels = torch.randn(batch, 3, model.image_size, model.image_size, device=device)
    full = model.tokenizer((texts * (batch // len(texts) + 1))[:batch]).to(device)
    sample = (texts * (batch // len(texts) + 1))[:batch]
    trimmed = [tokens.to(device) for _, tokens in model.text_batches(sample, batch)]

    def image_tower():
        model.model.encode_image(pixels)

    def text_full():
        model.model.encode_text(full)

    def text_trimmed():
        for tokens in trimmed:
            model.encode_tokens(tokens)

    with torch.inference_mode(), autocast(device, model.precision):
        figures = {"image_tower_images_per_s": timed_rate(image_tower, batch, device, seconds),
                   "text_tower_full_context_captions_per_s": timed_rate(text_full, batch, device, seconds),
                   "text_tower_trimmed_captions_per_s": timed_rate(text_trimmed, batch, device, seconds)}
    started = time.perf_counter()
    model.text_batches((texts * 4)[:4 * batch], batch)
    figures["tokenizer_one_thread_captions_per_s"] = 4 * batch / (time.perf_counter() - started)
    return {key: round(value, 1) for key, value in figures.items()}


def preparation_figures(model, images: list[bytes], batch: int, workers: int, seconds: float, rounds: int = 3) -> dict:
    """Images/s of each way to prepare a batch, alternated for `rounds` rounds, the best of each."""
    spec = PixelSpec.of(model.preprocess_cfg)
    datas = (images * (batch // len(images) + 1))[:batch]
    best: dict[str, float] = {}
    with ThreadPoolExecutor(workers) as pool:
        def stage_way(preparer):
            def prepare(datas):  # as the stage: wait for the input, hand its memory back
                batch = preparer(datas)
                batch.model_input()
                preparer.recycle(batch)
            return prepare

        paths = {"cpu_path_images_per_s": (stage_way(BatchPreparer(spec, model.device, pool, nvjpeg=False)),
                                           model.device),
                 "today_cpu_path_images_per_s": (
                     lambda d: torch.stack([p.pixels for p in pool.map(lambda x: prepare_image(x, model.preprocess), d)]),
                     "cpu")}
        if model.device.startswith("cuda"):
            paths["gpu_path_images_per_s"] = (stage_way(image_preparer(model, pool)), model.device)
        for _ in range(rounds):
            for name, (prepare, device) in paths.items():
                rate = timed_rate(lambda: prepare(datas), batch, device, seconds / rounds)
                best[name] = max(best.get(name, 0.0), rate)
    return {key: round(value, 1) for key, value in best.items()}


def image_pipeline_rate(model, images: list[bytes], count: int, batch: int, workers: int) -> float:
    """Images/s of the stage's preparation ahead of the image tower (no Beam, no captions)."""
    datas = [images[i % len(images)] for i in range(count)]
    with ThreadPoolExecutor(workers) as pool, ThreadPoolExecutor(1) as ahead:
        prepare = image_preparer(model, pool)
        prepare(datas[:batch])
        _synchronize(model.device)
        started = time.perf_counter()
        for chunk, prepared in prepared_ahead(ahead, chunks(count, batch), lambda c: prepare([datas[i] for i in c])):
            model.encode_images(prepared.model_input())
            prepare.recycle(prepared)
        _synchronize(model.device)
    return round(count / (time.perf_counter() - started), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20_000, help="pairs through the stage (cycled)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--shard-size", type=int, default=1000, help="pairs per download shard")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--tower-seconds", type=float, default=10.0)
    parser.add_argument("--decode-workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--stage-workers", type=int, default=1,
                        help="DirectRunner worker processes of the stage (more overlap reading, tagging and "
                             "writing with the GPU; each loads the model)")
    parser.add_argument("--photos", help="a folder of JPEG photos (default: ../shared/data/photos)")
    parser.add_argument("--captions", help="a parquet with a TEXT column (default: ../shared/data/pairs/...)")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    model = load_clip(ClipSpec(args.model, None))  # device and precision: auto (bf16 on a GPU)
    stored, texts, described = pairs_data(args)
    images = [image.data for image in stored]
    report = {
        "device": torch.cuda.get_device_name(model.device) if gpu else "cpu",
        "smoke_check_only": not gpu,
        "note": None if gpu else "no GPU here: the same code ran on the CPU as a smoke check; these figures say "
                                 "nothing about the GPU target",
        "model": args.model, "weights": "random", "precision": model.precision, "batch_size": args.batch_size,
        "images": args.images, "shard_size": args.shard_size, "data": described, "cpu_cores": os.cpu_count(),
        "decode_workers": args.decode_workers, "stage_workers": args.stage_workers, "torch": torch.__version__,
        "target": f">= {TARGET_PAIRS_PER_S} pairs/s for the whole stage (ViT-B-32, bf16, one H100)",
    }
    report["towers"] = {"loadavg_before": load(), **tower_figures(model, texts, args.batch_size, args.tower_seconds),
                        "loadavg_after": load()}
    report["preparation"] = {"loadavg_before": load(),
                             **preparation_figures(model, images, args.batch_size, args.decode_workers,
                                                   args.tower_seconds),
                             "loadavg_after": load()}
    report["image_pipeline_images_per_s"] = image_pipeline_rate(model, images, min(args.images, 8 * args.batch_size),
                                                                args.batch_size, args.decode_workers)
    work = tempfile.mkdtemp(prefix="clip-gpu-")
    try:
        extra = ["--decode-workers", str(args.decode_workers)]
        if args.stage_workers > 1:
            extra += ["--direct_num_workers", str(args.stage_workers), "--direct_running_mode", "multi_processing"]
        small = os.path.join(work, "one-batch")
        write_download_dir(small, args.batch_size, shard_size=args.shard_size, stored=stored, texts=texts)
        big = os.path.join(work, "images")
        write_download_dir(big, args.images, shard_size=args.shard_size, stored=stored, texts=texts)
        before = load()
        fixed = stage_seconds(small, os.path.join(work, "scores-one-batch"), args.model, args.batch_size, extra)
        whole = stage_seconds(big, os.path.join(work, "scores"), args.model, args.batch_size, extra)
        report["stage"] = {"loadavg_before": before, "seconds": round(whole, 2),
                           "one_batch_seconds": round(fixed, 2),
                           "pairs_per_s": round(args.images / whole, 1),
                           "net_pairs_per_s": round((args.images - args.batch_size) / max(whole - fixed, 1e-9), 1),
                           "loadavg_after": load()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    towers = report["towers"]
    both = 1 / (1 / towers["image_tower_images_per_s"] + 1 / towers["text_tower_trimmed_captions_per_s"])
    report["towers_pairs_per_s"] = round(both, 1)
    report["stage_over_towers"] = round(report["stage"]["net_pairs_per_s"] / both, 3)
    report["stage_over_image_tower"] = round(report["stage"]["net_pairs_per_s"] / towers["image_tower_images_per_s"], 3)
    report["target_met"] = bool(gpu and report["stage"]["net_pairs_per_s"] >= TARGET_PAIRS_PER_S)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
