"""Evaluating a checkpoint: image-text retrieval on the held-out pairs, zero-shot classification
on a local folder of class folders.

Retrieval follows CLIP_benchmark's: the held-out images are counted once each (pairs with the
same image bytes are one image with several captions); text -> image recall@k is the share of
captions whose image is among the k best-scored images, image -> text the share of images with
at least one of their captions among the k best-scored captions. A candidate that scores the
same as the right one counts as ahead of it, so a model that scores everything alike gets no
credit. Zero-shot: each class is the mean of the (unit) embeddings of its prompts, renormalised,
as in CLIP; top-k accuracy and mean per-class recall.
"""

import io
import os
import tarfile
from dataclasses import dataclass, field

import numpy as np
import pyarrow.parquet as pq
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from PIL import Image, UnidentifiedImageError

from crawl2clip.models.clip import ClipModel
from crawl2clip.transforms.compare.pairs import SHA256, STAGE, TEXT
from crawl2clip.transforms.compare.shards import ROWS, TRAIN_SHARD
from crawl2clip.transforms.download.shards import KEY
from crawl2clip.transforms.errors import error_record

RECALL_KS = (1, 5, 10)
ZERO_SHOT_KS = (1, 5)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
TEMPLATES_FILE = "templates.txt"  # one prompt per line, `{c}` where the class name goes
# CLIP's 80 ImageNet prompts (CLIP_benchmark's default for ImageNet), as `{c}` strings
DEFAULT_TEMPLATES = tuple(template("{c}") for template in OPENAI_IMAGENET_TEMPLATES)
BATCH = 256


def _ranks_ahead(scores: np.ndarray, correct: np.ndarray, is_correct: np.ndarray) -> np.ndarray:
    """Per row, how many wrong candidates score at least the row's best right one."""
    return ((scores >= correct[:, None]) & ~is_correct).sum(axis=1)


def retrieval_recall(image_emb: np.ndarray, text_emb: np.ndarray, text_image: np.ndarray,
                     ks: tuple[int, ...] = RECALL_KS) -> dict[str, dict[int, float]]:
    """Recall@k both ways. `text_image[t]` is the row of caption t's image in `image_emb`."""
    scores = text_emb @ image_emb.T  # captions x images
    is_correct = text_image[:, None] == np.arange(len(image_emb))[None, :]
    t2i = _ranks_ahead(scores, scores[np.arange(len(text_emb)), text_image], is_correct)
    by_image = scores.T
    best = np.where(is_correct.T, by_image, -np.inf).max(axis=1)
    i2t = _ranks_ahead(by_image, best, is_correct.T)
    return {"image_to_text": {k: float(np.mean(i2t < k)) for k in ks},
            "text_to_image": {k: float(np.mean(t2i < k)) for k in ks}}


def class_embeddings(encode_texts, classnames: list[str], templates: tuple[str, ...]) -> np.ndarray:
    """(classes, dim): per class, the renormalised mean of its prompts' unit embeddings."""
    rows = []
    for name in classnames:
        prompts = [template.replace("{c}", name) for template in templates]
        mean = np.asarray(encode_texts(prompts), np.float32).mean(axis=0)
        rows.append(mean / np.linalg.norm(mean))
    return np.stack(rows)


def zero_shot_accuracy(image_emb: np.ndarray, labels: np.ndarray, class_emb: np.ndarray,
                       ks: tuple[int, ...] = ZERO_SHOT_KS) -> dict:
    """top-k accuracy (`topK`; None where there are no more than k classes) and mean per-class recall."""
    scores = image_emb @ class_emb.T
    is_correct = labels[:, None] == np.arange(len(class_emb))[None, :]
    ahead = _ranks_ahead(scores, scores[np.arange(len(labels)), labels], is_correct)
    result = {f"top{k}": (float(np.mean(ahead < k)) if k < len(class_emb) or k == 1 else None) for k in ks}
    recalls = [float(np.mean(ahead[labels == c] < 1)) for c in range(len(class_emb)) if np.any(labels == c)]
    result["mean_per_class_recall"] = float(np.mean(recalls))
    return result


@dataclass
class HeldOut:
    """The held-out pairs as retrieval sees them: unique images, every caption, the image of each."""
    images: list[Image.Image]
    texts: list[str]
    text_image: np.ndarray
    errors: list[dict] = field(default_factory=list)


