"""`crawl2clip remove` on a finished run in a real HDFS (deploy/cluster.sh hdfs start), on
DirectRunner: the books-toscrape run of tests/test_remove.py (download shards, score parts, prune
outputs, an index) copied into the HDFS through the file layer, with temporaries a killed writer
left, cleaned in place by the lists of every kind; the first attempt crashes half-way, the second
finishes it. Read back file by file, the HDFS run equals the same remove done on a local copy;
the leftovers were neither cleaned nor taken for finished files; a rerun changes nothing."""

import glob
import hashlib
import io
import json
import os
import re
import shutil
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from crawl2clip.pipelines.cli import main
from crawl2clip.transforms import files
from crawl2clip.transforms.consent.audit import REMOVED
from crawl2clip.transforms.remove import rewrite
from tests.test_remove import crash_on_the_fifth_rename, finished_run, lists, remove_args  # noqa: F401  (module fixtures)

pytest_plugins = ["tests.cluster_fixtures"]
pytestmark = pytest.mark.cluster

# What a killed writer leaves: the file layer's temporaries, and a legacy one.
LEFTOVERS = {"download/.00001.tar.tmp-killed": b"half a tar", "score/img_emb/.img_emb_0.npy.tmp-killed": b"half",
             "extract/pairs/.pairs-00000-of-00001.parquet.tmp-killed": b"half a table",
             "prune/kept.parquet.4242.tmp": b"half a table"}
EMPTY_FOLDER = "extract/empty"  # HDFS lists folders: an empty one is no file to clean or copy
# Keys of the JSON files a remove writes that name the run's folder or a time.
WHERE_AND_WHEN = {"run_dir", "dataset", "output", "audit", "report", "source", "finished", "seconds", "merge_seconds",
                  "train_seconds"}


def local_files(folder: str) -> list[str]:
    return sorted(os.path.relpath(p, folder) for p in glob.glob(os.path.join(folder, "**"), recursive=True)
                  if os.path.isfile(p))


def hdfs_listing(run: str, folders: set[str]) -> set[str]:
    """The names in each of `folders` of the HDFS run (files and subfolders), relative to it."""
    return {rewrite.relative(path, run) for folder in folders
            for path in files.match(files.join(run, folder, "*") if folder else files.join(run, "*"))}


def audit_name(name: str) -> str:
    """removed/remove-<digest>.parquet, removed/_remove-<digest>.json: the digest names the dataset's folder."""
    return re.sub(r"^(removed/_?remove-)[0-9a-f]{12}", r"\1<digest>", name)


def _without(value, keys: set[str]):
    if isinstance(value, dict):
        return {k: _without(v, keys) for k, v in value.items() if k not in keys}
    return [_without(v, keys) for v in value] if isinstance(value, list) else value


def read_back(name: str, data: bytes, run: str):
    """A file's content as its reader sees it (tables by their rows, arrays by their values), the
    run's own folder and the times left out."""
    if name.endswith(".json"):
        return _without(json.loads(data), WHERE_AND_WHEN)
    if name.endswith(".html"):
        return data.replace(run.encode(), b"<run>")
    if name.endswith(".parquet"):
        return pq.read_table(io.BytesIO(data)).to_pylist()
    if name.endswith(".npy"):
        return np.load(io.BytesIO(data)).tolist()
    if name.endswith(".arrow"):
        return pa.ipc.open_file(io.BytesIO(data)).read_all().to_pylist()
    if name.endswith(".tar"):
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            return [(m.name, tar.extractfile(m).read()) for m in tar], data
    return data


