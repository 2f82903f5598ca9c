"""crawl2clip prune and prune-apply end to end, on synthetic embeddings with planted structure:
tight and diffuse concept clusters, and near-duplicate pairs; Beam (DirectRunner) against the
single-machine path; the pruned layout and webdataset shards read back with their own readers."""

import io
import json
import os
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset

from crawl2clip.pipelines.cli import main
from crawl2clip.pipelines.prune import prune_single_machine
from crawl2clip.transforms.embeddings import list_parts, load_embeddings, read_metadata, write_part
from crawl2clip.transforms.prune.settings import PruneSettings

DIM = 64
PER_CLUSTER = 150
SPREADS = (0.1, 0.3, 0.1, 0.3, 0.1, 0.3, 0.1, 0.3)  # tight and diffuse concepts
PAIRS = 20
PART_ROWS = 300
SETTINGS = PruneSettings(keep_fraction=0.4, clusters=len(SPREADS), dedup_cluster_size=200, seed=11)
ARGS = ["--keep-fraction", "0.4", "--prune-clusters", str(len(SPREADS)), "--dedup-cluster-size", "200",
        "--prune-seed", "11"]


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """A scoring output (parts 0, 2, 4, ... with gaps) and the download shards it points at."""
    root = tmp_path_factory.mktemp("prune")
    score, download = str(root / "score"), str(root / "download")
    os.makedirs(download)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((len(SPREADS), DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = np.concatenate([centres[j] + s * rng.standard_normal((PER_CLUSTER, DIM)) for j, s in enumerate(SPREADS)])
    labels = np.repeat(np.arange(len(SPREADS)), PER_CLUSTER)
    sources = rng.choice(len(vectors), PAIRS, replace=False)
    vectors = np.concatenate([vectors, vectors[sources] + 0.01 * rng.standard_normal((PAIRS, DIM))])
    labels = np.concatenate([labels, labels[sources]])
    pair_rows = [(int(s), len(vectors) - PAIRS + i) for i, s in enumerate(sources)]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    order = rng.permutation(len(vectors))
    position = np.argsort(order)
    vectors, labels = vectors[order], labels[order]
    uids = [f"{i:032x}" for i in range(len(vectors))]
    pairs = [(uids[position[a]], uids[position[b]]) for a, b in pair_rows]
    vectors[5] = 0.0  # an embedding with no direction: an error, never a point
    keys = []
    for p, start in enumerate(range(0, len(vectors), PART_ROWS)):
        rows = slice(start, start + PART_ROWS)
        n = len(vectors[rows])
        part_keys = [f"{p:05d}{i:04d}" for i in range(n)]
        keys += part_keys
        shard = os.path.join(download, f"{p:05d}.tar")
        with open(shard, "wb") as f:
            f.write(_tar_bytes({name: data for k in part_keys for name, data in
                                ((f"{k}.jpg", rng.bytes(64)), (f"{k}.txt", k.encode()), (f"{k}.json", b"{}"))}))
        pq.write_table(pa.table({"key": part_keys, "status": ["success"] * n}),
                       os.path.join(download, f"{p:05d}.parquet"))
        meta = pa.table({"uid": uids[rows], "key": part_keys, "shard": [shard] * n,
                         "hash": pa.array(np.arange(start, start + n), pa.int64()), "label": labels[rows]})
        write_part(score, 2 * p, vectors[rows], vectors[rows], meta)
    # a part whose embeddings and metadata disagree: left out, reported
    write_part(score, 99, vectors[:3], vectors[:3], pa.table({"uid": ["x", "y", "z"]}))
    np.save(os.path.join(score, "img_emb", "img_emb_99.npy"), vectors[:4].astype(np.float16))
    return {"score": score, "download": download, "pairs": pairs, "uids": uids, "labels": labels,
            "keys": keys, "bad_uid": uids[5]}


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
