"""Progress files written by workers, and the progress line that sums them."""

import io
import json
import os
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crawl2clip.pipelines.progress import ProgressDisplay, _ShardTotals, describe
from crawl2clip.transforms.embeddings import write_part
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


def test_a_failed_write_is_tried_again_and_only_finished_files_are_read(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(progress_files, "FLUSH_SECONDS", 0.0)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the progress folder should be")
    progress = ProgressFile(str(blocked / "_progress"), "extract")
    progress.add(files=2)  # cannot be written: counted, warned, kept
    assert "not written" in caplog.text and progress.counts == {"files": 2}
    progress.path = str(tmp_path / "_progress" / os.path.basename(progress.path))
    progress.flush()  # still unwritten counts: written now
    (tmp_path / "_progress" / ".extract-h-1-a.json.tmp-0123").write_text('{"stage": "extract", "counts": {"files": 9}}')
    (tmp_path / "_progress" / "extract-h-1-b.json").write_text('{"stage": "ext')  # unreadable: skipped
    assert read_progress(str(tmp_path / "_progress")) == {"extract": {"files": 2}}
    assert read_progress(str(tmp_path / "none")) == {}


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
    assert "download: 2/3 shards, 1,350 images (135/s)" in line and "score" not in line

    # the scoring stage's finished parts, listed through the embeddings layout
    score_dir = str(tmp_path / "score")
    for number in (0, 3):
        write_part(score_dir, number, np.zeros((1, 4)), np.zeros((1, 4)), pa.table({"uid": ["a"]}))
    (tmp_path / "score" / "metadata" / ".metadata_4.parquet.tmp-0123").write_bytes(b"unfinished")
    line = describe({**stage_dirs, "score": score_dir}, str(progress_dir), elapsed=10.0,
                    shard_totals=_ShardTotals(), total_files=4, shard_size=1000)
    assert line.endswith("| score: 2 parts")


def test_display_prints_plain_lines_when_not_a_terminal(tmp_path):
    stream = io.StringIO()
    with ProgressDisplay({}, str(tmp_path), stream=stream, interval=0.05, log_every=0.1):
        time.sleep(0.3)
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 2 and all(line.startswith("[0m0") for line in lines)
    assert "\r" not in stream.getvalue()
