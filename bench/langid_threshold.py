"""Chooses the `nolang` probability threshold of the language stage from measurements.

For each threshold: accuracy of the kept predictions and the share sent to `nolang` on captions
of known language (tests/multilingual_captions.py), and the split shares on 10,000 real web alt
texts (../shared/data/pairs/url-caption-10k.parquet). LAION-5B reports 1.27B of 5.85B pairs
(21.7%) without a language.

    .venv/bin/python bench/langid_threshold.py    # writes bench/results/langid_threshold.json
"""

import json
import os
import sys

import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from crawl2clip.models.langid import FastTextLanguageModel  # noqa: E402
from crawl2clip.transforms.language import language_text, split_of  # noqa: E402
from tests.multilingual_captions import CAPTIONS  # noqa: E402

REAL_CAPTIONS = os.path.join(REPO, "..", "shared", "data", "pairs", "url-caption-10k.parquet")
THRESHOLDS = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]


def main() -> None:
    model = FastTextLanguageModel()
    known = [(lang, line, *model.predict([line])[0]) for lang, text in CAPTIONS for line in [language_text(text)[0]]]
    captions = pq.read_table(REAL_CAPTIONS, columns=["TEXT"]).column("TEXT").to_pylist()
    real = []
    for caption in captions:
        line, reason = language_text(caption)
        real.append(None if line is None else model.predict([line])[0])
    rows = []
    for threshold in THRESHOLDS:
        kept = [(lang, guess) for lang, _, guess, score in known if score >= threshold]
        splits = [("nolang" if r is None else split_of(r[0], r[1], threshold)) for r in real]
        rows.append({
            "threshold": threshold,
            "known_kept_share": round(len(kept) / len(known), 4),
            "known_accuracy_of_kept": round(sum(lang == guess for lang, guess in kept) / max(len(kept), 1), 4),
            "real_share": {s: round(splits.count(s) / len(splits), 4) for s in ("en", "multi", "nolang")},
        })
    result = {
        "model": os.path.basename(model.path),
        "known_captions": len(known),
        "known_languages": len({lang for lang, _ in CAPTIONS}),
        "real_captions": len(captions),
        "rule_nolang_share": round(sum(r is None for r in real) / len(real), 4),
        "laion5b_nolang_share": round(1.27 / 5.85, 4),
        "by_threshold": rows,
    }
    os.makedirs(os.path.join(REPO, "bench", "results"), exist_ok=True)
    with open(os.path.join(REPO, "bench", "results", "langid_threshold.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(f"{'threshold':>9} {'kept':>6} {'acc(kept)':>9} {'real en':>8} {'multi':>6} {'nolang':>7}")
    for r in rows:
        print(f"{r['threshold']:>9} {r['known_kept_share']:>6} {r['known_accuracy_of_kept']:>9} "
              f"{r['real_share']['en']:>8} {r['real_share']['multi']:>6} {r['real_share']['nolang']:>7}")


if __name__ == "__main__":
    main()
