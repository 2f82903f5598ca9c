"""CLIP scoring speed on CPU: pairs/s of `crawl2clip score` against a bare open_clip loop, and the
image preparation per core.

The same pairs for both: the seven real photos of ../shared/data/photos, resized to 256 px
(border) as the download stage stores them, under the first real captions of
../shared/data/pairs/url-caption-10k.parquet (cycled when more pairs are asked for), written as
download shards. The bare loop is what a person would write by hand: decode -> open_clip
preprocess -> encode_image, tokenize -> encode_text, batch by batch. The stage is the whole
`crawl2clip score` run in-process on DirectRunner (reading shards, preparing images and
captions ahead of the model, both towers, content heads, toxicity, writing parts); both include
loading the model. ViT-B-32 with random weights (speed does not depend on the weights).

Preparation (decode + resize + crop + normalise, model input ready) in images/s on one core and
on a pool of every core, today's way (Pillow decodes the whole image, open_clip's transform) against
the stage's (draft-scaled JPEG decoding, uint8 tensor resizing, one batched normalisation), on the
real photos as published, as stored at 256 px, at 1024 px, and on the rendered scenes the tests'
download shards hold (96 px, for the tiny CLIP's 48). Before that, the options that could make CPU
inference faster are timed on each tower alone: torch threads, channels_last, bf16 autocast and
batch size on the image tower; the whole 77-token context against captions sorted by length and
cut to their batch's longest (the stage's way) on the text tower. Load averages go with every figure:
the machine is shared.

    .venv/bin/python bench/clip_speed.py [--images 128] [--repeat 2]   # -> bench/results/clip_speed.json
"""

import argparse
import io
import json
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq
import torch
from PIL import Image

from crawl2clip.models.clip import ClipSpec, load_clip, tiny_clip_spec
from crawl2clip.models.scenes import render_example
from crawl2clip.pipelines.cli import main as crawl2clip
from crawl2clip.transforms.download.images import ProcessedImage, ResizeSpec, process_image
from crawl2clip.transforms.download.shards import ShardWriter
from crawl2clip.transforms.score.images import prepare_image
from crawl2clip.transforms.score.pixels import PixelSpec
from crawl2clip.transforms.score.preparation import BatchPreparer, ImageBatch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(REPO, "..", "shared", "data")
PHOTOS = os.path.join(DATA, "photos")
CAPTIONS = os.path.join(DATA, "pairs", "url-caption-10k.parquet")
RESULTS = os.path.join(REPO, "bench", "results", "clip_speed.json")


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def photos(size: int | None = 256, mode: str = "border") -> list[bytes]:
    """The shared photos as published (size None) or as the download stage stores them."""
    raw = [open(os.path.join(PHOTOS, name), "rb").read() for name in sorted(os.listdir(PHOTOS))]
    return raw if size is None else [process_image(data, ResizeSpec(size, mode, min_bytes=0)).data for data in raw]


def captions(count: int) -> list[str]:
    """`count` real captions, the 10,000 cycled when more are asked for."""
    texts = pq.read_table(CAPTIONS, columns=["TEXT"])["TEXT"].to_pylist()
    return [texts[i % len(texts)] for i in range(count)]


