"""The scoring stage's counters, counted once per download shard when it is written, so that each
scored part can keep its own (transforms/score/write.py) and a rerun that skips finished parts
still reports the whole data (pipelines/resume.py adds them back).

A part's counters are everything the run counted for that shard: the stage's own (`score:...`)
and those Beam's RunInference counts in each model step's namespace (`num_inferences`: the rows
the step was given). No torch here: resuming reads them without the models.
"""

from collections import Counter

import numpy as np

from crawl2clip.transforms.errors import counter
from crawl2clip.transforms.score.settings import TAG_COLUMNS, WATERMARK
from crawl2clip.transforms.score.shards import STAGE, UNDECODABLE, ScoredShard

# The model steps' metric namespaces (their ModelHandlers' get_metrics_namespace).
CLIP_STEP = "score_clip"
WATERMARK_STEP = "score_watermark"
CONTENT_STEP = "score_content"
INFERENCES = "num_inferences"  # RunInference's counter of rows in


def _name(namespace: str, name: str) -> str:
    return f"{namespace}:{name}"


def part_counters(shard: ScoredShard, reasons: list[str | None], watermark_model: bool) -> dict[str, int]:
    """The counters of one scored shard, whose pairs were dropped for `reasons` (None: kept);
    `watermark_model`: the shard went through the watermark detector step."""
    errors = Counter(record["reason"] for record in shard.errors)
    dropped = Counter(reason for reason in reasons if reason is not None)
    scored = len(shard)
    read = scored + errors[UNDECODABLE]  # the rest of the shard's errors never reached the model
    counts = {
        _name(STAGE, "shards"): 1,
        _name(STAGE, "pairs_read"): read,
        _name(STAGE, "pairs_scored"): scored,
        _name(STAGE, "kept"): scored - sum(dropped.values()),
        **{_name(STAGE, f"dropped_{reason}"): n for reason, n in dropped.items()},
        **{_name(STAGE, f"error_{reason}"): n for reason, n in errors.items()},
        _name(CLIP_STEP, INFERENCES): read,
        _name(CONTENT_STEP, INFERENCES): scored,
    }
    if watermark_model:
        counts[_name(WATERMARK_STEP, INFERENCES)] = scored
        # These images decoded for CLIP; should one not for the detector, its pwatermark is null.
        counts[_name(STAGE, "watermark_undecodable")] = int(np.isnan(shard.tags[TAG_COLUMNS[WATERMARK]]).sum())
    return dict(sorted(counts.items()))


def unreadable_counters(shard: ScoredShard) -> dict[str, int]:
    """The counters of a shard that could not be read: it has no part, a later run tries it again."""
    errors = Counter(record["reason"] for record in shard.errors)
    return {_name(STAGE, "shards_unreadable"): 1, **{_name(STAGE, f"error_{r}"): n for r, n in errors.items()}}


def count(counts: dict[str, int]) -> None:
    """Adds a shard's counters to the stage's Beam counters (RunInference counts its own)."""
    for name, n in counts.items():
        namespace, _, short = name.partition(":")
        if namespace == STAGE:
            counter(STAGE, short).inc(n)
