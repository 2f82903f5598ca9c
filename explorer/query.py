"""Queries against an index: encoding them with the index's towers, searching with filters, and
dropping near-duplicate results. Shared by the server and `crawl2clip subset`.

A text query is encoded by the text tower of its language, as the captions were: English by the
CLIP's own, other languages by the index's multilingual tower when it has one (M-CLIP, in the
same space). The language is the caller's `lang`, else fastText's (the language stage's rules).
"""

import io
import re
from functools import cached_property

import numpy as np
from PIL import Image

from crawl2clip.models.clip import ClipSpec, load_clip
from crawl2clip.models.mclip import MClipSpec, load_mclip
from crawl2clip.transforms.download.images import sniff_image_format
from crawl2clip.transforms.index.search import remove_near_duplicates
from crawl2clip.transforms.index.store import IndexStore
from crawl2clip.transforms.language import DEFAULT_THRESHOLD, language_text, split_of
from crawl2clip.transforms.score.settings import EN, MULTI, route_of

MAX_UPLOAD_BYTES = 10 * 2**20
MAX_UPLOAD_PIXELS = 40_000_000
UPLOAD_FORMATS = ("jpeg", "png", "webp")
DEDUP_THRESHOLD = 0.96  # cosine between image embeddings above which results count as copies
DEDUP_FETCH = 3  # results fetched per result wanted when duplicates are removed
LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}$")


class QueryError(ValueError):
    """A query the index cannot answer (bad image, wrong size); the message is for the user."""


class QueryEncoder:
    """The CLIP named in index_info.json (images, English text) and the multilingual text tower
    it names (other languages), loaded once."""

    def __init__(self, store: IndexStore, device: str = "auto"):
        clip = store.info.get("clip")
        if not clip or not clip.get("model"):
            raise ValueError(f"{store.directory}: index_info.json names no CLIP model to encode queries "
                             "(build it with --query-model/--query-pretrained)")
        self.model = load_clip(ClipSpec(model=clip["model"], pretrained=clip.get("pretrained"), device=device))
        if self.model.embed_dim != store.dim:
            raise ValueError(f"{clip['model']} makes {self.model.embed_dim}-d embeddings, the index holds {store.dim}-d")
        multi = (clip.get("text_towers") or {}).get(MULTI) or {}
        self.towers = {EN: self.model, MULTI: self.model}
        if multi.get("kind") == "m-clip":
            self.towers[MULTI] = load_mclip(MClipSpec(multi["source"], device=device))
            if self.towers[MULTI].embed_dim != store.dim:
                raise ValueError(f"{multi['source']} makes {self.towers[MULTI].embed_dim}-d embeddings, "
                                 f"the index holds {store.dim}-d")

    @cached_property
    def _language_model(self):
        from crawl2clip.models.langid import FastTextLanguageModel

        return FastTextLanguageModel()

    def route(self, text: str, lang: str | None = None) -> str:
        """Which text tower encodes `text`: `en` or `multi`, from `lang` when given, else from
        the language fastText finds (a query that carries none is `nolang`: multi)."""
        if lang is not None:
            if not LANGUAGE_CODE.match(lang):
                raise QueryError(f"lang {lang!r}: give an ISO 639 code such as en, de, fr")
            return EN if lang == EN else MULTI
        line, _ = language_text(text)
        if line is None:
            return MULTI
        language, score = self._language_model.predict([line])[0]
        return route_of(split_of(language, score, DEFAULT_THRESHOLD))

    def texts(self, texts: list[str], lang: str | None = None) -> np.ndarray:
        """Unit-length embeddings of text queries, each by its language's tower."""
        routes = [self.route(text, lang) for text in texts]
        out = np.zeros((len(texts), self.model.embed_dim), np.float32)
        for route in set(routes):
            rows = [i for i, r in enumerate(routes) if r == route]
            out[rows] = self.towers[route].encode_texts([texts[i] for i in rows])
        return out

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
