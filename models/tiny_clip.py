"""The project's tiny CLIP: its open_clip config and its deterministic training.

No CLIP weights can be downloaded where crawl2clip is built and tested, yet the scoring stage,
the content heads and the explorer need a model whose scores mean something. This trains one in
about ten CPU minutes (one thread; bench/results/tiny_clip_train.json) on the rendered scenes of
models/scenes.py (shapes, colours, backgrounds), each scene drawn twice, clean and with a
watermark its caption names, both in the same batch; a linear watermark probe on the image
embedding adds its loss while training, so the embedding also carries "is there a watermark"
(the probe itself is not kept). It is an open_clip `CLIP` like ViT-B-32, only small (48 px
images, 8 px patches, 64-d embeddings), and loads through the same code as any checkpoint:
`ClipSpec("crawl2clip-tiny", <path>.pt)`.

    python -m crawl2clip.models.tiny_clip --output models/assets [--report bench/results/tiny_clip_train.json]

Training is bitwise deterministic: fixed seeds, scenes that depend on (seed, index) only,
`torch.use_deterministic_algorithms(True)`, and one thread (`THREADS`). The checkpoint is saved
in float16 (half the size; the embeddings move by ~1e-3).
"""

import argparse
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from crawl2clip.models.clip import ClipSpec, load_clip
from crawl2clip.models.heads import roc_auc
from crawl2clip.models.scenes import render_example
from crawl2clip.models.training_report import publish_report
from crawl2clip.models.watermark import apply_watermark, random_watermark

MODEL_NAME = "crawl2clip-tiny"
CONFIG: dict = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 48, "layers": 3, "width": 64, "head_width": 32, "patch_size": 8},
    # The 49,408-token embedding is most of the checkpoint: a narrow text tower keeps it small.
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TRAIN_SEED = 0
HELD_OUT_SEED = 10_000     # scenes never seen in training: the checkpoint's AUC is measured on them
THREADS = 1  # one thread: bitwise reproducible, and no spinning when the CPU is shared
PROBE_SCALE = 10.0         # unit-norm embeddings scaled so the training probe's logits can grow
RENDER_SIZE = 96           # scenes are drawn larger than the model's input and resized by its preprocess


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 900
    batch_size: int = 256
    pool_size: int = 16_384  # distinct training scenes, cycled through
    learning_rate: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 40
    watermark_weight: float = 3.0  # the watermark probe's loss, added to the contrastive one
    seed: int = TRAIN_SEED


def build_model(seed: int = TRAIN_SEED) -> open_clip.CLIP:
    """The untrained tiny CLIP, its weights drawn from `seed`."""
    torch.manual_seed(seed)
    return open_clip.CLIP(**CONFIG)


def preprocess_transform():
    """The image transform the loaded model uses too (open_clip's defaults for this config)."""
    return open_clip.image_transform(CONFIG["vision_cfg"]["image_size"], is_train=False)


def tokenizer() -> open_clip.SimpleTokenizer:
    return open_clip.SimpleTokenizer(context_length=CONFIG["text_cfg"]["context_length"])


