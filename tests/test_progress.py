"""Progress files written by workers, and the progress line that sums them."""

import io
import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq

from crawl2clip.pipelines.progress import ProgressDisplay, _ShardTotals, describe
from crawl2clip.transforms import progress as progress_files
from crawl2clip.transforms.progress import ProgressFile, read_progress


def test_progress_files_are_summed_per_stage(tmp_path, monkeypatch):
    monkeypatch.setattr(progress_files, "FLUSH_SECONDS", 0.0)
    first, second = ProgressFile(str(tmp_path), "extract"), ProgressFile(str(tmp_path), "extract")
    first.add(files=1, candidates=10)
    first.add(files=1, candidates=5)
    second.add(files=3, candidates=1)
    totals = read_progress(str(tmp_path))
    assert totals["extract"] == {"files": 5, "candidates": 16}
    assert len(os.listdir(tmp_path)) == 2


def test_remote_progress_dirs_are_ignored(tmp_path):
    remote = ProgressFile("gs://bucket/run/_progress", "extract")
    remote.add(files=1)
    remote.flush()
    assert not remote.enabled


def test_progress_line_counts_files_pairs_shards_and_images(tmp_path):
    progress_dir, download_dir = tmp_path / "_progress", tmp_path / "download"
    download_dir.mkdir()
    writer = ProgressFile(str(progress_dir), "extract")
    writer.add(files=2, candidates=2600)
    writer.flush()
    for shard, successes in ((0, 700), (1, 650)):
        (download_dir / f"{shard:05d}_stats.json").write_text(json.dumps({"successes": successes}))
    stage_dirs = {"extract": str(tmp_path / "extract"), "download": str(download_dir)}
    line = describe(stage_dirs, str(progress_dir), elapsed=10.0, shard_totals=_ShardTotals(),
                    total_files=4, shard_size=1000)
    assert "extract: 2/4 files, 2,600 pairs, ETA 0m10s" in line
    assert "download: 2 shards, 1,350 images (135/s)" in line  # the shard count is not known yet

    # once extract has finished, its deduplicated pairs give the number of shards
    (tmp_path / "extract" / "pairs").mkdir(parents=True)
    pq.write_table(pa.table({"uid": [str(i) for i in range(2500)]}), tmp_path / "extract" / "pairs" / "p.parquet")
    (tmp_path / "extract" / "_SUCCESS").write_text("{}")
    line = describe(stage_dirs, str(progress_dir), elapsed=10.0, shard_totals=_ShardTotals(),
                    total_files=4, shard_size=1000)
    assert "download: 2/3 shards, 1,350 images (135/s)" in line


def test_display_prints_plain_lines_when_not_a_terminal(tmp_path):
    stream = io.StringIO()
    with ProgressDisplay({}, str(tmp_path), stream=stream, interval=0.05, log_every=0.1):
        time.sleep(0.3)
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 2 and all(line.startswith("[0m0") for line in lines)
    assert "\r" not in stream.getvalue()
