"""The score stage's layout, without Beam: what one scored shard leaves on disk and in which order,
the counters each part keeps, the settings file, and the embeddings layout's listing."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crawl2clip.pipelines.resume import finished_work
from crawl2clip.transforms import files
from crawl2clip.transforms.embeddings import list_parts, load_embeddings, read_metadata, write_part
from crawl2clip.transforms.errors import error_record
from crawl2clip.transforms.score.counts import part_counters, unreadable_counters
from crawl2clip.transforms.score.settings import Thresholds, read_settings, record_settings, settings_path
from crawl2clip.transforms.score.shards import MISSING_IMAGE, STAGE, UNDECODABLE, UNREADABLE_SHARD, ScoredShard
from crawl2clip.transforms.score.write import (
    counters_path,
    dropped_path,
    errors_path,
    is_scored,
    read_counters,
    write_scored_shard,
)


def _shard(number: int, rows: int, errors: list[str] = (), watermark: list[float] | None = None,
           reasons: list[str | None] | None = None) -> ScoredShard:
    rng = np.random.default_rng(number)
    vectors = rng.normal(size=(rows, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    table = pa.table({"key": [f"{number:05d}{i:04d}" for i in range(rows)],
                      "URL": [f"http://images.test/{number}/{i}.jpg" for i in range(rows)],
                      "TEXT": [f"caption {i}" for i in range(rows)], "split": ["en"] * rows})
    tags = {"pwatermark": None if watermark is None else np.array(watermark, np.float32)}
    return ScoredShard(number, f"/data/{number:05d}.tar", table, vectors, vectors[::-1].copy(),
                       np.einsum("ij,ij->i", vectors, vectors[::-1]).astype(np.float32),
                       errors=[error_record(STAGE, reason, offset=number) for reason in errors], tags=tags,
                       drop_reasons=reasons)


def test_a_parts_counters_are_what_the_steps_counted_for_its_shard():
    shard = _shard(3, 4, errors=[MISSING_IMAGE, UNDECODABLE, UNDECODABLE], watermark=[0.1, np.nan, 0.9, 0.2])
    reasons = [None, "low_similarity", None, "unsafe"]
    assert part_counters(shard, reasons, watermark_model=True) == {
        "score:shards": 1, "score:pairs_read": 6, "score:pairs_scored": 4, "score:kept": 2,
        "score:dropped_low_similarity": 1, "score:dropped_unsafe": 1,
        "score:error_missing_image": 1, "score:error_undecodable_image": 2, "score:watermark_undecodable": 1,
        "score_clip:num_inferences": 6,  # the missing image never reached the model
        "score_content:num_inferences": 4, "score_watermark:num_inferences": 4,
    }
    assert part_counters(shard, [None] * 4, watermark_model=False) == {
        "score:shards": 1, "score:pairs_read": 6, "score:pairs_scored": 4, "score:kept": 4,
        "score:error_missing_image": 1, "score:error_undecodable_image": 2,
        "score_clip:num_inferences": 6, "score_content:num_inferences": 4,
    }
    unreadable = ScoredShard(5, "/data/00005.tar", pa.table({}), np.zeros((0, 8)), np.zeros((0, 8)), np.zeros(0),
                             errors=[error_record(STAGE, UNREADABLE_SHARD)], read_failed=True)
    assert unreadable_counters(unreadable) == {"score:shards_unreadable": 1, "score:error_unreadable_shard": 1}


def test_a_scored_shard_commits_its_metadata_last_and_keeps_its_counters(tmp_path, monkeypatch):
    output = str(tmp_path / "scores")
    committed = []
    replace = files._replace
    monkeypatch.setattr(files, "_replace", lambda temporary, path: (committed.append(path), replace(temporary, path)))
    shard = _shard(7, 5, errors=[UNDECODABLE], reasons=[None, "low_similarity", None, None, "toxic"])
    counts = write_scored_shard(output, shard)
    (part,) = list_parts(output)
    assert committed == [errors_path(output, 7), dropped_path(output, 7), counters_path(output, 7),
                         part.img_emb, part.text_emb, part.metadata]
    assert read_counters(output, 7) == counts and counts["score:kept"] == 3 and counts["score:pairs_read"] == 6
    kept = read_metadata(output).to_pylist()
    assert [row["key"] for row in kept] == ["000070000", "000070002", "000070003"]
    np.testing.assert_allclose(load_embeddings(part.img_emb), shard.img_emb[[0, 2, 3]], atol=1e-3)
    dropped = pq.read_table(dropped_path(output, 7)).to_pylist()
    assert [(row["key"], row["drop_reason"]) for row in dropped] == [("000070001", "low_similarity"),
                                                                    ("000070004", "toxic")]
    assert pq.read_table(errors_path(output, 7)).column("reason").to_pylist() == [UNDECODABLE]
    assert is_scored(output, 7) and not is_scored(output, 8)
    assert finished_work("score", output) == counts

    # A second attempt at the shard that finds no error: the first attempt's errors file goes.
    write_scored_shard(output, _shard(7, 5))
    assert not files.exists(errors_path(output, 7)) and read_counters(output, 7)["score:kept"] == 5


def test_a_shard_that_could_not_be_read_leaves_errors_and_no_part(tmp_path):
    output = str(tmp_path / "scores")
    shard = ScoredShard(2, "/data/00002.tar", pa.table({}), np.zeros((0, 8)), np.zeros((0, 8)), np.zeros(0),
                        errors=[error_record(STAGE, UNREADABLE_SHARD, offset=2)], read_failed=True)
    assert write_scored_shard(output, shard) == {"score:shards_unreadable": 1, "score:error_unreadable_shard": 1}
    assert not is_scored(output, 2) and list_parts(output) == [] and not files.exists(counters_path(output, 2))
    assert pq.read_table(errors_path(output, 2)).column("reason").to_pylist() == [UNREADABLE_SHARD]
    assert finished_work("score", output) == {}


def test_resume_refuses_a_part_that_kept_no_counters(tmp_path):
    output = str(tmp_path / "scores")
    write_scored_shard(output, _shard(4, 3))
    files.delete(counters_path(output, 4))  # as an earlier version left its parts
    with pytest.raises(ValueError, match="part 4 has no counters/counters_4.json.*new --output"):
        finished_work("score", output)


def test_the_settings_are_recorded_once_and_a_rerun_must_match_them(tmp_path):
    output = str(tmp_path / "scores")
    assert read_settings(output) is None
    settings = {"input": "/data/download", "splits": {"multi": ("multi", None)},
                "thresholds": {"min_similarity": {"en": 0.28}, "max_tags": {}, "score_only": False}}
    record_settings(output, settings)
    assert json.loads(open(settings_path(output)).read()) == read_settings(output)
    record_settings(output, settings)  # the same settings (tuples read back as lists): a resume
    with pytest.raises(ValueError, match="other settings"):
        record_settings(output, {**settings, "thresholds": {**settings["thresholds"], "score_only": True}})
    assert read_settings(output)["thresholds"]["score_only"] is False
    assert Thresholds().min_similarity == {"en": 0.28, "multi": 0.26}


def test_list_parts_takes_finished_parts_in_number_order_and_nothing_else(tmp_path):
    output = str(tmp_path / "scores")
    vectors = np.eye(3, dtype=np.float32)
    for number in (10, 2):
        write_part(output, number, vectors, vectors, pa.table({"uid": ["a", "b", "c"]}))
    folder = files.join(output, "metadata")
    files.write_atomic(files.join(folder, "metadata_x.parquet"), b"not a part")
    files.write_atomic(files.join(folder, ".metadata_5.parquet.tmp-0123"), b"a killed attempt's")
    files.write_atomic(files.join(output, "img_emb", "img_emb_6.npy"), b"arrays without metadata")
    assert [part.number for part in list_parts(output)] == [2, 10]
    assert list_parts(str(tmp_path / "nothing-here")) == []
    assert read_metadata(output, ["uid"]).num_rows == 6
