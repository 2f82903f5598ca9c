"""CLIP scoring speed on CPU: pairs/s of `crawl2clip score` against a bare open_clip loop.

The same pairs for both: the seven real photos of ../shared/data/photos, resized to 256 px
(border) as the download stage stores them, under the first real captions of
../shared/data/pairs/url-caption-10k.parquet, written as download shards. The bare loop is what a
person would write by hand: decode -> open_clip preprocess -> encode_image, tokenize ->
encode_text, batch by batch. The stage is the whole `crawl2clip score` run in-process on
DirectRunner (reading shards, decoding on threads ahead of the model, both towers, content
heads, toxicity, writing parts); both include loading the model. ViT-B-32 with random weights
(speed does not depend on the weights). Before that, the options that could make CPU inference
faster are timed on each tower alone: torch threads, channels_last, bf16 autocast and batch size
on the image tower; the whole 77-token context against only the batch's longest caption on the
text tower (ONNX Runtime is recorded when it is not installed).

    .venv/bin/python bench/clip_speed.py [--images 128] [--model ViT-B-32]   # -> bench/results/clip_speed.json
"""

import argparse
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow.parquet as pq
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from crawl2clip.models.clip import ClipSpec, load_clip  # noqa: E402
from crawl2clip.pipelines.cli import main as crawl2clip  # noqa: E402
from crawl2clip.transforms.download.images import ResizeSpec, process_image  # noqa: E402
from crawl2clip.transforms.download.shards import ShardWriter  # noqa: E402

DATA = os.path.join(REPO, "..", "shared", "data")
PHOTOS = os.path.join(DATA, "photos")
CAPTIONS = os.path.join(DATA, "pairs", "url-caption-10k.parquet")
RESULTS = os.path.join(REPO, "bench", "results", "clip_speed.json")


def write_download_dir(folder: str, count: int, shard_size: int = 64) -> list[tuple[bytes, str]]:
    """`count` pairs as download shards; returns them (stored image bytes, caption)."""
    photos = [open(os.path.join(PHOTOS, name), "rb").read() for name in sorted(os.listdir(PHOTOS))]
    stored = [process_image(data, ResizeSpec(256, "border")) for data in photos]
    captions = pq.read_table(CAPTIONS, columns=["TEXT"])["TEXT"].to_pylist()[:count]
    pairs = []
    for shard in range(0, count, shard_size):
        with ShardWriter(folder, shard // shard_size, fsync=False) as writer:
            for i in range(shard, min(count, shard + shard_size)):
                image = stored[i % len(stored)]
                writer.write({"URL": f"http://photos.test/{i}.jpg", "TEXT": captions[i], "split": "en"}, image)
                pairs.append((image.data, captions[i]))
    return pairs


def bare_loop(spec: ClipSpec, pairs: list[tuple[bytes, str]], batch_size: int, texts: bool = True) -> float:
    """Seconds for load + decode + preprocess + encode, the plain way."""
    started = time.perf_counter()
    model = load_clip(spec)
    for start in range(0, len(pairs), batch_size):
        batch = pairs[start:start + batch_size]
        pixels = torch.stack([model.preprocess(Image.open(io.BytesIO(data)).convert("RGB")) for data, _ in batch])
        model.encode_images(pixels)
        if texts:
            model.encode_texts([caption for _, caption in batch])
    return time.perf_counter() - started


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


def _trimmed_text_features(clip, tokens: torch.Tensor) -> torch.Tensor:
    """CLIP's text features computed only up to the batch's longest caption instead of the whole
    context: exact for a causal text tower pooled at the end token."""
    length = int((tokens != 0).sum(dim=1).max())
    x = clip.token_embedding(tokens[:, :length]) + clip.positional_embedding[:length]
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:length, :length]))
    return x[torch.arange(len(tokens)), tokens[:, :length].argmax(dim=-1)] @ clip.text_projection


