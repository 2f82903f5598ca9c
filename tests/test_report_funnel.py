"""The run report's funnel and content tags (pipelines/report.py), from a run folder written the
way the stages write it: only steps that ran, counts that never go up, content filters as steps
only when applied, and tags with no model for the run's CLIP shown as "not computed"."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crawl2clip.pipelines.cli import main
from crawl2clip.pipelines.report import collect, write_report


def _write(path, table: pa.Table) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path)


def _run_dir(root, max_tags: dict, tags: dict, kept_values: dict, dropped_reasons: list[str], pruned: int | None):
    run = root / "run"
    _write(str(run / "extract" / "pairs" / "part-0.parquet"),
           pa.table({"LANGUAGE": ["en"] * 6 + ["de"] * 3 + [None], "split": ["en"] * 6 + ["multi"] * 3 + ["nolang"]}))
    _write(str(run / "download" / "00000.parquet"),
           pa.table({"status": ["success"] * 8 + ["failed_http_404"] * 2, "original_width": [64] * 10,
                     "original_height": [48] * 10}))
    (run / "download" / "00000_stats.json").write_text("{}")  # the shard's done marker: the report reads finished shards
    kept = 8 - len(dropped_reasons)
    _write(str(run / "score" / "metadata" / "metadata_0.parquet"),
           pa.table({"key": [f"00000000{i}" for i in range(kept)], "shard": [str(run / "no-such.tar")] * kept,
                     "TEXT": ["a caption"] * kept, "similarity": [0.5] * kept,
                     **{c: pa.array(v, pa.float32()) for c, v in kept_values.items()}}))
    _write(str(run / "score" / "dropped" / "dropped_0.parquet"),
           pa.table({"similarity": [0.1] * len(dropped_reasons), "drop_reason": dropped_reasons}))
    with open(run / "score" / "scoring.json", "w") as f:
        json.dump({"image_tower": {"model": "crawl2clip-tiny"}, "tags": tags,
                   "text_towers": {"en": {"kind": "clip", "model": "crawl2clip-tiny"},
                                   "multi": {"kind": "m-clip", "source": "/models/tower"}},
                   "toxicity": {"source": "lexicon", "path": None}, "thresholds": {"max_tags": max_tags}}, f)
    if pruned is not None:
        _write(str(run / "prune" / "kept.parquet"), pa.table({"uid": [str(i) for i in range(pruned)]}))
    return str(run)


def test_the_funnel_counts_only_steps_that_ran_and_never_goes_up(tmp_path):
    tags = {"punsafe": {"source": "not computed"}, "aesthetic": {"source": "not computed"},
            "pwatermark": {"source": "file", "name": "watermark-head", "path": "/assets/watermark-head.npz"}}
    run = _run_dir(tmp_path, {}, tags, {"punsafe": [None] * 5, "pwatermark": [0.1, 0.9, 0.2, 0.95, 0.3],
                                        "aesthetic": [None] * 5, "ptoxic": [0.0] * 5},
                   ["low_similarity"] * 3, pruned=3)
    report = collect(run)
    assert [(f["step"], f["count"]) for f in report["funnel"]] == [
        ("candidates", 10), ("downloaded", 8), ("CLIP-kept", 5), ("kept by pruning", 3)]
    assert report["splits"] == {"en": 6, "multi": 3, "nolang": 1}
    rows = {t["column"]: t for t in report["tags"]}
    assert rows["punsafe"]["from"] == rows["aesthetic"]["from"] == "not computed"
    assert not rows["punsafe"]["computed"] and rows["punsafe"]["over_cutoff"] is None
    assert rows["pwatermark"]["from"] == "watermark-head: watermark-head.npz"
    assert rows["pwatermark"]["over_cutoff"] == 2 and rows["pwatermark"]["cutoff"] == 0.8  # LAION's cut-off
    assert rows["ptoxic"]["from"] == "lexicon"
    page = open(write_report(run)).read()
    assert page.count("<td>not computed</td>") == 2 and "every image: crawl2clip-tiny" in page
    assert "multi captions: /models/tower (m-clip)" in page


def test_applied_content_filters_are_steps_and_the_last_one_is_what_was_kept(tmp_path):
    tags = {"punsafe": {"source": "file", "format": "Keras SavedModel (autokeras)",
                        "path": "/models/clip_autokeras_nsfw_b32.zip"},
            "pwatermark": {"source": "zero-shot"}, "aesthetic": {"source": "not computed"}}
    run = _run_dir(tmp_path, {"punsafe": 0.5, "ptoxic": 0.4}, tags,
                   {"punsafe": [0.1, 0.2], "pwatermark": [0.5, 0.6], "aesthetic": [None, None], "ptoxic": [0.0, 0.1]},
                   ["low_similarity", "unsafe", "unsafe", "unsafe", "toxic", "low_similarity"], pruned=None)
    report = collect(run)
    funnel = [(f["step"], f["count"]) for f in report["funnel"]]
    assert funnel == [("candidates", 10), ("downloaded", 8), ("CLIP-kept", 6), ("punsafe ≤ 0.5", 3),
                      ("ptoxic ≤ 0.4", 2)]
    rows = {t["column"]: t for t in report["tags"]}
    assert rows["punsafe"]["from"] == "Keras SavedModel (autokeras): clip_autokeras_nsfw_b32.zip"
    assert rows["pwatermark"]["from"] == "zero-shot prompts"


def test_the_report_of_a_remote_run_needs_its_filesystem_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["report", "hdfs://runs/1"])
    assert exit_.value.code == 2
    assert "DIR hdfs://runs/1: give --hdfs_host, --hdfs_port, --hdfs_user" in capsys.readouterr().err
