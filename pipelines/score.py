"""The score job: a download folder's shards -> CLIP embeddings, similarity and content tags in
clip-retrieval's layout, with the pairs under the thresholds set aside."""

import json
import os
from dataclasses import asdict

import apache_beam as beam
import open_clip

from crawl2clip.models.clip import ClipSpec, tiny_clip_spec
from crawl2clip.pipelines.options import Crawl2ClipOptions
from crawl2clip.transforms.score.content import describe_toxicity, embed_dim, head_sources
from crawl2clip.transforms.score.settings import (
    EN,
    MULTI,
    TAG_COLUMNS,
    TOXIC_COLUMN,
    UNSAFE,
    WATERMARK,
    BatchSizes,
    Thresholds,
)
from crawl2clip.transforms.score.shards import download_shards
from crawl2clip.transforms.score.transform import (
    FilterBySimilarity,
    ReadDownloadShards,
    ScoreWithClip,
    TagContent,
    WriteScoredShards,
)

SCORING_JSON = "scoring.json"
ROUTED_SPLITS = {EN: ["en"], MULTI: ["multi", "nolang", None]}


def _pretrained(value: str | None) -> str | None:
    """A checkpoint path made absolute (workers may run elsewhere); a tag as it is."""
    return os.path.abspath(value) if value and os.path.isfile(value) else value


def clip_specs(options: Crawl2ClipOptions) -> dict[str, ClipSpec]:
    if options.tiny_clip:
        tiny = tiny_clip_spec(options.clip_device)
        tiny = ClipSpec(tiny.model, tiny.pretrained, tiny.device, options.clip_precision)
        return {EN: tiny, MULTI: tiny}
    return {
        EN: ClipSpec(options.clip_model, _pretrained(options.clip_pretrained), options.clip_device,
                     options.clip_precision),
        MULTI: ClipSpec(options.multi_clip_model, _pretrained(options.multi_clip_pretrained), options.clip_device,
                        options.clip_precision),
    }


def check_models(specs: dict[str, ClipSpec]) -> None:
    """Fails before the run on what would fail in every worker: an unknown model, a pretrained
    value that is neither a tag of the model nor a file, or two splits embedding in different
    sizes (their embeddings share one set of arrays)."""
    sizes = {}
    for route, spec in specs.items():
        sizes[route] = embed_dim(spec)
        if sizes[route] is None:
            raise ValueError(f"{spec.model}: not an open_clip model name")
        if spec.pretrained and not os.path.isfile(spec.pretrained) \
                and spec.pretrained not in open_clip.list_pretrained_tags_by_model(spec.model):
            raise ValueError(f"{spec.model}: {spec.pretrained!r} is neither one of its pretrained tags "
                             f"({', '.join(open_clip.list_pretrained_tags_by_model(spec.model)) or 'none'}) nor a file")
    if len(set(sizes.values())) > 1:
        raise ValueError(f"the en and multi CLIPs embed in different sizes ({sizes}); score them into "
                         "separate outputs, or choose models of one size")


def thresholds(options: Crawl2ClipOptions) -> Thresholds:
    limits = {TAG_COLUMNS[UNSAFE]: options.max_punsafe, TAG_COLUMNS[WATERMARK]: options.max_pwatermark,
              TOXIC_COLUMN: options.max_ptoxic}
    return Thresholds(min_similarity={EN: options.min_similarity_en, MULTI: options.min_similarity_multi},
                      max_tags={column: limit for column, limit in limits.items() if limit is not None},
                      score_only=options.score_only)


def record_settings(output_dir: str, settings: dict) -> None:
    """Writes OUTPUT/scoring.json; a rerun into the same folder (to resume) must use the same
    settings, or the parts would disagree."""
    path = os.path.join(output_dir, SCORING_JSON)
    text = json.dumps(settings, indent=2, sort_keys=True)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if json.load(f) != json.loads(text):
                raise ValueError(f"{output_dir} was scored with other settings ({path}); "
                                 "use a new --output or the same options")
        return
    os.makedirs(output_dir, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def score_shards(shard_numbers: beam.PCollection, options: Crawl2ClipOptions, download_dir: str,
                 output_dir: str) -> beam.PCollection:
    """Adds the stage for the download shards `shard_numbers` will name; returns the written
    parts' counts. Checks what would fail in every worker and records the settings first."""
    specs = clip_specs(options)
    check_models(specs)
    heads = head_sources(specs, {UNSAFE: options.unsafe_head, WATERMARK: options.watermark_head})
    limits = thresholds(options)
    record_settings(output_dir, {
        "input": download_dir,
        "models": {route: asdict(spec) for route, spec in specs.items()},
        "splits": ROUTED_SPLITS,
        "heads": {tag: {h.route: h.describe() for h in heads if h.tag == tag} for tag in TAG_COLUMNS},
        "toxicity": describe_toxicity(options.toxicity_model),
        "thresholds": asdict(limits),
    })
    sizes = BatchSizes(images=options.image_batch_size, texts=options.text_batch_size,
                       decode_workers=options.decode_workers)
    return (shard_numbers
            | "ReadDownloadShards" >> ReadDownloadShards(download_dir, output_dir)
            | "ScoreWithClip" >> ScoreWithClip(specs, sizes)
            | "TagContent" >> TagContent(specs, heads, options.toxicity_model)
            | "FilterBySimilarity" >> FilterBySimilarity(limits)
            | "WriteScoredShards" >> WriteScoredShards(output_dir))


def build_score(pipeline: beam.Pipeline, options: Crawl2ClipOptions) -> None:
    download_dir = os.path.abspath(options.input[0])
    numbers = download_shards(download_dir)
    if not numbers:
        raise ValueError(f"{download_dir}: no finished download shard (NNNNN_stats.json)")
    score_shards(pipeline | "DownloadShards" >> beam.Create(numbers), options, download_dir, options.output_dir)
