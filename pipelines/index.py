"""The index job: SCORE_DIR (clip-retrieval embeddings) -> INDEX_DIR for `crawl2clip serve`,
each on any Beam filesystem."""

import apache_beam as beam

from crawl2clip.pipelines.options import Crawl2ClipOptions
from crawl2clip.transforms import files
from crawl2clip.transforms.errors import WriteErrors
from crawl2clip.transforms.index.choice import parse_memory
from crawl2clip.transforms.index.transform import BuildIndex, prepare_index
from crawl2clip.transforms.score.settings import SCORING_JSON

_CLIP_FIELDS = ("model", "pretrained", "device", "precision")


def clip_from_scoring(score_dir: str) -> dict | None:
    """The CLIP that encoded SCORE_DIR's embeddings, as named in its scoring.json: its
    `image_tower` with the `text_towers` of each route (queries are encoded by their language's),
    or in older files the first {"model": ..., "pretrained": ...} found, preferring the English split's."""
    path = files.join(score_dir, SCORING_JSON)
    if not files.exists(path):
        return None
    scoring = files.read_marker(path)
    if isinstance(scoring.get("image_tower"), dict):
        return {**{k: v for k, v in scoring["image_tower"].items() if k in _CLIP_FIELDS},
                "text_towers": scoring.get("text_towers", {})}
    found: list[tuple[tuple[str, ...], dict]] = []
    _find_specs(scoring, (), found)
    if not found:
        return None
    found.sort(key=lambda item: "en" not in item[0])
    return {k: v for k, v in found[0][1].items() if k in _CLIP_FIELDS}


def _find_specs(node, path: tuple[str, ...], found: list) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("model"), str):
            found.append((path, node))
        for key, value in node.items():
            _find_specs(value, path + (str(key),), found)
    elif isinstance(node, list):
        for value in node:
            _find_specs(value, path, found)


def query_clip(options: Crawl2ClipOptions) -> dict | None:
    if options.query_model:
        return {"model": options.query_model, "pretrained": options.query_pretrained}
    return clip_from_scoring(options.index_source())


def build_index(pipeline: beam.Pipeline, options: Crawl2ClipOptions) -> None:
    modalities = ["image", "text"] if options.index_text else ["image"]
    plan = prepare_index(options.index_source(), options.output_dir, modalities, parse_memory(options.max_memory),
                         options.index_shards, options.target_recall, not options.no_thumbnails,
                         query_clip(options), options.exact_max_rows)
    built = pipeline | "BuildIndex" >> BuildIndex(plan)
    built["errors"] | "WriteErrors" >> WriteErrors(options.output_dir)