def write_download_dir(folder: str, count: int, shard_size: int = 64, stored: list[ProcessedImage] | None = None,
                       texts: list[str] | None = None) -> list[tuple[bytes, str]]:
    """`count` pairs as download shards: `stored` images (default: the photos as the download
    stage stores them, 256 px) under `texts` (default: the real captions), both cycled; returns
    them (image bytes, caption)."""
    stored = stored or [process_image(data, ResizeSpec(256, "border", min_bytes=0)) for data in photos(None)]
    texts = [texts[i % len(texts)] for i in range(count)] if texts else captions(count)
    pairs = []
    for shard in range(0, count, shard_size):
        with ShardWriter(folder, shard // shard_size, fsync=False) as writer:
            for i in range(shard, min(count, shard + shard_size)):
                image = stored[i % len(stored)]
                writer.write({"URL": f"http://photos.test/{i}.jpg", "TEXT": texts[i], "split": "en"}, image)
                pairs.append((image.data, texts[i]))
    return pairs


def bare_loop(spec: ClipSpec, pairs: list[tuple[bytes, str]], batch_size: int, texts: bool = True) -> float:
    """Seconds for load + decode + preprocess + encode, the plain way."""
    started = time.perf_counter()
    model = load_clip(spec)
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        pixels = torch.stack([model.preprocess(Image.open(io.BytesIO(data)).convert("RGB")) for data, _ in batch])
        with torch.inference_mode():
            model.model.encode_image(pixels)
            if texts:
                model.model.encode_text(model.tokenizer([caption for _, caption in batch]))
    return time.perf_counter() - started


def stage_seconds(download_dir: str, output: str, model: str, batch_size: int, extra: list[str] = ()) -> float:
    """Seconds of a whole `crawl2clip score --score-only` run (random weights), model load included."""
    started = time.perf_counter()
    code = crawl2clip(["score", "--input", download_dir, "--output", output, "--score-only",
                       "--clip-model", model, "--clip-pretrained", "", "--multi-text-model", "clip",
                       "--image-batch-size", str(batch_size), "--text-batch-size", str(batch_size), *extra])
    if code != 0:
        raise SystemExit(f"crawl2clip score failed ({code})")
    return time.perf_counter() - started


# ---- preparation ----------------------------------------------------------------------------

def _today(model, pool):
    """Today's preparation as the stage ran it: each image through prepare_image (Pillow decodes
    it whole, open_clip's transform) on the pool, stacked."""
    return lambda datas: torch.stack([p.pixels for p in pool.map(lambda d: prepare_image(d, model.preprocess), datas)])


def _stage(model, pool):
    return BatchPreparer(PixelSpec.of(model.preprocess_cfg), "cpu", pool)


def preparation_rates(model, images: list[bytes], count: int, rounds: int, batch: int = 64) -> dict:
    """Images/s of today's preparation and the stage's: on one core (one thread, torch on one
    thread) and on every core (a thread per core, torch's default threads, as in the stage),
    alternated, best of `rounds`; the same `count` images (cycled) for each."""
    datas = [images[i % len(images)] for i in range(count)]
    cores = os.cpu_count() or 1
    default_threads = torch.get_num_threads()
    best: dict[str, float] = {}
    figures = {"loadavg_before": load()}
    for _ in range(rounds):
        for threads in (1, cores):
            torch.set_num_threads(1 if threads == 1 else default_threads)
            with ThreadPoolExecutor(threads) as pool:
                for name, make in (("today", _today), ("stage", _stage)):
                    prepare = make(model, pool)
                    prepare(datas[:batch])  # warm-up
                    started = time.perf_counter()
                    for start in range(0, count, batch):
                        prepared = prepare(datas[start:start + batch])
                        if isinstance(prepared, ImageBatch):
                            prepare.recycle(prepared)  # as the stage does once the model is done
                    key = f"{name}_{'one_core' if threads == 1 else f'{cores}_cores'}"
                    best[key] = max(best.get(key, 0.0), count / (time.perf_counter() - started))
    torch.set_num_threads(default_threads)
    figures.update({key: round(rate, 1) for key, rate in best.items()})
    figures["stage_over_today_one_core"] = round(best["stage_one_core"] / best["today_one_core"], 2)
    figures["stage_over_today_all_cores"] = round(best[f"stage_{cores}_cores"] / best[f"today_{cores}_cores"], 2)
    figures["loadavg_after"] = load()
    return figures


def preparation(rounds: int) -> dict:
    vit = load_clip(ClipSpec("ViT-B-32", None, device="cpu"))
    tiny = load_clip(tiny_clip_spec("cpu"))
    scenes = []
    for i in range(16):
        buffer = io.BytesIO()
        render_example(4242, i)[0].save(buffer, "JPEG", quality=90)  # as tests/score_fixtures.py stores them
        scenes.append(buffer.getvalue())
    sets = {"vit_b_32_photos_as_published": (vit, photos(None)),
            "vit_b_32_photos_stored_256px": (vit, photos(256)),
            "vit_b_32_photos_stored_1024px": (vit, photos(1024, "keep_ratio")),
            "tiny_clip_test_shard_scenes_96px": (tiny, scenes)}
    return {name: preparation_rates(model, images, 256, rounds) for name, (model, images) in sets.items()}


# ---- towers ---------------------------------------------------------------------------------

def image_tower_rate(model, batch_size: int, batches: int, channels_last: bool = False, autocast_bf16: bool = False) -> float:
    """Images/s of the image tower alone on random pixels."""
    pixels = torch.randn(batch_size, 3, model.image_size, model.image_size)
    if channels_last:
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    network = model.model.visual
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_bf16):
        network(pixels)  # warm-up
        started = time.perf_counter()
        for _ in range(batches):
            network(pixels)
    return batch_size * batches / (time.perf_counter() - started)


