"""The project's tiny multilingual text tower, distilled into the tiny CLIP's text space.

LAION scored captions that are not English with M-CLIP: a multilingual text encoder taught to
put a translated caption where CLIP's own text tower puts the English original (mean squared
error against the teacher's embedding), so one image tower serves every language. This does
the same at the tiny CLIP's scale: the rendered scenes' captions (models/scenes.py) written in
English, German, French and Spanish from word tables (models/scene_captions.py) are the
translations; the teacher is the tiny CLIP's text tower on the English caption; the student is
a small XLM-R (`transformers`) with mean pooling and a linear projection, and a BPE tokenizer
trained with `tokenizers` on the same captions. It is saved in M-CLIP's format and loads through
models/mclip.py, as a published M-CLIP tower does.

    python -m crawl2clip.models.tiny_multilingual --output models/assets --report bench/results/tiny_multilingual.json

Deterministic: fixed seeds, one thread, `torch.use_deterministic_algorithms(True)`; the tokenizer's
training is deterministic too (checked in tests). The held-out check uses scenes of a seed no
other model here was trained or checked on.
"""

import argparse
import os
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from crawl2clip.models.clip import ASSETS, TINY_MULTILINGUAL, load_clip, tiny_clip_spec
from crawl2clip.models.mclip import MClipSpec, load_mclip, save_mclip
from crawl2clip.models.scene_captions import LANGUAGES, caption
from crawl2clip.models.scenes import random_scene, render_example, scene_rng
from crawl2clip.models.training_report import publish_report

TOWER_NAME = os.path.basename(TINY_MULTILINGUAL)
TRAIN_SEED = 0             # the tiny CLIP's training scenes (only their captions are used here)
HELD_OUT_SEED = 70_000     # scenes nothing in the project trains or checks on
THREADS = 1
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # XLM-R's ids 0-4: <pad> is 1
MAX_TOKENS = 48
RENDER_SIZE = 96
# Letters a Latin-script caption may use, so unseen words split into characters, not <unk>.
ALPHABET = list("abcdefghijklmnopqrstuvwxyz0123456789àáâäãåæçèéêëìíîïñòóôöõøœùúûüýÿßšžčřłńśźżğış")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1500
    batch_size: int = 256
    scenes: int = 8192          # training scenes; each is seen in all four languages
    vocab_size: int = 1000
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    learning_rate: float = 2e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    seed: int = TRAIN_SEED


def train_tokenizer(texts: list[str], vocab_size: int):
    """A BPE tokenizer (lower-cased NFKC, whitespace and punctuation split, XLM-R's special
    tokens) as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=ALPHABET, show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>", model_max_length=MAX_TOKENS)


def build_student(vocab_size: int, config: TrainConfig, embed_dim: int):
    """The untrained tower: a small XLM-R encoder and the projection into the CLIP's space."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    torch.manual_seed(config.seed)
    encoder = XLMRobertaModel(XLMRobertaConfig(
        vocab_size=vocab_size, hidden_size=config.hidden, num_hidden_layers=config.layers,
        num_attention_heads=config.heads, intermediate_size=2 * config.hidden, type_vocab_size=1,
        max_position_embeddings=MAX_TOKENS + 2, pad_token_id=1, bos_token_id=0, eos_token_id=2))
    return encoder, torch.nn.Linear(config.hidden, embed_dim)


def scene_captions(seed: int, count: int) -> dict[str, list[str]]:
    """Language -> the captions of scenes 0..count-1 of `seed` (same order in every language)."""
    scenes = [random_scene(scene_rng(seed, i)) for i in range(count)]
    return {language: [caption(scene, language) for scene in scenes] for language in LANGUAGES}


