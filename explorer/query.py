"""Queries against an index: encoding them with the index's CLIP, searching with filters, and
dropping near-duplicate results. Shared by the server and `crawl2clip subset`."""

import io

import numpy as np
from PIL import Image

from crawl2clip.models.clip import ClipSpec, load_clip
from crawl2clip.transforms.download.images import sniff_image_format
from crawl2clip.transforms.index.search import remove_near_duplicates
from crawl2clip.transforms.index.store import IndexStore

MAX_UPLOAD_BYTES = 10 * 2**20
MAX_UPLOAD_PIXELS = 40_000_000
UPLOAD_FORMATS = ("jpeg", "png", "webp")
DEDUP_THRESHOLD = 0.96  # cosine between image embeddings above which results count as copies
DEDUP_FETCH = 3  # results fetched per result wanted when duplicates are removed


class QueryError(ValueError):
    """A query the index cannot answer (bad image, wrong size); the message is for the user."""


class QueryEncoder:
    """The CLIP named in index_info.json, loaded once, encoding texts and uploaded images."""

    def __init__(self, store: IndexStore, device: str = "auto"):
        clip = store.info.get("clip")
        if not clip or not clip.get("model"):
            raise ValueError(f"{store.directory}: index_info.json names no CLIP model to encode queries "
                             "(build it with --query-model/--query-pretrained)")
        self.model = load_clip(ClipSpec(model=clip["model"], pretrained=clip.get("pretrained"), device=device))
        if self.model.embed_dim != store.dim:
            raise ValueError(f"{clip['model']} makes {self.model.embed_dim}-d embeddings, the index holds {store.dim}-d")

    def texts(self, texts: list[str]) -> np.ndarray:
        return self.model.encode_texts(texts)

    def image(self, data: bytes) -> np.ndarray:
        return self.model.encode_images(self.model.preprocess_images([decode_upload(data)]))[0]


def decode_upload(data: bytes) -> Image.Image:
    """An uploaded query image, checked: size, real type (magic bytes), pixel count."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise QueryError(f"the image is over {MAX_UPLOAD_BYTES // 2**20} MiB")
    kind = sniff_image_format(data)
    if kind not in UPLOAD_FORMATS:
        raise QueryError(f"upload a JPEG, PNG or WebP image (got {kind or 'no image'})")
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_UPLOAD_PIXELS:
            raise QueryError(f"the image has over {MAX_UPLOAD_PIXELS:,} pixels")
        return image.convert("RGB")
    except QueryError:
        raise
    except Exception as exc:
        raise QueryError(f"the image cannot be decoded ({type(exc).__name__})") from exc


def vector_query(store: IndexStore, values: list[float]) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float32)
    if vector.shape != (store.dim,) or not np.isfinite(vector).all():
        raise QueryError(f"a query vector needs {store.dim} finite numbers")
    norm = np.linalg.norm(vector)
    if norm == 0:
        raise QueryError("a query vector must not be all zeros")
    return vector / norm


def row_query(store: IndexStore, row: int, modality: str = "image") -> np.ndarray:
    if not 0 <= row < store.rows:
        raise QueryError(f"row must be between 0 and {store.rows - 1}")
    return np.asarray(store.searches[modality].vectors[row], dtype=np.float32)


def nearest(store: IndexStore, vector: np.ndarray, k: int, modality: str = "image",
            allowed: np.ndarray | None = None, dedup: bool = True,
            dedup_threshold: float = DEDUP_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """(row ids, cosine scores) of the k best rows passing `allowed`, best first; with `dedup`,
    a row nearly identical (image embedding) to a better one is left out."""
    search = store.searches[modality]
    fetch = min(k * DEDUP_FETCH, store.rows) if dedup else k
    scores, ids = search.search(vector[None, :], fetch, allowed)
    scores, ids = scores[0], ids[0]
    keep = ids >= 0
    scores, ids = scores[keep], ids[keep]
    if dedup and len(ids) > 1:
        kept = remove_near_duplicates(ids, store.searches["image"].vectors, dedup_threshold)
        scores = scores[np.isin(ids, kept)]
        ids = ids[np.isin(ids, kept)]
    return ids[:k], scores[:k]
