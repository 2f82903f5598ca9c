"""Builds a real scoring-stage output for the index and explorer tests (no tests in here).

Real photos (../shared/data/photos, ../shared/data/pairs/clipscore) and rendered shapes with
captions are written as download shards by the download stage's ShardWriter, encoded with a CLIP
through crawl2clip.models.clip (the project's tiny model when its checkpoint exists, else a small
random-weight open_clip model saved as a checkpoint, so the server loads the same weights), and
written with transforms/embeddings.write_part.
"""

import hashlib
import io
import json
import os

import open_clip
import pyarrow as pa
import torch
from PIL import Image, ImageDraw

from crawl2clip.models.clip import ClipSpec, load_clip, tiny_clip_spec
from crawl2clip.transforms.download.images import ProcessedImage
from crawl2clip.transforms.download.shards import ShardWriter
from crawl2clip.transforms.embeddings import write_part

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
PHOTOS = {
    "123_456.jpg": "a kitten close-up",
    "208_495.jpg": "a boardwalk through the dunes to the sea",
    "321_421.jpg": "palm trees under a blue sky",
    "389_535.jpg": "a rusty motel sign",
    "416_264.jpg": "succulents seen from above",
    "456_123.jpg": "a tabby kitten",
    "524_316.jpg": "a church facade between old buildings",
}
TEST_MODEL = "c2c-test-tiny"
TEST_MODEL_CONFIG = {"embed_dim": 64,
                     "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
                     "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}}
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 60, 220), "yellow": (240, 210, 30)}
GERMAN = {"red": "roter", "green": "grüner", "blue": "blauer", "yellow": "gelber"}
SHAPES = ("circle", "square", "triangle")


def clip_spec(root: str) -> tuple[ClipSpec, str | None]:
    """The CLIP to use and, for the random test model, the folder holding its config (which a
    process must register with open_clip.add_model_config before loading it)."""
    tiny = tiny_clip_spec(device="cpu")
    if os.path.isfile(tiny.pretrained):
        return tiny, None
    config_dir = os.path.join(root, "model-config")
    os.makedirs(config_dir, exist_ok=True)
    with open(os.path.join(config_dir, f"{TEST_MODEL}.json"), "w") as f:
        json.dump(TEST_MODEL_CONFIG, f)
    open_clip.add_model_config(config_dir)
    checkpoint = os.path.join(root, f"{TEST_MODEL}.pt")
    if not os.path.exists(checkpoint):
        torch.manual_seed(0)
        model = open_clip.create_model(TEST_MODEL, pretrained=None)
        torch.save(model.state_dict(), checkpoint)
    return ClipSpec(model=TEST_MODEL, pretrained=checkpoint, device="cpu"), config_dir


def rendered(colour: str, shape: str, size: tuple[int, int]) -> bytes:
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    w, h = size
    box = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)
    if shape == "circle":
        draw.ellipse(box, fill=COLOURS[colour])
    elif shape == "square":
        draw.rectangle(box, fill=COLOURS[colour])
    else:
        draw.polygon([(w // 2, h // 4), (3 * w // 4, 3 * h // 4), (w // 4, 3 * h // 4)], fill=COLOURS[colour])
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


def samples() -> list[dict]:
    """(image bytes, caption, language, scores) of every test pair, in a fixed order."""
    rows = []
    for name, caption in PHOTOS.items():
        with open(os.path.join(DATA, "photos", name), "rb") as f:
            rows.append({"image": f.read(), "TEXT": caption, "LANGUAGE": "en"})
    with open(os.path.join(DATA, "pairs", "clipscore", "good_captions.json")) as f:
        captions = json.load(f)
    for name, caption in sorted(captions.items()):
        with open(os.path.join(DATA, "pairs", "clipscore", "images", f"{name}.jpg"), "rb") as f:
            rows.append({"image": f.read(), "TEXT": caption, "LANGUAGE": "en"})
    # the same photo again under another URL: a near-duplicate the explorer must fold
    rows.append({**rows[5], "duplicate": True})
    for i, (colour, shape) in enumerate((c, s) for c in COLOURS for s in SHAPES):
        size = (1280, 960) if i % 3 == 0 else (160, 120)
        german = i % 4 == 1
        text = f"ein {GERMAN[colour]} Kreis" if german else f"a {colour} {shape} on a white background"
        rows.append({"image": rendered(colour, shape, size), "TEXT": text, "LANGUAGE": "de" if german else "en"})
    for i, row in enumerate(rows):
        row["URL"] = f"https://img{i % 3}.example.com/{i}.jpg"
        row["punsafe"] = round((i * 37 % 100) / 100, 2)
        row["pwatermark"] = round((i * 53 % 100) / 100, 2)
    return rows


def build_score_dir(root: str) -> dict:
    """A scoring output under root/score with download shards under root/download; returns
    {"score_dir", "download_dir", "spec", "config_dir", "rows" (metadata dicts in index order)}."""
    spec, config_dir = clip_spec(root)
    model = load_clip(spec)
    download_dir = os.path.join(root, "download")
    score_dir = os.path.join(root, "score")
    rows = samples()
    shard_of = [0 if i % 2 == 0 else 2 for i in range(len(rows))]  # parts 0 and 2: a gap, as in real runs
    metadata_rows = []
    for shard in (0, 2):
        members = [r for r, s in zip(rows, shard_of) if s == shard]
        writer = ShardWriter(download_dir, shard, fsync=False)
        part = []
        for row in members:
            image = Image.open(io.BytesIO(row["image"]))
            sha = hashlib.sha256(row["image"]).hexdigest()
            key = writer.write({"URL": row["URL"], "TEXT": row["TEXT"]},
                               ProcessedImage(row["image"], image.width, image.height, image.width, image.height,
                                              sha, "jpeg"))
            uid = hashlib.blake2b(f"{row['URL']}{row['TEXT']}".encode(), digest_size=16).hexdigest()
            part.append({"key": key, "shard": os.path.abspath(writer.tar_path), "URL": row["URL"],
                         "TEXT": row["TEXT"], "WIDTH": image.width, "HEIGHT": image.height,
                         "LANGUAGE": row["LANGUAGE"], "split": "en" if row["LANGUAGE"] == "en" else "multi",
                         "punsafe": row["punsafe"], "pwatermark": row["pwatermark"], "ptoxic": 0.0,
                         "uid": uid, "hash": int.from_bytes(bytes.fromhex(uid[:16]), "big", signed=True),
                         "sha256": sha, "image": image})
        writer.close()
        img = model.encode_images(model.preprocess_images([p.pop("image").convert("RGB") for p in part]))
        txt = model.encode_texts([p["TEXT"] for p in part])
        for p, i, t in zip(part, img, txt):
            p["similarity"] = float(i @ t)
        table = pa.Table.from_pylist(part).cast(pa.schema(
            [pa.field(n, pa.float32()) if n in ("punsafe", "pwatermark", "ptoxic", "similarity")
             else pa.Table.from_pylist(part).schema.field(n) for n in part[0]]))
        write_part(score_dir, shard, img, txt, table)
        metadata_rows.extend(part)
    with open(os.path.join(score_dir, "scoring.json"), "w") as f:
        json.dump({"splits": {"en": {"clip": {"model": spec.model, "pretrained": spec.pretrained}}}}, f)
    return {"score_dir": score_dir, "download_dir": download_dir, "spec": spec, "config_dir": config_dir,
            "rows": metadata_rows}
