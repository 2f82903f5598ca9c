"""The score job: a download folder's shards -> CLIP embeddings, similarity and content tags in
clip-retrieval's layout, with the pairs under the thresholds set aside.

One image embedding space per run: every image through one CLIP's image tower, the English
captions through its text tower, the others through a multilingual text tower trained into the
same space. Everything that would fail in every worker, or mix spaces, is refused here first.
"""

import json
import os
from dataclasses import asdict

import apache_beam as beam
import open_clip
import torch

from crawl2clip.models.clip import TINY_MULTILINGUAL, ClipSpec, register_project_models, tiny_clip_spec
from crawl2clip.models.mclip import MClipSpec, read_config, trained_for
from crawl2clip.pipelines.options import Crawl2ClipOptions
from crawl2clip.transforms.score.content import IMAGE_MODEL, describe_source, describe_toxicity, tag_sources
from crawl2clip.transforms.score.settings import (
    SCORING_JSON,
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
)
from crawl2clip.transforms.score.shards import download_shards
from crawl2clip.transforms.score.transform import (
    DetectWatermarks,
    FilterBySimilarity,
    ReadDownloadShards,
    ScoreWithClip,
    TagContent,
    WriteScoredShards,
)

ROUTED_SPLITS = {EN: ["en"], MULTI: ["multi", "nolang", None]}


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


def clip_embed_dim(spec: ClipSpec) -> int | None:
    """The CLIP's embedding size from its config, without loading weights."""
    register_project_models()
    return (open_clip.get_model_config(spec.model) or {}).get("embed_dim")


def _check_image_tower(spec: ClipSpec) -> int:
    dim = clip_embed_dim(spec)
    if dim is None:
        raise ValueError(f"{spec.model}: not an open_clip model name")
    if spec.pretrained and not os.path.isfile(spec.pretrained) \
            and spec.pretrained not in open_clip.list_pretrained_tags_by_model(spec.model):
        raise ValueError(f"{spec.model}: {spec.pretrained!r} is neither one of its pretrained tags "
                         f"({', '.join(open_clip.list_pretrained_tags_by_model(spec.model)) or 'none'}) nor a file")
    return dim


def _fits(trained: dict, image: ClipSpec) -> bool:
    """Whether a tower trained for `trained` (model, maybe pretrained) shares `image`'s space. A
    checkpoint file cannot be told apart from a tag's weights by name: the model name decides then."""
    if trained.get("model") != image.model:
        return False
    pretrained = trained.get("pretrained")
    return not pretrained or not image.pretrained or os.path.isfile(image.pretrained) or pretrained == image.pretrained


def describe_towers(image: ClipSpec, texts: dict[str, MClipSpec | None]) -> dict:
    """Checks that every tower works in `image`'s embedding space; returns what scoring.json records."""
    dim = _check_image_tower(image)
    own = {"kind": "clip", "model": image.model, "pretrained": image.pretrained}
    described = {}
    for route, spec in texts.items():
        if spec is None:
            described[route] = own
            continue
        config = read_config(spec.source)
        trained = trained_for(spec.source, config)
        if int(config["numDims"]) != dim:
            raise ValueError(f"{spec.source}: its text embeddings have {config['numDims']} dimensions, {image.model}'s "
                             f"{dim}: it was not trained for this CLIP (give --multi-text-model for {image.model}, "
                             "or 'clip')")
        if trained and not _fits(trained, image):
            raise ValueError(f"{spec.source} was trained into the space of {trained.get('model')} "
                             f"{trained.get('pretrained') or ''}, not {image.model} {image.pretrained or ''}: give "
                             f"--multi-text-model for {image.model}, or 'clip' for its own text tower")
        described[route] = {"kind": "m-clip", "source": spec.source, "model_base": config["modelBase"],
                            "embed_dim": dim, "trained_for": trained}
    return {"image_tower": asdict(image), "text_towers": described}


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
    image = image_spec(options)
    texts = text_specs(options, image)
    towers = describe_towers(image, texts)
    sources = tag_sources(image, clip_embed_dim(image),
                          {UNSAFE: _path(options.unsafe_head), WATERMARK: _path(options.watermark_head),
                           AESTHETIC: _path(options.aesthetic_head)},
                          _path(options.watermark_model), options.zero_shot_tags)
    computed = {TAG_COLUMNS[tag] for tag, source in sources.items() if source.computed} | {TOXIC_COLUMN}
    limits = thresholds(options, computed)
    record_settings(output_dir, {
        "input": download_dir,
        **towers,
        "splits": ROUTED_SPLITS,
        "tags": {TAG_COLUMNS[tag]: describe_source(source) for tag, source in sources.items()},
        "toxicity": describe_toxicity(options.toxicity_model),
        "thresholds": asdict(limits),
    })
    batch = default_batch(options.clip_device, torch.cuda.is_available())
    sizes = BatchSizes(images=options.image_batch_size or batch, texts=options.text_batch_size or batch,
                       decode_workers=options.decode_workers)
    watermark = sources[WATERMARK]
    scored = (shard_numbers
              | "ReadDownloadShards" >> ReadDownloadShards(download_dir, output_dir)
              | "ScoreWithClip" >> ScoreWithClip(image, texts, sizes, keep_images=watermark.kind == IMAGE_MODEL))
    if watermark.kind == IMAGE_MODEL:
        scored = scored | "DetectWatermarks" >> DetectWatermarks(watermark.path, options.clip_device,
                                                                 options.clip_precision, sizes)
    return (scored
            | "TagContent" >> TagContent(image, sources, options.toxicity_model)
            | "FilterBySimilarity" >> FilterBySimilarity(limits)
            | "WriteScoredShards" >> WriteScoredShards(output_dir))


def build_score(pipeline: beam.Pipeline, options: Crawl2ClipOptions) -> None:
    download_dir = os.path.abspath(options.input[0])
    numbers = download_shards(download_dir)
    if not numbers:
        raise ValueError(f"{download_dir}: no finished download shard (NNNNN_stats.json)")
    score_shards(pipeline | "DownloadShards" >> beam.Create(numbers), options, download_dir, options.output_dir)
