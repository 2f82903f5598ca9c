"""crawl2clip prune and prune-apply end to end, on synthetic embeddings with planted structure:
tight and diffuse concept clusters, and near-duplicate pairs; Beam (DirectRunner) against the
single-machine path; the pruned layout and webdataset shards read back with their own readers."""

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset

from crawl2clip.pipelines.cli import main
from crawl2clip.transforms.embeddings import list_parts, load_embeddings, read_metadata
from crawl2clip.transforms.prune.settings import PruneSettings
from crawl2clip.transforms.prune.single_machine import prune_single_machine
from tests.prune_fixtures import ARGS, PAIRS, SETTINGS, SPREADS, write_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A scoring output (parts 0, 2, 4, ... with gaps) and the download shards it points at."""
    root = tmp_path_factory.mktemp("prune")
    return write_dataset(str(root / "score"), str(root / "download"))


@pytest.fixture(scope="module")
def single(dataset, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("single"))
    prune_single_machine(dataset["score"], out, SETTINGS)
    return out


@pytest.fixture(scope="module")
def beam(dataset, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("beam"))
    assert main(["prune", "--input", dataset["score"], "--output", out, *ARGS]) == 0
    return out


def _table(out, name):
    return pq.read_table(os.path.join(out, name))


def test_beam_gives_what_the_single_machine_path_gives(single, beam):
    for name in ("kept.parquet", "clusters.parquet", "duplicates.parquet"):
        assert _table(beam, name).equals(_table(single, name)), name
    with open(os.path.join(beam, "prune.json")) as a, open(os.path.join(single, "prune.json")) as b:
        assert json.load(a) == json.load(b)
    counters = json.load(open(os.path.join(beam, "metrics.json")))["counters"]
    assert counters["prune:kept"] == _table(single, "kept.parquet").num_rows
    assert counters["prune:duplicates_removed"] == _table(single, "duplicates.parquet").num_rows


def test_exactly_one_of_each_planted_duplicate_pair_survives(dataset, single):
    duplicates = _table(single, "duplicates.parquet").to_pylist()
    removed = {row["uid"]: row["duplicate_of_uid"] for row in duplicates}
    assert len(removed) == PAIRS  # nothing but the planted pairs
    for a, b in dataset["pairs"]:
        assert (removed.get(a) == b) != (removed.get(b) == a)
    kept = set(_table(single, "kept.parquet")["uid"].to_pylist())
    assert not any(a in kept and b in kept for a, b in dataset["pairs"])
    assert not kept & set(removed)


def test_the_number_kept_is_the_target(dataset, single):
    summary = json.load(open(os.path.join(single, "prune.json")))
    valid = len(dataset["uids"]) - 1  # the zero vector
    assert summary["valid_rows"] == valid
    assert summary["after_dedup"] == valid - PAIRS
    target = int(np.floor(0.4 * valid))
    assert summary["target"] == summary["kept"] == target
    assert _table(single, "kept.parquet").num_rows == target
    clusters = _table(single, "clusters.parquet")
    assert sum(clusters["kept"].to_pylist()) == target
    assert sum(clusters["size"].to_pylist()) == summary["after_dedup"]
    per_cluster = np.bincount(_table(single, "kept.parquet")["cluster"].to_numpy(), minlength=clusters.num_rows)
    assert per_cluster.tolist() == clusters["kept"].to_pylist()
    assert all(0 <= k <= s for k, s in zip(clusters["kept"].to_pylist(), clusters["size"].to_pylist()))


def test_diffuse_concepts_keep_more_than_tight_ones(dataset, single):
    kept = set(_table(single, "kept.parquet")["uid"].to_pylist())
    labels = dataset["labels"]
    rate = {j: np.mean([uid in kept for uid, label in zip(dataset["uids"], labels) if label == j])
            for j in range(len(SPREADS))}
    tight = [rate[j] for j, s in enumerate(SPREADS) if s == 0.1]
    diffuse = [rate[j] for j, s in enumerate(SPREADS) if s == 0.3]
    assert min(diffuse) > max(tight)
    clusters = _table(single, "clusters.parquet").to_pandas()
    present = clusters[clusters["size"] > 1]
    # keep rate grows with complexity (rank correlation of the clusters)
    assert present["complexity"].rank().corr(present["keep_rate"].rank()) > 0.5


def test_hard_members_fill_the_quota(dataset, single):
    kept = _table(single, "kept.parquet").to_pandas()
    clusters = _table(single, "clusters.parquet").to_pandas()
    # kept members are the far ones: their mean distance is above the cluster's mean (d_intra)
    for cluster, group in kept.groupby("cluster"):
        row = clusters.loc[clusters["cluster"] == cluster].iloc[0]
        if row["kept"] < row["size"]:
            assert group["distance"].mean() > row["d_intra"]


def test_bad_input_is_recorded_not_fatal(dataset, single, beam):
    for out in (single, beam):
        errors = pq.read_table(os.path.join(out, "errors")).to_pylist()
        reasons = {(e["reason"], os.path.basename(e["source"]), e["offset"]) for e in errors}
        assert ("unusable_embedding", "img_emb_0.npy", 5) in reasons
        assert ("misaligned_part", "img_emb_99.npy", -1) in reasons
        assert len(errors) == 2
    assert dataset["bad_uid"] not in set(_table(single, "kept.parquet")["uid"].to_pylist())
    counters = json.load(open(os.path.join(beam, "metrics.json")))["counters"]
    assert counters["prune:error_unusable_embedding"] == 1


def test_the_seed_decides_the_result(dataset, single, tmp_path):
    again, other = str(tmp_path / "again"), str(tmp_path / "other")
    prune_single_machine(dataset["score"], again, SETTINGS)
    assert _table(again, "kept.parquet").equals(_table(single, "kept.parquet"))
    prune_single_machine(dataset["score"], other, PruneSettings(**{**SETTINGS.__dict__, "keep": "random"}))
    assert _table(other, "kept.parquet").num_rows == _table(single, "kept.parquet").num_rows
    kept_uids = set(_table(single, "kept.parquet")["uid"].to_pylist())
    assert set(_table(other, "kept.parquet")["uid"].to_pylist()) != kept_uids


def test_plot_is_written(single):
    with open(os.path.join(single, "complexity_vs_keep_rate.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_prune_apply_writes_the_pruned_layout_and_shards(dataset, single, tmp_path):
    out = str(tmp_path / "pruned")
    kept_path = os.path.join(single, "kept.parquet")
    assert main(["prune-apply", "--kept", kept_path, "--input", dataset["score"], "--output", out,
                 "--shards", dataset["download"]]) == 0
    kept = pq.read_table(kept_path)
    metadata = read_metadata(out)
    assert metadata["uid"].to_pylist() == kept["uid"].to_pylist()
    # embeddings follow their rows
    source = {part.number: load_embeddings(part.img_emb) for part in list_parts(dataset["score"])}
    for part in list_parts(out):
        rows = kept.filter(pa.compute.equal(kept["part"], part.number))["row"].to_numpy()
        assert np.array_equal(load_embeddings(part.img_emb), source[part.number][rows])
        assert np.array_equal(load_embeddings(part.text_emb), source[part.number][rows])
    # webdataset reads the pruned shards: exactly the kept samples, bytes as downloaded
    shards = sorted(set(metadata["shard"].to_pylist()))
    assert all(s.startswith(os.path.join(out, "shards")) for s in shards)
    samples = list(webdataset.WebDataset(shards, shardshuffle=False))
    assert sorted(s["__key__"] for s in samples) == sorted(kept["key"].to_pylist())
    original = {}
    for name in sorted(os.listdir(dataset["download"])):
        if name.endswith(".tar"):
            original.update({s["__key__"]: s for s in webdataset.WebDataset(os.path.join(dataset["download"], name),
                                                                            shardshuffle=False)})
    assert all(s["jpg"] == original[s["__key__"]]["jpg"] and s["txt"] == original[s["__key__"]]["txt"] for s in samples)
    rows = pq.read_table(shards[0].replace(".tar", ".parquet"))
    assert set(rows["key"].to_pylist()) <= set(kept["key"].to_pylist()) and rows.num_rows > 0


def test_prune_apply_refuses_a_kept_list_of_another_folder(dataset, single, tmp_path):
    kept = pq.read_table(os.path.join(single, "kept.parquet"))
    wrong = kept.set_column(kept.column_names.index("uid"), "uid", pa.array(["0" * 32] * kept.num_rows))
    pq.write_table(wrong, tmp_path / "wrong.parquet")
    out = str(tmp_path / "pruned")
    assert main(["prune-apply", "--kept", str(tmp_path / "wrong.parquet"), "--input", dataset["score"],
                 "--output", out]) == 0
    errors = pq.read_table(os.path.join(out, "errors")).to_pylist()
    assert errors and {e["reason"] for e in errors} == {"kept_mismatch"}
    assert list_parts(out) == []


def test_options_are_checked_before_anything_runs(dataset, tmp_path, capsys):
    assert main(["prune", "--input", dataset["score"], "--output", str(tmp_path / "o")]) == 2
    assert "--keep-fraction" in capsys.readouterr().err
    assert main(["prune", "--input", dataset["score"], "--output", str(tmp_path / "o"), "--keep-fraction", "1.5",
                 "--prune-temperature", "0"]) == 2
    err = capsys.readouterr().err
    assert "--keep-fraction must be in (0, 1]" in err and "--prune-temperature must be > 0" in err
    assert main(["prune-apply", "--input", dataset["score"], "--output", str(tmp_path / "o")]) == 2
    assert "--kept" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")
