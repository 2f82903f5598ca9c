"""Progress while a job runs: each worker keeps running totals in a small JSON file.

Beam counters are only readable when a job has finished on DirectRunner, so stages that want to
show progress also add their counts to a `ProgressFile` under `DIR/_progress/`, flushed at most
every couple of seconds; the command's progress display (pipelines/progress.py) sums the files.
On clusters the same numbers are Beam counters in the runner's UI; the files are written only
when the progress folder is a local path.
"""

import json
import os
import socket
import time
from collections import Counter

PROGRESS_FOLDER = "_progress"
FLUSH_SECONDS = 2.0


class ProgressFile:
    """Running totals of one DoFn instance, in `DIR/_progress/<stage>-<host>-<pid>-<id>.json`."""

    def __init__(self, progress_dir: str | None, stage: str):
        self.enabled = bool(progress_dir) and "://" not in progress_dir
        self.counts: Counter = Counter()
        self._last_flush = 0.0
        if self.enabled:
            os.makedirs(progress_dir, exist_ok=True)
            name = f"{stage}-{socket.gethostname()}-{os.getpid()}-{id(self):x}.json"
            self.path = os.path.join(progress_dir, name)
            self.stage = stage

    def add(self, **counts: int) -> None:
        if not self.enabled:
            return
        self.counts.update(counts)
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if not self.enabled or not self.counts:
            return
        temporary = self.path + ".tmp"
        with open(temporary, "w") as f:
            json.dump({"stage": self.stage, "counts": dict(self.counts), "time": time.time()}, f)
        os.replace(temporary, self.path)
        self._last_flush = time.monotonic()


def read_progress(progress_dir: str) -> dict[str, Counter]:
    """stage -> summed counts of every worker's file (unreadable half-written files are skipped)."""
    totals: dict[str, Counter] = {}
    if not os.path.isdir(progress_dir):
        return totals
    for name in os.listdir(progress_dir):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(progress_dir, name)) as f:
                data = json.load(f)
        except (OSError, ValueError):
            continue
        totals.setdefault(data["stage"], Counter()).update(data["counts"])
    return totals
