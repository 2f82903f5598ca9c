"""Progress while a job runs: each worker keeps running totals in a small JSON file.

Beam counters are only readable when a job has finished on DirectRunner, so stages that want to
show progress also add their counts to a `ProgressFile` under `DIR/_progress/`, committed through
transforms/files.py (so DIR may be on any Beam filesystem) at most every couple of seconds and
at the end of each bundle, when they changed; the command's progress display
(pipelines/progress.py) sums the files. A failed write only delays the line: it is tried again.
"""

import json
import logging
import os
import socket
import time
from collections import Counter

from crawl2clip.transforms import files

PROGRESS_FOLDER = "_progress"
SUFFIX = ".json"
FLUSH_SECONDS = 2.0

_LOG = logging.getLogger(__name__)


class ProgressFile:
    """Running totals of one DoFn instance, in `DIR/_progress/<stage>-<host>-<pid>-<id>.json`."""

    def __init__(self, progress_dir: str | None, stage: str):
        self.enabled = bool(progress_dir)
        self.counts: Counter = Counter()
        self._last_flush = 0.0
        self._changed = False
        if self.enabled:
            self.path = files.join(progress_dir, f"{stage}-{socket.gethostname()}-{os.getpid()}-{id(self):x}{SUFFIX}")
            self.stage = stage

    def add(self, **counts: int) -> None:
        if not self.enabled:
            return
        self.counts.update(counts)
        self._changed = True
        if time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if not self.enabled or not self._changed:
            return
        payload = {"stage": self.stage, "counts": dict(self.counts), "time": time.time()}
        try:
            files.write_atomic(self.path, json.dumps(payload).encode())
        except Exception as exc:  # the display's input, never a reason to fail the job's bundle
            _LOG.warning("progress file %s not written (%s); tried again later", self.path, exc)
        else:
            self._changed = False
        self._last_flush = time.monotonic()


def read_progress(progress_dir: str) -> dict[str, Counter]:
    """stage -> summed counts of every worker's file (files that cannot be read now are skipped)."""
    totals: dict[str, Counter] = {}
    for path in files.match(files.join(progress_dir, f"*{SUFFIX}")):
        try:
            data = files.read_marker(path)
        except (OSError, ValueError):
            continue
        totals.setdefault(data["stage"], Counter()).update(data["counts"])
    return totals