def example(seed: int, index: int) -> tuple:
    """Example `index` of `seed` as (PIL image, caption). Examples come in pairs: scene index // 2,
    drawn clean (even index) and with a watermark its caption names (odd index). Trained in the
    same batch, the two differ only by the mark, so the embedding has to carry it."""
    image, scene = render_example(seed, index // 2, RENDER_SIZE)
    caption = scene.caption()
    if index % 2:
        rng = np.random.default_rng([seed, index // 2, 2])
        mark = random_watermark(rng)
        image = apply_watermark(image, mark, rng)
        caption = f"{caption} {mark.caption_clause()}"
    return image, caption


def render_pool(seed: int, count: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """`count` examples of `seed`, preprocessed: (pixels, tokens, captions)."""
    transform, tokenize = preprocess_transform(), tokenizer()
    images, captions = zip(*(example(seed, i) for i in range(count)))
    pixels = torch.stack([transform(image) for image in images])
    return pixels, tokenize(list(captions)), list(captions)


def _batches(count: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Indices of each step's batch: the pool's (clean, watermarked) pairs reshuffled every epoch
    by a seeded generator, each pair kept in one batch."""
    generator = torch.Generator().manual_seed(seed)
    pairs, per_batch = count // 2, batch_size // 2
    while True:
        order = torch.randperm(pairs, generator=generator)
        for start in range(0, pairs - per_batch + 1, per_batch):
            chosen = order[start:start + per_batch]
            yield torch.stack([2 * chosen, 2 * chosen + 1], dim=1).flatten()


def clip_loss(model: open_clip.CLIP, pixels: torch.Tensor, tokens: torch.Tensor,
              probe: torch.nn.Linear | None = None, marked: torch.Tensor | None = None) -> tuple:
    """CLIP's symmetric contrastive loss over the batch, and (with `probe`) the watermark loss:
    a linear probe on the unit-norm image embedding must tell marked images from clean ones."""
    image = F.normalize(model.encode_image(pixels), dim=-1)
    text = F.normalize(model.encode_text(tokens), dim=-1)
    logits = model.logit_scale.exp() * image @ text.T
    labels = torch.arange(len(pixels))
    contrastive = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    if probe is None:
        return contrastive, torch.zeros(())
    return contrastive, F.binary_cross_entropy_with_logits(probe(PROBE_SCALE * image)[:, 0], marked)


def train(config: TrainConfig = TrainConfig(), pool: tuple | None = None,
          progress: bool = False) -> tuple[open_clip.CLIP, dict]:
    """Trains the tiny CLIP from scratch; returns it and a report (losses, seconds).

    Contrastive learning alone picks up colours and shapes long before a faint overlay (the
    clean and marked twins stay confused after 500 steps), so a linear watermark probe on the
    image embedding adds its loss while training. The probe is a training aid only: it is not
    saved, and the watermark head is fitted afterwards on scenes of other seeds."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    pixels, tokens, _ = pool if pool is not None else render_pool(config.seed, config.pool_size)
    render_seconds = time.perf_counter() - started
    model = build_model(config.seed).train()
    probe = torch.nn.Linear(CONFIG["embed_dim"], 1)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": rest + list(probe.parameters()), "weight_decay": 0.0}],
                                  lr=config.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))
    losses = []
    for step, batch in zip(range(config.steps), _batches(len(pixels), config.batch_size, config.seed)):
        contrastive, watermark = clip_loss(model, pixels[batch], tokens[batch], probe, (batch % 2).float())
        optimizer.zero_grad(set_to_none=True)
        (contrastive + config.watermark_weight * watermark).backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        losses.append((float(contrastive.detach()), float(watermark.detach())))
        if progress and (step + 1) % 50 == 0:
            recent = np.mean(losses[-50:], axis=0)
            print(f"step {step + 1}/{config.steps}: contrastive {recent[0]:.4f}, watermark {recent[1]:.4f}", flush=True)
    last = np.mean(losses[-20:], axis=0)
    report = {"train": asdict(config), "threads": THREADS, "render_seconds": round(render_seconds, 1),
              "train_seconds": round(time.perf_counter() - started - render_seconds, 1),
              "first_loss": round(losses[0][0], 4), "last_loss": round(float(last[0]), 4),
              "last_watermark_loss": round(float(last[1]), 4)}
    return model.eval(), report


def _lr_factor(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1 + np.cos(np.pi * min(1.0, progress)))


def save(model: open_clip.CLIP, output: str) -> tuple[str, str]:
    """Writes `crawl2clip-tiny.json` (open_clip config) and `crawl2clip-tiny.pt` (float16 weights)."""
    os.makedirs(output, exist_ok=True)
    config_path = os.path.join(output, f"{MODEL_NAME}.json")
    checkpoint_path = os.path.join(output, f"{MODEL_NAME}.pt")
    with open(config_path, "w") as f:
        json.dump(CONFIG, f, indent=2)
        f.write("\n")
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state}, checkpoint_path)
    return config_path, checkpoint_path


def matched_vs_shuffled_auc(image_emb: np.ndarray, text_emb: np.ndarray) -> float:
    """ROC AUC of matched-pair similarities against each image with the caption half the rows
    away (another scene: rows 2k and 2k+1 are one scene, clean and watermarked)."""
    matched = np.sum(image_emb * text_emb, axis=1)
    shuffled = np.sum(image_emb * np.roll(text_emb, len(text_emb) // 2, axis=0), axis=1)
    return roc_auc(np.r_[np.ones(len(matched)), np.zeros(len(shuffled))], np.r_[matched, shuffled])


def held_out_auc(encode_images, encode_texts, count: int = 1000) -> float:
    """Matched-vs-shuffled AUC on `count` held-out scenes, given the model's two encoders
    (preprocessed pixels -> embeddings, captions -> embeddings)."""
    transform = preprocess_transform()
    images, captions = zip(*(example(HELD_OUT_SEED, i) for i in range(count)))
    image_emb = encode_images(torch.stack([transform(image) for image in images]))
    return matched_vs_shuffled_auc(np.asarray(image_emb), np.asarray(encode_texts(list(captions))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crawl2clip.models.tiny_clip",
                                     description="Train the tiny CLIP (deterministic, CPU) and save it.")
    parser.add_argument("--output", required=True, help="folder for crawl2clip-tiny.json and .pt")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--report", help="also write the training report (JSON) here")
    args = parser.parse_args(argv)
    model, report = train(TrainConfig(steps=args.steps), progress=True)
    _, checkpoint = save(model, args.output)
    open_clip.add_model_config(args.output)  # the saved files, through the real loader
    loaded = load_clip(ClipSpec(MODEL_NAME, checkpoint, device="cpu"))
    report["held_out_auc"] = round(held_out_auc(loaded.encode_images, loaded.encode_texts), 4)
    report["checkpoint_bytes"] = os.path.getsize(checkpoint)
    publish_report(report, args.report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
