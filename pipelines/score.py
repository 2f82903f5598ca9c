"""The score job: a download folder's shards -> CLIP embeddings, similarity and content tags in
clip-retrieval's layout, with the pairs under the thresholds set aside.

One image embedding space per run: every image through one CLIP's image tower, the English
captions through its text tower, the others through a multilingual text tower trained into the
same space. Everything that would fail in every worker, or mix spaces, is refused here first.

This module maps the options onto the run's setup and composes the stage, which is one
PTransform (transforms/score/transform.ScoreShards); download and output folders may be on any
Beam filesystem.
"""

import os

import apache_beam as beam
import torch

from crawl2clip.models.clip import TINY_MULTILINGUAL, ClipSpec, tiny_clip_spec
from crawl2clip.models.mclip import MClipSpec
from crawl2clip.pipelines.options import Crawl2ClipOptions
from crawl2clip.transforms import files
from crawl2clip.transforms.score.content import tag_sources
from crawl2clip.transforms.score.describe import clip_embed_dim, describe_setup, describe_towers
from crawl2clip.transforms.score.settings import (
    AESTHETIC,
    CLIP_TEXT_TOWER,
    DEFAULT_MULTI_TEXT_MODEL,
    EN,
    MULTI,
    TAG_COLUMNS,
    TOXIC_COLUMN,
    UNSAFE,
    WATERMARK,
    BatchSizes,
    Thresholds,
    default_batch,
    record_settings,
)
from crawl2clip.transforms.score.shards import download_shards
from crawl2clip.transforms.score.transform import ScoreShards, ScoringSetup


def _path(value: str | None) -> str | None:
    """A local file or folder made absolute (workers may run elsewhere); a tag, a Hugging Face
    id or a Beam filesystem URL as it is."""
    return os.path.abspath(value) if value and "://" not in value and os.path.exists(value) else value


def image_spec(options: Crawl2ClipOptions) -> ClipSpec:
    """The run's one CLIP: its image tower embeds every image."""
    if options.tiny_clip:
        tiny = tiny_clip_spec(options.clip_device)
        return ClipSpec(tiny.model, tiny.pretrained, tiny.device, options.clip_precision)
    return ClipSpec(options.clip_model, _path(options.clip_pretrained), options.clip_device, options.clip_precision)


def text_specs(options: Crawl2ClipOptions, image: ClipSpec) -> dict[str, MClipSpec | None]:
    """Each route's text tower: None for the CLIP's own, else an M-CLIP tower. Refuses a second CLIP."""
    if options.multi_clip_model or options.multi_clip_pretrained:
        same = (options.multi_clip_model == image.model
                and (_path(options.multi_clip_pretrained) or None) == (image.pretrained or None))
        if not same:
            raise ValueError(
                f"--multi-clip-model {options.multi_clip_model} {options.multi_clip_pretrained or ''} would embed the "
                f"images of multi/nolang pairs with a second image tower, beside {image.model}'s: one run keeps one "
                "embedding space. Give --multi-text-model (a text tower trained into --clip-model's space, e.g. "
                f"{DEFAULT_MULTI_TEXT_MODEL} for ViT-B-32), or --clip-model {options.multi_clip_model} "
                "--multi-text-model clip to use that multilingual CLIP for every split")
        return {EN: None, MULTI: None}
    multi = options.multi_text_model
    if options.tiny_clip and multi == DEFAULT_MULTI_TEXT_MODEL:
        multi = TINY_MULTILINGUAL
    if multi == CLIP_TEXT_TOWER:
        return {EN: None, MULTI: None}
    return {EN: None, MULTI: MClipSpec(_path(multi), options.clip_device, options.clip_precision)}


def thresholds(options: Crawl2ClipOptions, computed: set[str]) -> Thresholds:
    """The drop thresholds; a limit on a tag the run does not compute is refused."""
    limits = {TAG_COLUMNS[UNSAFE]: ("max_punsafe", options.max_punsafe),
              TAG_COLUMNS[WATERMARK]: ("max_pwatermark", options.max_pwatermark),
              TOXIC_COLUMN: ("max_ptoxic", options.max_ptoxic)}
    for column, (name, limit) in limits.items():
        if limit is not None and column not in computed:
            given = {"punsafe": "--unsafe-head (LAION's NSFW head for this CLIP)",
                     "pwatermark": "--watermark-model (LAION's detector) or --watermark-head"}[column]
            raise ValueError(f"--{name.replace('_', '-')}: {column} is not computed in this run (no model for "
                             f"this CLIP); give {given}, or --zero-shot-tags for CLIP prompts")
    return Thresholds(min_similarity={EN: options.min_similarity_en, MULTI: options.min_similarity_multi},
                      max_tags={column: limit for column, (_, limit) in limits.items() if limit is not None},
                      score_only=options.score_only)


def scoring_setup(options: Crawl2ClipOptions) -> tuple[ScoringSetup, dict]:
    """The run's models and settings from the options, and their description for scoring.json:
    refuses here (before any work) what would fail in every worker or mix embedding spaces."""
    image = image_spec(options)
    texts = text_specs(options, image)
    towers = describe_towers(image, texts)
    sources = tag_sources(image, clip_embed_dim(image),
                          {UNSAFE: _path(options.unsafe_head), WATERMARK: _path(options.watermark_head),
                           AESTHETIC: _path(options.aesthetic_head)},
                          _path(options.watermark_model), options.zero_shot_tags)
    computed = {TAG_COLUMNS[tag] for tag, source in sources.items() if source.computed} | {TOXIC_COLUMN}
    batch = default_batch(options.clip_device, torch.cuda.is_available())
    sizes = BatchSizes(images=options.image_batch_size or batch, texts=options.text_batch_size or batch,
                       decode_workers=options.decode_workers)
    return ScoringSetup(image, texts, sources, options.toxicity_model, thresholds(options, computed), sizes), towers


def score_shards(shard_numbers: beam.PCollection, options: Crawl2ClipOptions, download_dir: str,
                 output_dir: str) -> beam.PCollection:
    """Adds the stage for the download shards `shard_numbers` will name; returns (shard number,
    its counters) per part written. Checks the setup and records it in scoring.json first."""
    setup, towers = scoring_setup(options)
    record_settings(output_dir, describe_setup(setup, towers, download_dir))
    return shard_numbers | "ScoreShards" >> ScoreShards(download_dir, output_dir, setup)


def build_score(pipeline: beam.Pipeline, options: Crawl2ClipOptions) -> None:
    download_dir = options.input[0]
    download_dir = os.path.abspath(download_dir) if files.is_local(download_dir) else download_dir
    numbers = download_shards(download_dir)
    if not numbers:
        raise ValueError(f"{download_dir}: no finished download shard (NNNNN_stats.json)")
    score_shards(pipeline | "DownloadShards" >> beam.Create(numbers), options, download_dir, options.output_dir)
