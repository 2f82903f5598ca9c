"""A progress line while a job runs on this machine: files, pairs, images/s, ETA where knowable.

It watches what the stages leave in their folders, through their layouts' definitions and
transforms/files.py (so on any Beam filesystem) — the workers' running totals in `_progress/`
(transforms/progress.py), the download's finished shards (their stats files) and the scoring
stage's finished parts (transforms/embeddings.py) — so it needs nothing from the runner and works
for DirectRunner in both modes and for clusters. On a terminal the line is redrawn in place;
otherwise (logs, CI) a plain line is printed every `log_every` seconds. What cannot be read now is
left out of that redraw: the line never stops the job's command.
"""

import math
import sys
import threading
import time
from typing import TextIO

import pyarrow.parquet as pq

from crawl2clip.transforms import files
from crawl2clip.transforms.download.shards import STATS, finished_files
from crawl2clip.transforms.embeddings import list_parts
from crawl2clip.transforms.progress import read_progress


def _eta(done: float, total: float | None, elapsed: float) -> str:
    if not total or done <= 0 or done >= total:
        return ""
    seconds = elapsed / done * (total - done)
    return f", ETA {int(seconds // 60)}m{int(seconds % 60):02d}s"


class _ShardTotals:
    """Successes of the finished download shards, reading each stats file once; and the number
    of shards to expect, read once when extract has finished."""

    def __init__(self):
        self.seen: dict[str, int] = {}
        self.expected: int | None = None

    def expected_shards(self, extract_dir: str | None, shard_size: int | None) -> int | None:
        if self.expected is None:
            self.expected = _expected_shards(extract_dir, shard_size)
        return self.expected

    def update(self, download_dir: str) -> tuple[int, int]:
        """(finished shards, their successes); a folder that cannot be listed now counts as before
        (the line must never stop the job's command)."""
        try:
            finished = finished_files(download_dir, STATS)
        except Exception:  # a filesystem's hiccup: try again on the next redraw
            finished = []
        for path in finished:
            if path not in self.seen:
                try:
                    self.seen[path] = int(files.read_marker(path).get("successes", 0))
                except Exception:
                    continue
        return len(self.seen), sum(self.seen.values())


def _expected_shards(extract_dir: str | None, shard_size: int | None) -> int | None:
    """The download's shard count, known once extract has written its (deduplicated) pairs."""
    try:
        if not extract_dir or not shard_size or not files.marker_exists(files.join(extract_dir, "_SUCCESS")):
            return None
        rows = 0
        for path in files.match(files.join(extract_dir, "pairs", "*.parquet")):
            with files.open_read(path) as f:
                rows += pq.read_metadata(f).num_rows
    except Exception:  # not knowable now: asked again on the next redraw
        return None
    return max(1, math.ceil(rows / shard_size))


def describe(stage_dirs: dict[str, str], progress_dir: str, elapsed: float, shard_totals: _ShardTotals,
             total_files: int | None = None, shard_size: int | None = None) -> str:
    """One line: what each stage has done so far."""
    parts = []
    try:
        counts = read_progress(progress_dir)
    except Exception:  # a filesystem's hiccup: read again on the next redraw
        counts = {}
    extract = counts.get("extract")
    if extract:
        read = f"{extract['files']:,}" + (f"/{total_files:,}" if total_files else "")
        parts.append(f"extract: {read} files, {extract['candidates']:,} pairs"
                     + _eta(extract["files"], total_files, elapsed))
    if "download" in stage_dirs:
        shards, images = shard_totals.update(stage_dirs["download"])
        expected = shard_totals.expected_shards(stage_dirs.get("extract"), shard_size)
        if shards:
            parts.append(f"download: {shards}" + (f"/{expected}" if expected else "")
                         + f" shards, {images:,} images ({images / max(elapsed, 1e-9):.0f}/s)")
    if "score" in stage_dirs:
        try:
            scored = len(list_parts(stage_dirs["score"]))
        except Exception:  # as above
            scored = 0
        if scored:
            parts.append(f"score: {scored} parts")
    return f"[{int(elapsed // 60)}m{int(elapsed % 60):02d}s] " + (" | ".join(parts) or "starting")


class ProgressDisplay:
    """Context manager: shows progress on `stream` while the body (the job) runs."""

    def __init__(self, stage_dirs: dict[str, str], progress_dir: str, stream: TextIO = sys.stderr,
                 interval: float = 1.0, log_every: float = 15.0, total_files: int | None = None,
                 shard_size: int | None = None):
        self.stage_dirs = stage_dirs
        self.progress_dir = progress_dir
        self.stream = stream
        self.interval = interval
        self.log_every = log_every
        self.total_files = total_files
        self.shard_size = shard_size
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="progress")
        self._shards = _ShardTotals()
        self._interactive = hasattr(stream, "isatty") and stream.isatty()

    def line(self) -> str:
        return describe(self.stage_dirs, self.progress_dir, time.monotonic() - self._started, self._shards,
                        self.total_files, self.shard_size)

    def _loop(self) -> None:
        last_log = time.monotonic()
        while not self._stop.wait(self.interval):
            if self._interactive:
                self.stream.write("\r\033[K" + self.line())
                self.stream.flush()
            elif time.monotonic() - last_log >= self.log_every:
                self.stream.write(self.line() + "\n")
                self.stream.flush()
                last_log = time.monotonic()

    def __enter__(self) -> "ProgressDisplay":
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.stream.write(("\r\033[K" if self._interactive else "") + self.line() + "\n")
        self.stream.flush()
