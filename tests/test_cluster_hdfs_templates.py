"""The laion-pruned template (archives to the pruned subset in one pipeline) with its input and
output on a real HDFS (deploy/cluster.sh hdfs start), on DirectRunner: every stage's output, read
back from HDFS with the stages' own readers, equals `crawl2clip run --prune` on local files. The
images are the real covers of the books-toscrape capture, served by the replay proxy."""

import json
import os

import pyarrow.parquet as pq
import pytest

from crawl2clip.pipelines.cli import main
from crawl2clip.pipelines.config import config_to_flags
from crawl2clip.pipelines.replay import replay_proxy
from crawl2clip.transforms import files
from crawl2clip.transforms.download.shards import finished_shards, read_shard_table
from crawl2clip.transforms.embeddings import read_metadata

pytest_plugins = ["tests.cluster_fixtures"]
pytestmark = pytest.mark.cluster

# 19 pairs in 3 shards, every image kept, every pair scored, a small prune
DOWNLOAD = {"image_size": 64, "shard_size": 8, "min_image_bytes": 0}
SCORE = {"tiny_clip": True, "min_similarity_en": -1, "min_similarity_multi": -1}
PRUNE = {"keep_fraction": 0.5, "prune_clusters": 2, "prune_neighbours": 1}


@pytest.fixture(scope="module")
def local_run(books, tmp_path_factory) -> str:
    output = str(tmp_path_factory.mktemp("local") / "run")
    with replay_proxy(books) as (proxy, _):
        assert main(["run", "--input", books, "--output", output, "--prune", "--proxy", proxy,
                     *config_to_flags({**DOWNLOAD, **SCORE, **PRUNE})]) == 0
    return output


def _download_rows(download_dir: str) -> list[tuple]:
    rows = []
    for shard in sorted(finished_shards(download_dir)):
        table = read_shard_table(download_dir, shard, ["key", "uid", "status", "sha256"])
        rows += zip(*(table.column(c).to_pylist() for c in ("key", "uid", "status", "sha256")))
    return sorted(rows)


def _kept_uids(prune_dir: str) -> list[str]:
    with files.open_read(files.join(prune_dir, "kept.parquet")) as f:
        return sorted(pq.read_table(f).column("uid").to_pylist())


def test_the_pruned_template_on_hdfs_equals_run_prune_on_local_files(hdfs_cluster, hdfs_dir, books, local_run,
                                                                    tmp_path, monkeypatch):
    crawl = files.join(hdfs_dir, "crawl", "books-toscrape.warc")
    files.upload(books, crawl)
    output = files.join(hdfs_dir, "run")
    monkeypatch.chdir(tmp_path)  # an hdfs:// path taken for a local one would show up here
    with replay_proxy(books) as (proxy, _):
        assert main(["run", "--template", "laion-pruned", "--set", f"input=['{crawl}']", "--set", f"output={output}",
                     "--set", f"download={json.dumps({**DOWNLOAD, 'proxy': proxy})}",
                     "--set", f"score={json.dumps(SCORE)}", "--set", f"prune={json.dumps(PRUNE)}",
                     *hdfs_cluster.pipeline_args]) == 0
    assert os.listdir(tmp_path) == []

    kept = _kept_uids(files.join(output, "prune"))
    assert kept and kept == _kept_uids(os.path.join(local_run, "prune"))
    assert _download_rows(files.join(output, "download")) == _download_rows(os.path.join(local_run, "download"))
    ours, theirs = read_metadata(files.join(output, "score")), read_metadata(os.path.join(local_run, "score"))
    assert ours.column("uid").to_pylist() == theirs.column("uid").to_pylist()
    assert ours.column("similarity").to_pylist() == pytest.approx(theirs.column("similarity").to_pylist(), abs=1e-5)
    with files.open_read(files.join(output, "metrics.json")) as f:
        counters = json.load(f)["counters"]
    assert counters["prune:kept"] == len(kept) and counters["download:shards"] == 3
    # nothing half-written is left: every temporary was committed under its final name
    for folder in ("extract/pairs", "download", "score/metadata", "score/img_emb", "prune"):
        assert not [path for path in files.match(files.join(output, folder, "*")) if ".tmp" in path], folder
