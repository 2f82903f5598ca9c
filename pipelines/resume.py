"""The counters of work an earlier run finished, read back from what it wrote.

A rerun into the same folder skips finished download shards and scoring parts, so its Beam
counters hold only its own work. Each finished unit keeps its counts with its output (a download
shard's `_stats.json`, a scored part's `counters_N.json`); `finished_work` reads them before
the rerun starts and `merge` adds them to the rerun's counters, so a resumed stage reports the
whole data, as an uninterrupted run would (tests/test_resume.py holds the two equal).
"""

from collections import Counter

from crawl2clip.transforms.download.shards import SUCCESS, finished_shards, read_stats
from crawl2clip.transforms.embeddings import list_parts
from crawl2clip.transforms.score.write import read_counters

# What a rerun counts about skipping (download:shards_already_done, ...): the units it carried
# over are reported apart from the data's counters.
SKIP_COUNTERS = ("download:shards_already_done", "score:shards_already_scored")


def download_counters(download_dir: str, shards: set[int]) -> Counter:
    """What the download stage counted for these finished shards (transforms/download/transform.py)."""
    counts: Counter = Counter()
    for shard in shards:
        statuses = read_stats(download_dir, shard)["status_counts"]
        for status, n in statuses.items():
            counts["download:images" if status == SUCCESS else f"download:failed_{status}"] += n
        counts["download:shards"] += 1
    return counts


def score_counters(score_dir: str, parts: set[int]) -> Counter:
    """What the scoring stage counted for these finished parts: each part keeps its own
    (transforms/score/counts.py)."""
    counts: Counter = Counter()
    for number in sorted(parts):
        counts.update(read_counters(score_dir, number))
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
