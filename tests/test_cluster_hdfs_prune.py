"""`crawl2clip prune` and `prune-apply`, and `run`'s prune, with input and output on a real HDFS
(deploy/cluster.sh hdfs start): every output, read back through the file layer with the real
readers, equals that of the same command on local folders, and no temporary file is left.

The scoring output is the prune tests' planted one (tests/prune_fixtures.py: tight and diffuse
concepts, near-duplicate pairs, parts with gaps, a zero vector and a misaligned part), written
by the same code into a local folder and into the HDFS."""

import io
import os
import tarfile

import numpy as np
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from crawl2clip.pipelines.cli import main
from crawl2clip.pipelines.end_to_end import SUCCESS_FILE, run_end_to_end
from crawl2clip.pipelines.options import Crawl2ClipOptions
from crawl2clip.transforms import files
from crawl2clip.transforms.embeddings import IMG_EMB, METADATA, TEXT_EMB, list_parts, load_embeddings
from crawl2clip.transforms.prune.apply import SHARDS
from crawl2clip.transforms.errors import ERRORS_FOLDER
from crawl2clip.transforms.prune.outputs import (
    CLUSTERS,
    DUPLICATES,
    KEPT,
    OUTPUT_FILES,
    PLOT,
    error_files,
    output_path,
    read_summary,
)
from crawl2clip.transforms.tables import read_table
from crawl2clip.transforms.score.write import SHARD
from tests.prune_fixtures import ARGS, write_dataset

pytest_plugins = ["tests.cluster_fixtures"]
pytestmark = pytest.mark.cluster

TABLES = (KEPT, DUPLICATES, CLUSTERS)
PORTABLE_FLAGS = ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"]


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> dict:
    """The dataset on local folders, pruned and applied by the same commands."""
    root = tmp_path_factory.mktemp("local")
    dataset = write_dataset(str(root / "score"), str(root / "download"))
    prune, pruned = str(root / "prune"), str(root / "pruned")
    assert main(["prune", "--input", dataset["score"], "--output", prune, *ARGS]) == 0
    assert main(["prune-apply", "--kept", output_path(prune, KEPT), "--input", dataset["score"], "--output", pruned,
                 "--shards", dataset["download"]]) == 0
    return {**dataset, "prune": prune, "pruned": pruned}


def errors(folder: str) -> list[tuple]:
    """The error rows, their sources cut to the file name (the folders differ)."""
    rows = [row for path in error_files(folder) for row in read_table(path).to_pylist()]
    return sorted((r["stage"], r["reason"], files.split(r["source"])[1], r["offset"], r["detail"]) for r in rows)


def no_temporaries(folder: str, subfolders: tuple[str, ...]) -> None:
    for where in (folder, *(files.join(folder, name) for name in subfolders)):
        assert files.match(files.join(where, ".*")) == [], where


def assert_same_prune(output: str, local_output: str) -> None:
    for name in TABLES:
        assert read_table(output_path(output, name)).equals(read_table(output_path(local_output, name))), name
    assert read_summary(output) == read_summary(local_output)
    assert files.read_bytes(output_path(output, PLOT))[:8] == b"\x89PNG\r\n\x1a\n"
    assert errors(output) == errors(local_output) and len(errors(output)) == 2
    no_temporaries(output, (ERRORS_FOLDER,))