def text_tower_rate(model, captions: list[str], batch_size: int, trimmed: bool) -> float:
    """Captions/s of the text tower; `trimmed`: captions sorted by length into batches, each
    run only as far as its longest caption."""
    clip = model.model
    tokens = model.tokenizer(captions)
    if trimmed:
        tokens = tokens[torch.argsort((tokens != 0).sum(dim=1))]
        with torch.inference_mode():
            assert torch.allclose(_trimmed_text_features(clip, tokens[:4]), clip.encode_text(tokens[:4]), atol=1e-4)
    with torch.inference_mode():
        started = time.perf_counter()
        for start in range(0, len(tokens), batch_size):
            batch = tokens[start:start + batch_size]
            _trimmed_text_features(clip, batch) if trimmed else clip.encode_text(batch)
        return len(captions) / (time.perf_counter() - started)


def cpu_options(spec: ClipSpec, captions: list[str]) -> dict:
    model = load_clip(spec)
    results = {"loadavg_before": os.getloadavg()}
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
    results["text_tower_full_context_batch_32"] = round(text_tower_rate(model, captions[:96], 32, trimmed=False), 2)
    results["text_tower_sorted_trimmed_batch_32"] = round(text_tower_rate(model, captions[:96], 32, trimmed=True), 2)
    try:
        import onnx  # noqa: F401  (torch.onnx.export needs it)
        results["onnxruntime"] = "exportable, not measured"
    except ImportError:
        results["onnxruntime"] = "not measured: exporting to ONNX needs the onnx package, which is not installed"
    results["loadavg_after"] = os.getloadavg()
    return results


def stage_seconds(download_dir: str, output: str, model: str, batch_size: int, extra: list[str] = ()) -> float:
    """Seconds of a whole `crawl2clip score --score-only` run (random weights), model load included."""
    started = time.perf_counter()
    code = crawl2clip(["score", "--input", download_dir, "--output", output, "--score-only",
                       "--clip-model", model, "--clip-pretrained", "", "--multi-clip-model", model,
                       "--multi-clip-pretrained", "", "--image-batch-size", str(batch_size),
                       "--text-batch-size", str(batch_size), *extra])
    if code != 0:
        raise SystemExit(f"crawl2clip score failed ({code})")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=2, help="alternated runs of each; the best counts")
    parser.add_argument("--skip-options", action="store_true", help="only the stage against the bare loop")
    args = parser.parse_args()
    spec = ClipSpec(args.model, None, device="cpu")
    report = {"model": args.model, "weights": "random", "images": args.images, "batch_size": args.batch_size,
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "torch_threads": torch.get_num_threads()}
    if not args.skip_options:
        captions = pq.read_table(CAPTIONS, columns=["TEXT"])["TEXT"].to_pylist()
        report["towers_items_per_s"] = cpu_options(spec, captions)
    work = tempfile.mkdtemp(prefix="clip-speed-")
    bare, stage = [], []
    try:
        download_dir = os.path.join(work, "images")
        pairs = write_download_dir(download_dir, args.images)
        report["loadavg_before"] = os.getloadavg()
        for attempt in range(args.repeat):  # alternated: the machine is shared, its load drifts
            bare.append(bare_loop(spec, pairs, args.batch_size))
            stage.append(stage_seconds(download_dir, os.path.join(work, f"scores-{attempt}"), args.model,
                                       args.batch_size))
        report["loadavg_after"] = os.getloadavg()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["bare_loop"] = {"seconds": [round(t, 2) for t in bare], "pairs_per_s": round(args.images / min(bare), 2)}
    report["stage"] = {"seconds": [round(t, 2) for t in stage], "pairs_per_s": round(args.images / min(stage), 2)}
    report["stage_time_over_bare_loop"] = round(min(stage) / min(bare), 3)
    report["target"] = "stage within 1.25x of the bare loop"
    report["target_met"] = bool(report["stage_time_over_bare_loop"] <= 1.25)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