def test_remove_on_hdfs_equals_the_same_remove_on_local_files(hdfs_cluster, hdfs_dir, finished_run, lists, tmp_path,
                                                               monkeypatch):
    local = str(tmp_path / "local")
    shutil.copytree(finished_run, local)
    assert main(["remove", "--dataset", local, *remove_args(lists)]) == 0
    files.configure(PipelineOptions(hdfs_cluster.pipeline_args))  # the local run's options were the last set

    run = files.join(hdfs_dir, "run")
    for name in local_files(finished_run):
        with open(os.path.join(finished_run, name), "rb") as f:
            files.write_atomic(files.join(run, name), f.read())
    for name, data in LEFTOVERS.items():
        files.write_atomic(files.join(run, name), data)
    files.makedirs(files.join(run, EMPTY_FOLDER))
    monkeypatch.chdir(tmp_path)  # an hdfs:// path taken for a local one would show up here
    argv = ["remove", "--dataset", run, *remove_args(lists), *hdfs_cluster.pipeline_args]

    # The first attempt dies half-way through its renames: a unit is caught between two of them.
    with monkeypatch.context() as patch:
        crash_on_the_fifth_rename(patch)
        with pytest.raises(Exception, match="simulated crash"):
            main(argv)
    (work,) = files.match(files.join(run, REMOVED, ".remove-*"))
    assert files.match(files.join(work, "staged", "*"))
    assert main(argv) == 0
    assert not files.exists(work)
    assert sorted(os.listdir(tmp_path)) == ["local"]

    # The same files, read back: the leftovers are still there, untouched, and nothing else is.
    expected = local_files(local)
    folders = {name.rpartition("/")[0] for name in expected}
    folders |= {f.rpartition("/")[0] for f in folders if f} | {EMPTY_FOLDER}
    listed = hdfs_listing(run, folders)
    assert {audit_name(n) for n in listed} == {audit_name(n) for n in expected} | folders - {""} | set(LEFTOVERS)
    for name, data in LEFTOVERS.items():
        assert files.read_bytes(files.join(run, name)) == data
    by_audit_name = {audit_name(n): n for n in listed}
    for name in expected:
        got = files.read_bytes(files.join(run, by_audit_name[audit_name(name)]))
        with open(os.path.join(local, name), "rb") as f:
            want = f.read()
        assert read_back(name, got, run) == read_back(name, want, local), name
    (audit,) = files.match(files.join(run, REMOVED, "remove-*.parquet"))
    assert {row["uid"] for row in read_back(audit, files.read_bytes(audit), run)} == set(lists["expected"])
    (summary,) = files.match(files.join(run, REMOVED, "_remove-*.json"))
    counters = files.read_marker(summary)["counters"]  # equal to the local remove's: the crash lost no count
    assert counters["remove:rows_removed_download"] == 4 and counters["remove:units_shard"] == 3
    assert files.read_marker(files.join(run, "index", "index_info.json"))["rows"] == 17 - 3  # 3 of 4 were images

    # Once finished, the same lists change nothing.
    before = {n: hashlib.sha256(files.read_bytes(files.join(run, n))).hexdigest() for n in listed if n not in folders}
    assert len(before) == len(expected) + len(LEFTOVERS)
    assert main(argv) == 0
    assert {n: hashlib.sha256(files.read_bytes(files.join(run, n))).hexdigest() for n in before} == before
    assert hdfs_listing(run, folders) == listed

    # A cleaned copy of it in another HDFS folder: the lists find nothing more, and every finished
    # file is there as it was (the index and the report made again, equal), with the new audit.
    copy = files.join(hdfs_dir, "copy")
    assert main(["remove", "--dataset", run, "--output", copy, *remove_args(lists), *hdfs_cluster.pipeline_args]) == 0
    copied = {n for n in hdfs_listing(copy, folders) if n not in folders}
    (new_audit,) = {n for n in copied if n.startswith(f"{REMOVED}/remove-")} - set(before)
    assert read_back(new_audit, files.read_bytes(files.join(copy, new_audit)), copy) == []
    assert copied - set(before) == {new_audit, f"{REMOVED}/_{new_audit.rpartition('/')[2][:-len('.parquet')]}.json"}
    assert set(before) - copied == set(LEFTOVERS) and not files.exists(files.join(copy, EMPTY_FOLDER))
    for name in copied & set(before):
        assert read_back(name, files.read_bytes(files.join(copy, name)), copy) == \
            read_back(name, files.read_bytes(files.join(run, name)), run), name
