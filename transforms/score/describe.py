"""What scoring.json records of a run's setup, checked on the way: every text tower must embed
in the image tower's space, and each model must be what its name says.

Run in the launching process before any work (pipelines/score.py), so what would fail in every
worker fails once, first.
"""

import os
from dataclasses import asdict

import open_clip

from crawl2clip.models.clip import ClipSpec, register_project_models
from crawl2clip.models.mclip import MClipSpec, read_config, trained_for
from crawl2clip.transforms.score.content import describe_source, describe_toxicity
from crawl2clip.transforms.score.settings import EN, MULTI, TAG_COLUMNS
from crawl2clip.transforms.score.transform import ScoringSetup

ROUTED_SPLITS = {EN: ["en"], MULTI: ["multi", "nolang", None]}  # each route's splits


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


def describe_setup(setup: ScoringSetup, towers: dict, download_dir: str) -> dict:
    """scoring.json: the input, the towers (`describe_towers` of the setup's) and the splits they
    embed, each tag's source, the toxicity scorer and the thresholds. Loads the heads and the
    toxicity model, so a bad file is refused here."""
    return {
        "input": download_dir,
        **towers,
        "splits": ROUTED_SPLITS,
        "tags": {TAG_COLUMNS[tag]: describe_source(source) for tag, source in setup.sources.items()},
        "toxicity": describe_toxicity(setup.toxicity_model),
        "thresholds": asdict(setup.thresholds),
    }
