"""Caption toxicity: the built-in lexicon's matching rules, and a user's head on text embeddings."""

import numpy as np
import pytest

from crawl2clip.models.heads import roc_auc, save_head, train_head
from crawl2clip.models.toxicity import HeadToxicity, LexiconToxicity, load_toxicity, read_lexicon, words


@pytest.fixture(scope="module")
def lexicon() -> LexiconToxicity:
    return LexiconToxicity()


def test_the_built_in_lexicon_reads_and_covers_ten_languages(lexicon):
    assert len(lexicon.terms) > 100
    assert lexicon.describe()["languages"] == ["de", "en", "es", "fr", "it", "nl", "pl", "pt", "ru", "tr"]
    assert all(0 < t.weight < 1 and t.words for t in lexicon.terms)


@pytest.mark.parametrize("caption, language", [
    ("what the fuck is this", "en"),
    ("What the FUUUCK", None),                 # case, letter runs
    ("this is sh1t", "en"),                    # leetspeak
    ("total a$$hole", None),
    ("fucking idiots everywhere", "en"),       # English endings
    ("Du bist ein Arschloch", "de"),
    ("quel connard", "fr"),
    ("¡Hijo de puta!", "es"),                  # a phrase, punctuation around it
    ("che cazzo fai", "it"),
    ("Ты сука", "ru"),
    ("amına koyayım", "tr"),                   # dotless i
    ("kurwa mać", "pl"),
])
def test_strong_language_scores_high(lexicon, caption, language):
    assert lexicon.score_one(caption, language) >= 0.5


@pytest.mark.parametrize("caption, language", [
    ("Scunthorpe United at Glanford Park", "en"),   # whole words only
    ("a classic assessment of Dickens", "en"),
    ("café con leche y churros", "es"),             # French "con" is strict to French
    ("Labrador bitch for sale", None),              # a strict English term needs an English caption
    ("2024 calendar, 1337 pages", None),            # digits alone are not leetspeak
    ("", None),
    ("red apples on a wooden table", "en"),
])
def test_ordinary_captions_score_zero(lexicon, caption, language):
    assert lexicon.score_one(caption, language) == 0.0


def test_more_distinct_matches_score_higher_and_repeats_do_not(lexicon):
    one = lexicon.score_one("shit", "en")
    assert lexicon.score_one("shit shit shit", "en") == one
    assert one < lexicon.score_one("shit, you bastard", "en") < 1.0


def test_score_takes_a_language_per_caption(lexicon):
    scores = lexicon.score(["ce con", "ce con", None], ["fr", "es", None])
    assert scores.dtype == np.float32
    assert scores[0] > 0 and scores[1] == 0 and scores[2] == 0


def test_a_user_lexicon_file_and_its_errors(tmp_path):
    path = tmp_path / "mine.tsv"
    path.write_text("# mine\nxx\t0.6\tgrumpf\nxx\t0.3\tbad word\tstrict\n", encoding="utf-8")
    scorer = load_toxicity(str(path))
    assert isinstance(scorer, LexiconToxicity)
    assert scorer.score_one("so GRUMPF") == pytest.approx(0.6)
    assert scorer.score_one("a bad word", "xx") == pytest.approx(0.3)
    assert scorer.score_one("a bad word", None) == 0.0
    (tmp_path / "broken.tsv").write_text("xx\t1.5\tgrumpf\n", encoding="utf-8")
    with pytest.raises(ValueError, match="weight"):
        read_lexicon(str(tmp_path / "broken.tsv"))


def test_words_normalise_accents_width_and_symbols():
    assert words("Ｅｎｃｕｌé!! p3rs0nne, 2024") == ["encule", "personne", "2024"]


class _BagOfWordsClip:
    """A stand-in text encoder: hashed bag of words, unit-norm (what HeadToxicity needs of a CLIP)."""
    embed_dim = 64

    def encode_texts(self, texts):
        out = np.zeros((len(texts), self.embed_dim), np.float32)
        for row, text in enumerate(texts):
            for word in words(text):
                out[row, sum(map(ord, word)) % self.embed_dim] += 1.0
        out[:, 0] += 1e-3
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def _captions(seed: int, count: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    clean = ["lovely", "garden", "sunset", "kitchen", "vintage", "poster", "dress", "beach"]
    rude = ["grumpf", "blorg", "snarf"]
    texts, labels = [], []
    for _ in range(count):
        toxic = rng.random() < 0.5
        chosen = list(rng.choice(clean, 3)) + ([str(rng.choice(rude))] if toxic else [])
        texts.append(" ".join(rng.permutation(chosen)))
        labels.append(int(toxic))
    return texts, np.asarray(labels)


def test_a_user_head_on_text_embeddings_scores_held_out_captions(tmp_path):
    clip = _BagOfWordsClip()
    texts, labels = _captions(1, 600)
    head = train_head(clip.encode_texts(texts), labels, name="toxic", clip_model="bag", input_kind="text",
                      steps=300)
    save_head(head, str(tmp_path / "toxic.npz"))
    scorer = load_toxicity(str(tmp_path / "toxic.npz"), clip)
    assert isinstance(scorer, HeadToxicity) and scorer.describe()["source"] == "file"
    held_texts, held_labels = _captions(2, 300)
    assert roc_auc(held_labels, scorer.score(held_texts)) >= 0.95
    np.testing.assert_array_equal(scorer.score(held_texts), scorer.score_embeddings(clip.encode_texts(held_texts)))


def test_a_head_on_image_embeddings_is_refused_as_a_toxicity_model(tmp_path):
    rng = np.random.default_rng(0)
    head = train_head(rng.normal(size=(50, 64)), np.arange(50) % 2, name="img", clip_model="bag", steps=5)
    save_head(head, str(tmp_path / "img.npz"))
    with pytest.raises(ValueError, match="text"):
        HeadToxicity(str(tmp_path / "img.npz"))