def text_tower_rate(model, texts: list[str], batch_size: int, trimmed: bool) -> float:
    """Captions/s of the text tower, tokenising included; `trimmed`: the stage's way (sorted by
    length into batches, each cut to its longest caption)."""
    with torch.inference_mode():
        started = time.perf_counter()
        if trimmed:
            for _, tokens in model.text_batches(texts, batch_size):
                model.encode_tokens(tokens)
        else:
            for start in range(0, len(texts), batch_size):
                model.model.encode_text(model.tokenizer(texts[start:start + batch_size]))
        return len(texts) / (time.perf_counter() - started)


def cpu_options(spec: ClipSpec) -> dict:
    model = load_clip(spec)
    texts = captions(96)
    results = {"loadavg_before": load()}
    default_threads = torch.get_num_threads()
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        results[f"threads_{threads}_batch_16"] = round(image_tower_rate(model, 16, 2), 2)
    torch.set_num_threads(default_threads)
    for batch in (8, 64):
        results[f"threads_{default_threads}_batch_{batch}"] = round(image_tower_rate(model, batch, max(1, 32 // batch)), 2)
    model.model.visual.to(memory_format=torch.channels_last)
    results["channels_last_batch_16"] = round(image_tower_rate(model, 16, 2, channels_last=True), 2)
    model.model.visual.to(memory_format=torch.contiguous_format)
    results["bf16_autocast_batch_16"] = round(image_tower_rate(model, 16, 1, autocast_bf16=True), 2)
    results["text_tower_full_context_batch_32"] = round(text_tower_rate(model, texts, 32, trimmed=False), 2)
    results["text_tower_sorted_trimmed_batch_32"] = round(text_tower_rate(model, texts, 32, trimmed=True), 2)
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        results["onnxruntime"] = "exportable, not measured"
    except ImportError:
        results["onnxruntime"] = "not measured: exporting to ONNX needs the onnx package, which is not installed"
    results["loadavg_after"] = load()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2, help="alternated runs of each; the best counts")
    parser.add_argument("--skip-options", action="store_true", help="no tower options")
    parser.add_argument("--skip-preparation", action="store_true", help="no preparation figures")
    args = parser.parse_args()
    spec = ClipSpec(args.model, None, device="cpu")
    report = {"model": args.model, "weights": "random", "images": args.images, "batch_size": args.batch_size,
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "torch_threads": torch.get_num_threads()}
    if not args.skip_preparation:
        report["preparation_images_per_s"] = preparation(args.repeat)
    if not args.skip_options:
        report["towers_items_per_s"] = cpu_options(spec)
    work = tempfile.mkdtemp(prefix="clip-speed-")
    bare, stage, loads = [], [], []
    try:
        download_dir = os.path.join(work, "images")
        pairs = write_download_dir(download_dir, args.images)
        for attempt in range(args.repeat):  # alternated: the machine is shared, its load drifts
            before = load()
            bare.append(bare_loop(spec, pairs, args.batch_size))
            stage.append(stage_seconds(download_dir, os.path.join(work, f"scores-{attempt}"), args.model,
                                       args.batch_size))
            loads.append({"before": before, "after": load()})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["stage_vs_loop_loadavg"] = loads
    report["bare_loop"] = {"seconds": [round(t, 2) for t in bare], "pairs_per_s": round(args.images / min(bare), 2)}
    report["stage"] = {"seconds": [round(t, 2) for t in stage], "pairs_per_s": round(args.images / min(stage), 2)}
    report["stage_time_over_bare_loop"] = round(min(stage) / min(bare), 3)
    report["target"] = "stage within 0.9x of the bare loop's time; preparation at least 2x faster per core"
    report["target_met"] = bool(report["stage_time_over_bare_loop"] <= 0.9 and (
        args.skip_preparation or all(figures["stage_over_today_one_core"] >= 2.0
                                     for figures in report["preparation_images_per_s"].values())))
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