def test_prune_from_and_to_hdfs_equals_the_local_run(hdfs_cluster, hdfs_dir, local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # an hdfs:// path taken for a local one would show up here
    dataset = write_dataset(files.join(hdfs_dir, "score"), files.join(hdfs_dir, "download"))
    beam_output, single_output = files.join(hdfs_dir, "prune"), files.join(hdfs_dir, "prune-single")
    assert main(["prune", "--input", dataset["score"], "--output", beam_output, *ARGS,
                 *hdfs_cluster.pipeline_args]) == 0
    assert_same_prune(beam_output, local["prune"])
    counters = files.read_marker(files.join(beam_output, "metrics.json"))["counters"]
    assert counters == files.read_marker(files.join(local["prune"], "metrics.json"))["counters"]
    assert counters["prune:kept"] == read_table(output_path(beam_output, KEPT)).num_rows > 0

    assert main(["prune", "--input", dataset["score"], "--output", single_output, *ARGS, "--prune-single-machine",
                 *hdfs_cluster.pipeline_args]) == 0
    assert_same_prune(single_output, local["prune"])
    assert os.listdir(tmp_path) == []


def _parts(folder: str) -> dict[int, dict]:
    """Each part of a pruned layout: its metadata (the shard column as the shard's file name and
    whether it lies in the layout's shards/ folder) and its embeddings."""
    parts = {}
    for part in list_parts(folder):
        metadata = read_table(part.metadata)
        shards = metadata[SHARD].to_pylist()
        assert all(files.split(path)[0] == files.join(folder, SHARDS) for path in shards)
        metadata = metadata.set_column(metadata.column_names.index(SHARD), SHARD,
                                       pa.array([files.split(path)[1] for path in shards]))
        parts[part.number] = {"metadata": metadata, "img": np.asarray(load_embeddings(part.img_emb)),
                              "text": np.asarray(load_embeddings(part.text_emb))}
    return parts


def _shards(folder: str) -> dict[str, bytes]:
    return {files.split(path)[1]: files.read_bytes(path) for path in files.match(files.join(folder, SHARDS, "*.*"))}


def assert_same_pruned_layout(output: str, local_output: str, kept_uids: list[str]) -> None:
    got, expected = _parts(output), _parts(local_output)
    assert sorted(got) == sorted(expected) == [0, 2, 4, 6, 8]
    for number, part in got.items():
        assert part["metadata"].equals(expected[number]["metadata"]), number
        for name in ("img", "text"):
            assert np.array_equal(part[name], expected[number][name]), (number, name)
    assert [uid for n in sorted(got) for uid in got[n]["metadata"]["uid"].to_pylist()] == kept_uids
    shards = _shards(output)
    assert shards == _shards(local_output) and len(shards) == 10  # 5 tars, each with its parquet rows
    kept_keys = {key for part in got.values() for key in part["metadata"]["key"].to_pylist()}
    for name, data in shards.items():
        if name.endswith(".tar"):
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                assert {member.name.split(".", 1)[0] for member in tar} <= kept_keys
    no_temporaries(output, (IMG_EMB, TEXT_EMB, METADATA, SHARDS, ERRORS_FOLDER))


def test_prune_apply_from_and_to_hdfs_equals_the_local_run(hdfs_cluster, hdfs_dir, local, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dataset = write_dataset(files.join(hdfs_dir, "score"), files.join(hdfs_dir, "download"))
    kept = files.join(hdfs_dir, "prune", KEPT)
    files.write_atomic(kept, files.read_bytes(output_path(local["prune"], KEPT)))
    pruned = files.join(hdfs_dir, "pruned")
    argv = ["prune-apply", "--kept", kept, "--input", dataset["score"], "--output", pruned,
            "--shards", dataset["download"], *hdfs_cluster.pipeline_args]
    kept_uids = read_table(kept)["uid"].to_pylist()
    assert main(argv) == 0
    assert_same_pruned_layout(pruned, local["pruned"], kept_uids)
    counters = files.read_marker(files.join(pruned, "metrics.json"))["counters"]
    assert counters["prune_apply:rows_kept"] == len(kept_uids) and counters["prune_apply:parts"] == 5

    # Again into the same folder: HDFS renames only onto free names; every file is replaced.
    assert main(argv) == 0
    assert_same_pruned_layout(pruned, local["pruned"], kept_uids)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("runner_flags", [[], PORTABLE_FLAGS], ids=["direct-single-machine", "portable-beam"])
def test_run_prunes_a_score_folder_on_hdfs(hdfs_cluster, hdfs_dir, local, runner_flags):
    """`run`'s prune stage, the earlier stages done: on DirectRunner the single-machine step, on
    a portable runner the Beam prune; both read and write the HDFS and equal the local prune."""
    run_dir = files.join(hdfs_dir, "run")
    write_dataset(files.join(run_dir, "score"), files.join(hdfs_dir, "download"))
    for stage in ("extract", "download", "score"):
        files.write_marker(files.join(run_dir, stage, SUCCESS_FILE), {"stage": stage})
    pipeline_options = PipelineOptions(["--input", "unused-extract-is-done.warc.gz", "--output-dir", run_dir,
                                        "--prune", *ARGS, *hdfs_cluster.pipeline_args, *runner_flags])
    report = run_end_to_end(pipeline_options, pipeline_options.view_as(Crawl2ClipOptions))
    assert report["stages"]["prune"]["ran"] and report["counters"]["prune:duplicates_removed"] == 20
    prune_dir = files.join(run_dir, "prune")
    assert_same_prune(prune_dir, local["prune"])
    assert files.exists(files.join(prune_dir, SUCCESS_FILE))
    assert set(OUTPUT_FILES) <= {files.split(path)[1] for path in files.match(files.join(prune_dir, "*.*"))}
