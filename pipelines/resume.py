"""The counters of work an earlier run finished, read back from what it wrote.

A rerun into the same folder skips finished download shards and scoring parts, so its Beam
counters hold only its own work. Each finished unit keeps its counts with its output (a shard's
`_stats.json`, a part's metadata, dropped and errors files); `finished_work` reads them before
the rerun starts and `merge` adds them to the rerun's counters, so a resumed stage reports the
whole data, as an uninterrupted run would (tests/test_resume.py holds the two equal).
"""

from collections import Counter

import pyarrow.parquet as pq

from crawl2clip.transforms import files
from crawl2clip.transforms.download.shards import SUCCESS, finished_shards, read_stats
from crawl2clip.transforms.embeddings import list_parts
from crawl2clip.transforms.score.write import DROP_REASON, dropped_path, errors_path

# What a rerun counts about skipping (download:shards_already_done, ...): the units it carried
# over are reported apart from the data's counters.
SKIP_COUNTERS = ("download:shards_already_done", "score:shards_already_scored")
UNDECODABLE = "undecodable_image"  # scoring's error for a pair whose image read but did not decode


def download_counters(download_dir: str, shards: set[int]) -> Counter:
    """What the download stage counted for these finished shards (transforms/download/transform.py)."""
    counts: Counter = Counter()
    for shard in shards:
        statuses = read_stats(download_dir, shard)["status_counts"]
        for status, n in statuses.items():
            counts["download:images" if status == SUCCESS else f"download:failed_{status}"] += n
        counts["download:shards"] += 1
    return counts


def _values(path: str, column: str) -> Counter:
    if not files.exists(path):
        return Counter()
    with files.open_read(path) as f:
        return Counter(pq.read_table(f, columns=[column]).column(column).to_pylist())


def score_counters(score_dir: str, parts: set[int]) -> Counter:
    """What the scoring stage counted for these finished parts (transforms/score/): pairs read
    from the shard, scored by CLIP (the rest did not decode), kept, dropped by reason, errors."""
    counts: Counter = Counter()
    for part in list_parts(score_dir):
        if part.number not in parts:
            continue
        kept = pq.read_metadata(part.metadata).num_rows
        dropped = _values(dropped_path(score_dir, part.number), DROP_REASON)
        errors = _values(errors_path(score_dir, part.number), "reason")
        scored = kept + sum(dropped.values())
        counts.update({"score:shards": 1, "score:kept": kept, "score:pairs_scored": scored,
                       "score:pairs_read": scored + errors[UNDECODABLE],
                       "score_clip:num_inferences": scored + errors[UNDECODABLE],
                       "score_content:num_inferences": scored})
        counts.update({f"score:dropped_{reason}": n for reason, n in dropped.items()})
        counts.update({f"score:error_{reason}": n for reason, n in errors.items()})
    return counts


def finished_work(stage: str, directory: str) -> dict[str, int]:
    """The counters of the units of `stage` already finished in `directory` (stages done as one
    piece, extract and prune, have none: a rerun redoes them whole)."""
    if stage == "download":
        return dict(download_counters(directory, finished_shards(directory)))
    if stage == "score":
        return dict(score_counters(directory, {part.number for part in list_parts(directory)}))
    return {}


def merge(this_run: dict[str, int], carried: dict[str, int]) -> dict[str, int]:
    """The whole data's counters: this run's, without its skip counts, plus the carried ones."""
    total = Counter({name: n for name, n in this_run.items() if name not in SKIP_COUNTERS})
    total.update(carried)
    return dict(sorted(total.items()))
