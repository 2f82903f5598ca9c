"""Language stage speed on one core: captions/s for the bare fastText model vs the Beam transform.

Same captions for both: the 10,000 real alt texts of ../shared/data/pairs/url-caption-10k.parquet,
repeated REPEAT times so the pipeline's fixed start-up is a small part. The transform's time is
given whole and net of an identical pipeline without the language step (rows -> count).

    .venv/bin/python bench/langid_speed.py    # writes bench/results/langid_speed.json
"""

import json
import os
import sys
import time

import apache_beam as beam
import pyarrow.parquet as pq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from crawl2clip.models.langid import FastTextLanguageModel  # noqa: E402
from crawl2clip.transforms.language import IdentifyLanguage, language_text  # noqa: E402

REAL_CAPTIONS = os.path.join(REPO, "..", "shared", "data", "pairs", "url-caption-10k.parquet")
REPEAT = 10


def best_of(n: int, fn) -> float:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def caption_rows(path: str, repeat: int):
    """The rows made inside the pipeline: beam.Create of 100,000 dicts would spend seconds on
    type inference and pickling at construction and drown the difference being measured."""
    captions = pq.read_table(path, columns=["TEXT"]).column("TEXT").to_pylist()
    for copy in range(repeat):
        for i, caption in enumerate(captions):
            yield {"uid": f"{copy}-{i}", "TEXT": caption}


def pipeline_seconds(with_language: bool) -> float:
    def run():
        with beam.Pipeline("DirectRunner") as p:
            rows = p | beam.Create([REAL_CAPTIONS]) | beam.FlatMap(caption_rows, REPEAT)
            if with_language:
                rows = rows | IdentifyLanguage()
            _ = rows | beam.combiners.Count.Globally()
    return best_of(3, run)


def main() -> None:
    os.sched_setaffinity(0, {0})  # one core
    captions = pq.read_table(REAL_CAPTIONS, columns=["TEXT"]).column("TEXT").to_pylist() * REPEAT
    model = FastTextLanguageModel()
    raw_predict = model._predict_line
    lines = [(c or "").replace("\n", " ") + "\n" for c in captions]

    bare = best_of(3, lambda: [raw_predict(line, 1, 0.0, "replace") for line in lines])
    functions = best_of(3, lambda: model.predict([l for l in (language_text(c)[0] for c in captions) if l]))
    with_language = pipeline_seconds(True)
    without = pipeline_seconds(False)
    n = len(captions)
    result = {
        "captions": n,
        "cpu": "one core (sched_setaffinity {0})",
        "bare_model": {"seconds": round(bare, 3), "captions_per_s": round(n / bare)},
        "rules_and_model": {"seconds": round(functions, 3), "captions_per_s": round(n / functions)},
        "transform_directrunner": {"seconds": round(with_language, 3), "captions_per_s": round(n / with_language)},
        "pipeline_without_language": {"seconds": round(without, 3)},
        "transform_net": {"seconds": round(with_language - without, 3),
                          "captions_per_s": round(n / max(with_language - without, 1e-9))},
    }
    result["transform_net_vs_bare"] = round((with_language - without) / bare, 3)
    result["targets"] = {
        "transform_within_1.5x_of_bare": result["transform_net_vs_bare"] <= 1.5,
        "at_least_30000_captions_per_s": result["transform_net"]["captions_per_s"] >= 30_000,
    }
    os.makedirs(os.path.join(REPO, "bench", "results"), exist_ok=True)
    with open(os.path.join(REPO, "bench", "results", "langid_speed.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
