"""Language identification of captions (fastText lid.176) and LAION's three splits.

    rows -> BatchElements -> PredictLanguage (model loaded once per worker) -> rows + LANGUAGE,
            LANGUAGE_SCORE, split

`split` is `en` (English), `multi` (any other language) or `nolang`. A caption is `nolang` when it
carries no language — empty, no letters, a URL, a file name, a single word in a script that
separates words with spaces, binary garbage, or absurdly long — or when the model's best
probability is under the threshold. Rule-decided captions are not sent to the model and get
null LANGUAGE and LANGUAGE_SCORE; below-threshold ones keep the model's guess and score.
"""

import os
import re
import shutil
import tempfile
from collections import Counter

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.utils import shared

from crawl2clip.models.langid import FastTextLanguageModel
from crawl2clip.transforms.errors import counter
from crawl2clip.transforms.schema import LANGUAGE, LANGUAGE_SCORE, SPLIT, TEXT

STAGE = "language"
# Chosen from bench/langid_threshold.py (bench/results/langid_threshold.json): see README.
DEFAULT_THRESHOLD = 0.4
MAX_CAPTION_CHARS = 10_000  # extract cuts alt texts at 2,000; anything far longer is not a caption
ENGLISH = "en"

_URL = re.compile(r"^(?:[a-z][a-z0-9+.-]*://|www\.)\S+$", re.IGNORECASE)
_FILE_NAME = re.compile(
    r"^[\w\-. ()\[\]]+\.(?:jpe?g|png|gif|webp|bmp|tiff?|svg|heic|avif|ico|pdf|html?|php|aspx?|mp[34]|mov)$",
    re.IGNORECASE,
)
_WHITESPACE = re.compile(r"\s+")
# Scripts written without spaces between words: one "word" there can be a whole sentence.
_UNSPACED_SCRIPTS = re.compile(
    "[\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]"
)


_TWO_LETTERS = re.compile(r"[^\W\d_].*?[^\W\d_]", re.DOTALL)
# Control characters (but tab and newline), replacement characters, private use, surrogates.
_GARBAGE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufffd\ue000-\uf8ff\ud800-\udfff]")


def language_text(caption) -> tuple[str | None, str]:
    """(the line to give the model, '') or (None, why the caption carries no language)."""
    if not isinstance(caption, str) or not caption.strip():
        return None, "empty"
    if len(caption) > MAX_CAPTION_CHARS:
        return None, "too_long"
    if len(_GARBAGE.findall(caption)) * 10 > len(caption):
        return None, "garbage"
    line = _WHITESPACE.sub(" ", caption).strip()  # fastText reads one line: no newlines
    if not _TWO_LETTERS.search(line):
        return None, "no_letters"
    if _URL.match(line):
        return None, "url"
    if _FILE_NAME.match(line):
        return None, "file_name"
    if " " not in line and not _UNSPACED_SCRIPTS.search(line):
        return None, "one_word"
    return line, ""


def split_of(language: str, score: float, threshold: float) -> str:
    if score < threshold or not language:
        return "nolang"
    return "en" if language == ENGLISH else "multi"


def local_model_path(path: str | None) -> str | None:
    """fastText loads only local files: a model on gs://, s3:// or https:// is copied to a
    temporary file first (once per worker)."""
    if path is None or "://" not in path:
        return path
    handle, local = tempfile.mkstemp(suffix=os.path.splitext(path)[1])
    with os.fdopen(handle, "wb") as out, FileSystems.open(path) as source:
        shutil.copyfileobj(source, out, 1 << 20)
    return local


class _PredictLanguage(beam.DoFn):
    def __init__(self, model_path: str | None, threshold: float, shared_model: shared.Shared):
        self.model_path = model_path
        self.threshold = threshold
        self._shared_model = shared_model

    def setup(self):
        # One model per worker process, shared by its threads and DoFn instances.
        self._model = self._shared_model.acquire(
            lambda: FastTextLanguageModel(local_model_path(self.model_path)), tag=self.model_path or "default"
        )

    def process(self, batch: list[dict]):
        counts: Counter = Counter()  # counted per batch: a counter update per row is measurable
        out, lines, positions = [], [], []
        for row in batch:
            line, reason = language_text(row.get(TEXT))
            if line is None:
                counts[f"nolang_{reason}"] += 1
                out.append({**row, LANGUAGE: None, LANGUAGE_SCORE: None, SPLIT: "nolang"})
            else:
                positions.append(len(out))
                lines.append(line)
                out.append(row)
        for position, (language, score) in zip(positions, self._model.predict(lines)):
            split = split_of(language, score, self.threshold)
            if split == "nolang":
                counts["nolang_below_threshold"] += 1
            out[position] = {**out[position], LANGUAGE: language, LANGUAGE_SCORE: score, SPLIT: split}
        counts["predicted"] += len(lines)
        for row in out:
            counts[row[SPLIT]] += 1
        for name, n in counts.items():
            counter(STAGE, f"split_{name}" if name in ("en", "multi", "nolang") else name).inc(n)
        return out


class IdentifyLanguage(beam.PTransform):
    """Adds LANGUAGE, LANGUAGE_SCORE and split to each row (a dict with a TEXT column)."""

    def __init__(self, model_path: str | None = None, threshold: float = DEFAULT_THRESHOLD,
                 max_batch_size: int = 4096):
        super().__init__()
        self.model_path = model_path
        self.threshold = threshold
        self.max_batch_size = max_batch_size

    def expand(self, rows):
        return (
            rows
            | "Batch" >> beam.BatchElements(min_batch_size=64, max_batch_size=self.max_batch_size)
            | "PredictLanguage" >> beam.ParDo(_PredictLanguage(self.model_path, self.threshold, shared.Shared()))
        )


class NoLanguage(beam.PTransform):
    """The language columns left empty (language identification turned off)."""

    def expand(self, rows):
        return rows | beam.Map(lambda row: {**row, LANGUAGE: None, LANGUAGE_SCORE: None, SPLIT: None})