def _pooled(encoder, projection, input_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    hidden = encoder(input_ids=input_ids, attention_mask=mask)[0]
    weights = mask.unsqueeze(2).to(hidden.dtype)
    return projection((hidden * weights).sum(dim=1) / weights.sum(dim=1))


def _lr_factor(step: int, config: TrainConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1 + np.cos(np.pi * min(1.0, progress)))


def train(config: TrainConfig = TrainConfig(), progress: bool = False) -> tuple:
    """Trains the tower; returns (encoder, projection, tokenizer, report)."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    teacher = load_clip(tiny_clip_spec("cpu"))
    captions = scene_captions(config.seed, config.scenes)
    with torch.inference_mode():
        english = teacher.tokenizer(captions["en"])
        targets = torch.cat([teacher.model.encode_text(english[i:i + 1024]) for i in range(0, len(english), 1024)])
    tokenizer = train_tokenizer([text for language in LANGUAGES for text in captions[language]], config.vocab_size)
    inputs = [tokenizer(captions[language], padding="max_length", truncation=True, max_length=MAX_TOKENS,
                        return_tensors="pt") for language in LANGUAGES]
    input_ids = torch.cat([x["input_ids"] for x in inputs])
    masks = torch.cat([x["attention_mask"] for x in inputs])
    targets = targets.repeat(len(LANGUAGES), 1).clone()  # row k: scene k % scenes, every language
    encoder, projection = build_student(len(tokenizer), config, teacher.embed_dim)
    parameters = list(encoder.parameters()) + list(projection.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, config))
    generator = torch.Generator().manual_seed(config.seed)
    encoder.train()
    losses, order = [], torch.empty(0, dtype=torch.long)
    for step in range(config.steps):
        if len(order) < config.batch_size:
            order = torch.randperm(len(input_ids), generator=generator)
        batch, order = order[:config.batch_size], order[config.batch_size:]
        length = int(masks[batch].sum(dim=1).max())  # cut the padding every row of the batch has
        student = _pooled(encoder, projection, input_ids[batch, :length], masks[batch, :length])
        loss = F.mse_loss(student, targets[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        if progress and (step + 1) % 100 == 0:
            print(f"step {step + 1}/{config.steps}: mse {np.mean(losses[-100:]):.5f}", flush=True)
    report = {"train": asdict(config), "threads": THREADS, "vocab": len(tokenizer),
              "first_loss": round(losses[0], 5), "last_loss": round(float(np.mean(losses[-20:])), 5),
              "train_seconds": round(time.perf_counter() - started, 1)}
    return encoder.eval(), projection.eval(), tokenizer, report


def _recall_at(similarity: np.ndarray, k: int) -> float:
    """Share of rows whose own column is among their k most similar."""
    own = np.diag(similarity)[:, None]
    return float(np.mean((similarity > own).sum(axis=1) < k))


def held_out_report(tower, clip, count: int = 500) -> dict:
    """How close the tower puts each language's captions to the tiny CLIP's English ones, and
    how well they find their pictures, on `count` scenes of HELD_OUT_SEED."""
    from crawl2clip.models.tiny_clip import matched_vs_shuffled_auc

    captions = scene_captions(HELD_OUT_SEED, count)
    images = [render_example(HELD_OUT_SEED, i, RENDER_SIZE)[0] for i in range(count)]
    image_emb = np.concatenate([clip.encode_images(clip.preprocess_images(images[i:i + 256]))
                                for i in range(0, count, 256)])
    english = clip.encode_texts(captions["en"])
    report = {"scenes": count, "seed": HELD_OUT_SEED,
              "baseline_tiny_clip_en": {"auc": round(matched_vs_shuffled_auc(image_emb, english), 4),
                                        "recall_at_10": round(_recall_at(english @ image_emb.T, 10), 4)}}
    for language in LANGUAGES:
        text = tower.encode_texts(captions[language])
        report[language] = {
            "cosine_to_english": round(float(np.mean(np.sum(text * english, axis=1))), 4),
            "auc": round(matched_vs_shuffled_auc(image_emb, text), 4),
            "recall_at_10": round(_recall_at(text @ image_emb.T, 10), 4),
        }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m crawl2clip.models.tiny_multilingual",
                                     description="Train the tiny multilingual text tower (deterministic, CPU).")
    parser.add_argument("--output", default=ASSETS, help=f"folder for {TOWER_NAME}/ (default: models/assets)")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--report", help="also write the report (JSON) here")
    args = parser.parse_args(argv)
    encoder, projection, tokenizer, report = train(TrainConfig(steps=args.steps), progress=True)
    folder = os.path.join(args.output, TOWER_NAME)
    save_mclip(folder, encoder, projection, tokenizer, clip_model={"model": tiny_clip_spec().model})
    tower = load_mclip(MClipSpec(folder, device="cpu"))  # the saved files, through the real loader
    report["held_out"] = held_out_report(tower, load_clip(tiny_clip_spec("cpu")))
    report["bytes"] = sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(folder)
                          for name in names)
    publish_report(report, args.report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
