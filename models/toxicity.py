"""Caption toxicity: a user's model when given, else a built-in multilingual lexicon.

`ptoxic` is a probability-like score in [0, 1] per caption. Two sources:

- a head file (`--toxicity-model PATH`): a models/heads.py head with input "text", trained on the
  CLIP text embeddings of labelled captions (`crawl2clip train-head ... --input text`). The
  scoring stage computes those embeddings anyway, so it costs almost nothing more. This is the
  way to real quality: train it on a labelled toxicity corpus with the CLIP you score with.
- the built-in fallback, `LexiconToxicity`: whole-word (and phrase) matches against
  models/assets/toxicity-lexicon.tsv, about 160 weighted terms in English, German, French,
  Spanish, Italian, Portuguese, Dutch, Russian, Polish and Turkish. A caption's score is the
  noisy-OR of its distinct matches, 1 - prod(1 - weight). Text and terms are normalised the
  same way: NFKC, case-folded, accents stripped, leetspeak in words that hold letters (sh1t,
  @ss) and letter runs (fuuuck) undone, English plural and verb endings removed.

Why a lexicon and not CLIP zero-shot on the caption: a CLIP text tower trained on alt text has
no dependable notion of toxicity (the project's tiny CLIP has none at all), while a lexicon is
transparent, multilingual, fast and gives the same answer everywhere. Its limits, honestly: it
sees words, not meaning, so it misses insults without swear words, sarcasm, threats phrased
politely, dog whistles, compound words (German "Scheißhaus"), words split by spaces or symbols
(f * c k), and every language not listed; it flags quoted, reclaimed or educational uses, and
neutral senses of listed words in the same language (English "bitch" for a female dog). Read its
scores as "contains strong language", not as a judgement of the caption.
"""

import os
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from crawl2clip.models.heads import load_head

DEFAULT_LEXICON = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "toxicity-lexicon.tsv")
_TRANSLITERATE = str.maketrans({"ı": "i", "ł": "l", "ø": "o", "đ": "d", "æ": "ae", "œ": "oe"})
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a", "$": "s"})
_WORD = re.compile(r"[\w@$]+")
_LETTER_RUN = re.compile(r"(\D)\1{2,}")
_ENGLISH_ENDINGS = ("ings", "ing", "ers", "er", "ed", "es", "s", "in")


def normalise(text: str) -> str:
    """Case-, accent- and width-insensitive form of text (terms and captions alike)."""
    text = unicodedata.normalize("NFKC", text).casefold().translate(_TRANSLITERATE)
    decomposed = unicodedata.normalize("NFD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def words(text: str) -> list[str]:
    """The normalised words of text, leetspeak undone in words that hold letters."""
    result = []
    for token in _WORD.findall(normalise(text)):
        if any(c.isalpha() for c in token):
            token = token.translate(_LEET)
        token = token.strip("@$_")
        if token:
            result.append(token)
    return result


def _variants(word: str) -> set[str]:
    """The word, its letter runs cut to one and two ("fuuuck" -> "fuck"), and English stems."""
    forms = {word, _LETTER_RUN.sub(r"\1", word), _LETTER_RUN.sub(r"\1\1", word)}
    stems = {f[: -len(end)] for f in forms for end in _ENGLISH_ENDINGS
             if f.endswith(end) and len(f) - len(end) >= 3}
    return forms | stems


@dataclass(frozen=True)
class Term:
    language: str
    weight: float
    words: tuple[str, ...]
    strict: bool


def read_lexicon(path: str = DEFAULT_LEXICON) -> list[Term]:
    """`language<TAB>weight<TAB>term[<TAB>strict]` lines; # starts a comment."""
    terms = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip() or line.startswith("#"):
                continue
            fields = line.split("\t")
            if len(fields) not in (3, 4) or (len(fields) == 4 and fields[3] != "strict"):
                raise ValueError(f"{path}:{number}: expected language, weight, term[, strict]: {line!r}")
            weight = float(fields[1])
            if not 0 < weight < 1:
                raise ValueError(f"{path}:{number}: weight {weight} must be in (0, 1)")
            terms.append(Term(fields[0], weight, tuple(words(fields[2])), len(fields) == 4))
    return terms


class LexiconToxicity:
    """The built-in fallback: weighted whole-word matches, combined by noisy-OR."""

    def __init__(self, path: str = DEFAULT_LEXICON):
        self.path = path
        self.terms = read_lexicon(path)
        self._first_words: dict[str, list[Term]] = {}
        for term in self.terms:
            self._first_words.setdefault(term.words[0], []).append(term)

    def _applies(self, term: Term, language: str | None) -> bool:
        if not language:
            return not term.strict
        return term.language == language or (term.language == "en" and not term.strict)

    def score_one(self, text: str, language: str | None = None) -> float:
        tokens = [_variants(w) for w in words(text)]
        matched: set[Term] = set()
        for start, forms in enumerate(tokens):
            for form in forms:
                for term in self._first_words.get(form, ()):
                    rest = term.words[1:]
                    if term not in matched and self._applies(term, language) and all(
                            start + 1 + i < len(tokens) and w in tokens[start + 1 + i] for i, w in enumerate(rest)):
                        matched.add(term)
        return 1.0 - float(np.prod([1.0 - t.weight for t in matched])) if matched else 0.0

    def score(self, texts: Sequence[str], languages: Sequence[str | None] | None = None) -> np.ndarray:
        """ptoxic per caption; `languages` (ISO 639 codes, None when unknown) picks the strict terms."""
        languages = languages if languages is not None else [None] * len(texts)
        return np.asarray([self.score_one(t or "", lang) for t, lang in zip(texts, languages)], dtype=np.float32)

    def describe(self) -> dict:
        return {"source": "lexicon", "path": self.path, "terms": len(self.terms),
                "languages": sorted({t.language for t in self.terms})}


class HeadToxicity:
    """A user-supplied head on CLIP text embeddings; `clip` encodes captions when no embeddings
    are at hand (the scoring stage passes the ones it computed to `score_embeddings`)."""

    def __init__(self, path: str, clip=None):
        self.path = path
        self.head = load_head(path)
        if self.head.metadata.get("input") != "text":
            raise ValueError(f"{path}: a toxicity model must be a head on text embeddings "
                             f"(input 'text'), this one takes {self.head.metadata.get('input')!r}")
        if clip is not None and clip.embed_dim != self.head.embed_dim:
            raise ValueError(f"{path}: head for {self.head.embed_dim}-d text embeddings, the CLIP gives {clip.embed_dim}-d")
        self.clip = clip

    def score_embeddings(self, text_embeddings: np.ndarray) -> np.ndarray:
        return self.head.predict(text_embeddings)

    def score(self, texts: Sequence[str], languages: Sequence[str | None] | None = None) -> np.ndarray:
        if self.clip is None:
            raise ValueError("HeadToxicity.score needs a CLIP to encode captions; or use score_embeddings")
        return self.score_embeddings(self.clip.encode_texts([t or "" for t in texts]))

    def describe(self) -> dict:
        return {"source": "file", "path": self.path, **self.head.describe()}


def load_toxicity(path: str | None = None, clip=None) -> LexiconToxicity | HeadToxicity:
    """The user's head at `path` (a .npz), a lexicon file (.tsv), or the built-in lexicon."""
    if not path:
        return LexiconToxicity()
    if path.endswith(".tsv"):
        return LexiconToxicity(path)
    return HeadToxicity(path, clip)