def _open_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def read_held_out(held_out_dir: str) -> HeldOut:
    """The held-out shards written by shards.py (rows.parquet + tars), read back."""
    rows = pq.read_table(os.path.join(held_out_dir, ROWS)).to_pylist()
    wanted = {row[KEY] for row in rows}
    found: dict[str, bytes] = {}
    for tar_path in sorted({row[TRAIN_SHARD] for row in rows}):
        with tarfile.open(tar_path) as tar:
            for member in tar:
                stem, _, ext = os.path.basename(member.name).partition(".")
                if stem in wanted and "." + ext in IMAGE_SUFFIXES:
                    found[stem] = tar.extractfile(member).read()
    images, texts, text_image, errors = [], [], [], []
    image_of: dict[str, int] = {}
    for row in rows:
        group = row[SHA256] or row[KEY]
        if group not in image_of:
            try:
                images.append(_open_image(found[row[KEY]]))
            except (KeyError, OSError, UnidentifiedImageError) as exc:
                errors.append(error_record(STAGE, "unreadable_held_out_image", source=row[TRAIN_SHARD],
                                           detail=f"{row[KEY]}: {type(exc).__name__}: {exc}"))
                continue
            image_of[group] = len(images) - 1
        texts.append(row[TEXT])
        text_image.append(image_of[group])
    return HeldOut(images, texts, np.array(text_image, np.int64), errors)


@dataclass
class ClassFolders:
    """A zero-shot dataset: class names (folder names, `_` read as a space), images and labels,
    the prompts (`templates.txt` in the folder, else CLIP's ImageNet prompts)."""
    root: str
    classnames: list[str]
    paths: list[str]
    labels: np.ndarray
    templates: tuple[str, ...]


def read_class_folders(root: str) -> ClassFolders:
    """The folder's layout; ValueError when it is no usable dataset (checked before any training)."""
    if not os.path.isdir(root):
        raise ValueError(f"--zero-shot-dir {root}: no such folder")
    folders = sorted(name for name in os.listdir(root) if os.path.isdir(os.path.join(root, name)))
    paths, labels = [], []
    for label, folder in enumerate(folders):
        for name in sorted(os.listdir(os.path.join(root, folder))):
            if name.lower().endswith(IMAGE_SUFFIXES):
                paths.append(os.path.join(root, folder, name))
                labels.append(label)
    if len(folders) < 2 or not paths:
        raise ValueError(f"--zero-shot-dir {root}: needs at least two class folders holding images "
                         f"({', '.join(IMAGE_SUFFIXES)}); found {len(folders)} folders, {len(paths)} images")
    templates = DEFAULT_TEMPLATES
    template_file = os.path.join(root, TEMPLATES_FILE)
    if os.path.isfile(template_file):
        with open(template_file) as f:
            templates = tuple(line.strip() for line in f if line.strip())
        if not templates or not all("{c}" in t for t in templates):
            raise ValueError(f"{template_file}: every line must be a prompt with {{c}} where the class name goes")
    return ClassFolders(root, [f.replace("_", " ") for f in folders], paths, np.array(labels, np.int64), templates)


@dataclass
class ZeroShotSet:
    """A ClassFolders dataset's images, decoded once for every checkpoint."""
    folders: ClassFolders
    images: list[Image.Image]
    labels: np.ndarray
    errors: list[dict] = field(default_factory=list)


def load_zero_shot(folders: ClassFolders) -> ZeroShotSet:
    """Decodes the images; one that cannot be read is left out, with an error record."""
    images, labels, errors = [], [], []
    for path, label in zip(folders.paths, folders.labels):
        try:
            with open(path, "rb") as f:
                images.append(_open_image(f.read()))
            labels.append(label)
        except (OSError, UnidentifiedImageError) as exc:
            errors.append(error_record(STAGE, "unreadable_zero_shot_image", source=path,
                                       detail=f"{type(exc).__name__}: {exc}"))
    return ZeroShotSet(folders, images, np.array(labels, np.int64), errors)


def encode_images(model: ClipModel, images: list[Image.Image]) -> np.ndarray:
    parts = [model.encode_images(model.preprocess_images(images[i:i + BATCH])) for i in range(0, len(images), BATCH)]
    return np.concatenate(parts) if parts else np.zeros((0, model.embed_dim), np.float32)


def encode_texts(model: ClipModel, texts: list[str]) -> np.ndarray:
    parts = [model.encode_texts(texts[i:i + BATCH]) for i in range(0, len(texts), BATCH)]
    return np.concatenate(parts) if parts else np.zeros((0, model.embed_dim), np.float32)


def evaluate(model: ClipModel, held_out: HeldOut, zero_shot: ZeroShotSet | None) -> dict:
    """Retrieval on the held-out pairs and, with a dataset, zero-shot accuracy."""
    result: dict = {"held_out_images": len(held_out.images), "held_out_texts": len(held_out.texts)}
    if held_out.texts:
        result["retrieval"] = retrieval_recall(encode_images(model, held_out.images),
                                               encode_texts(model, held_out.texts), held_out.text_image)
    if zero_shot is not None and zero_shot.images:
        folders = zero_shot.folders
        classes = class_embeddings(lambda texts: encode_texts(model, texts), folders.classnames, folders.templates)
        result["zero_shot"] = {**zero_shot_accuracy(encode_images(model, zero_shot.images), zero_shot.labels, classes),
                               "images": len(zero_shot.images), "classes": len(folders.classnames),
                               "prompts": len(folders.templates)}
    return result
