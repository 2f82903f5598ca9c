"""Test helpers for the scoring stage: rendered scenes, download shards written by the download
stage's own writer, and a small random-weight CLIP registered with open_clip."""

import hashlib
import io
import json
import os
import tarfile

import open_clip
from PIL import Image

from crawl2clip.models.clip import ClipSpec
from crawl2clip.models.scenes import render_example
from crawl2clip.models.tiny_clip import CONFIG
from crawl2clip.transforms.download.images import ProcessedImage
from crawl2clip.transforms.download.shards import ShardWriter
from crawl2clip.transforms.extract.rules import pair_uid

RANDOM_TINY = "score-test-random-tiny"


def register_random_tiny(folder: str) -> ClipSpec:
    """The tiny CLIP's architecture with random weights (each load draws new ones)."""
    with open(os.path.join(folder, f"{RANDOM_TINY}.json"), "w") as f:
        json.dump(CONFIG, f)
    open_clip.add_model_config(folder)
    return ClipSpec(RANDOM_TINY, None, device="cpu")


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def scene_pairs(seed: int, count: int) -> list[tuple[bytes, str]]:
    """(JPEG bytes, true caption) of `count` rendered scenes."""
    return [(jpeg(image), scene.caption()) for image, scene in (render_example(seed, i) for i in range(count))]


def write_download_shard(folder: str, number: int, pairs: list[tuple[bytes, str, str]], size: int = 96) -> list[dict]:
    """Writes download shard `number` of (image bytes, caption, split) successes, as the download
    stage would have stored `size`-pixel images of twice that size; returns its rows."""
    rows = []
    with ShardWriter(folder, number, fsync=False) as writer:
        for i, (data, caption, split) in enumerate(pairs):
            url = f"http://images.test/{number}/{i}.jpg"
            row = {"URL": url, "TEXT": caption, "uid": pair_uid(url, caption), "LANGUAGE": "en" if split == "en" else None,
                   "split": split, "position": i}
            writer.write(row, ProcessedImage(data=data, width=size, height=size, original_width=size * 2,
                                             original_height=size * 2, sha256=hashlib.sha256(data).hexdigest(),
                                             source_format="jpeg"))
            rows.append(row)
    return rows


def replace_tar_member(tar_path: str, name: str, data: bytes | None) -> None:
    """Rewrites a tar with member `name`'s bytes replaced (None: removed)."""
    with tarfile.open(tar_path) as tar:
        members = [(member, tar.extractfile(member).read()) for member in tar.getmembers()]
    with tarfile.open(tar_path, "w") as tar:
        for member, content in members:
            if member.name == name:
                if data is None:
                    continue
                content, member.size = data, len(data)
            tar.addfile(member, io.BytesIO(content))
