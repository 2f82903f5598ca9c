"""`crawl2clip run`: the whole pipeline on real pages and images, replayed from a real WARC.

The books-toscrape capture holds a page with 20 `<img alt="book title">` and the 20 JPEGs; the
replay proxy serves them at their original URLs, so extract -> language -> download -> CLIP
(the project's tiny model) -> tags -> prune run end to end with no network. The report's counts
must agree with the Beam counters and with the files; the stages run one by one must give the
same output; the report page must render in a real Chromium.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import create_runner

from crawl2clip.pipelines.cli import main
from crawl2clip.pipelines.end_to_end import SUCCESS_FILE, run_end_to_end
from crawl2clip.pipelines.options import Crawl2ClipOptions
from crawl2clip.pipelines.prune import build_prune, build_prune_single_machine, prune_builder
from crawl2clip.pipelines.replay import replay_proxy
from crawl2clip.pipelines.resume import finished_work
from crawl2clip.pipelines.sample_crawl import write_sample_crawl
from crawl2clip.transforms import files
from crawl2clip.transforms.embeddings import list_parts, load_embeddings, read_metadata
from crawl2clip.transforms.prune.outputs import CLUSTERS, DUPLICATES, KEPT, read_summary
from crawl2clip.transforms.score.settings import EN
from tests.browser import chromium_page
from tests.score_fixtures import scene_pairs, write_download_shard

# Tiny images, all of them kept (some book covers are under the default --min-image-bytes), every
# pair scored (books against a model trained on rendered shapes score low), a small prune (19 unique
# pairs: 2 clusters, keep half).
DOWNLOAD_FLAGS = ["--image-size", "64", "--shard-size", "8", "--min-image-bytes", "0"]
SCORE_FLAGS = ["--tiny-clip", "--min-similarity-en", "-1", "--min-similarity-multi", "-1"]
STAGE_FLAGS = DOWNLOAD_FLAGS + SCORE_FLAGS
PRUNE_FLAGS = ["--keep-fraction", "0.5", "--prune-clusters", "2", "--prune-neighbours", "1"]


def _counters(run_dir: str) -> dict[str, int]:
    with open(os.path.join(run_dir, "metrics.json")) as f:
        return json.load(f)["counters"]


def _download_table(download_dir: str):
    """Every download row (the folder also holds the tars, so the parquet files are named)."""
    files = sorted(os.path.join(download_dir, n) for n in os.listdir(download_dir) if n.endswith(".parquet"))
    return pq.ParquetDataset(files).read()


def _funnel(run_dir: str) -> dict[str, int]:
    with open(os.path.join(run_dir, "report.json")) as f:
        return {step["step"]: step["count"] for step in json.load(f)["funnel"]}


@pytest.fixture(scope="module")
def combined_run(books, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("combined") / "run")
    with replay_proxy(books) as (proxy, _):
        assert main(["run", "--input", books, "--output", run_dir, "--proxy", proxy, "--prune",
                     *STAGE_FLAGS, *PRUNE_FLAGS]) == 0
    return run_dir


def test_counts_agree_between_report_metrics_and_files(combined_run):
    funnel, counters = _funnel(combined_run), _counters(combined_run)
    pairs = pq.read_table(os.path.join(combined_run, "extract", "pairs"))
    downloads = _download_table(os.path.join(combined_run, "download"))
    kept = read_metadata(os.path.join(combined_run, "score"))
    pruned = pq.read_table(os.path.join(combined_run, "prune", "kept.parquet"))

    assert funnel["candidates"] == pairs.num_rows == counters["extract:unique_pairs"] >= 19
    downloaded = int(pc.sum(pc.equal(downloads.column("status"), "success")).as_py())
    assert funnel["downloaded"] == downloaded == counters["download:images"] == pairs.num_rows
    assert downloads.num_rows == pairs.num_rows  # every candidate has a download row
    assert funnel["CLIP-kept"] == kept.num_rows == downloaded  # thresholds at -1: all kept
    assert funnel["CLIP-kept"] == counters["score:kept"]
    # keep fraction 0.5, exactly (SemDeDup removes less than half here)
    assert funnel["kept by pruning"] == pruned.num_rows == counters["prune:kept"] == kept.num_rows // 2
    assert set(pruned.column("uid").to_pylist()) <= set(kept.column("uid").to_pylist())
    for part in list_parts(os.path.join(combined_run, "score")):
        embeddings = load_embeddings(part.img_emb)
        assert embeddings.shape[0] == pq.read_metadata(part.metadata).num_rows


def test_stages_run_one_by_one_give_the_same_output(books, combined_run, tmp_path):
    staged = str(tmp_path / "staged")
    extract_dir, download_dir = os.path.join(staged, "extract"), os.path.join(staged, "download")
    score_dir, prune_dir = os.path.join(staged, "score"), os.path.join(staged, "prune")
    assert main(["extract", "--input", books, "--output", extract_dir]) == 0
    with replay_proxy(books) as (proxy, _):
        assert main(["download", "--input", os.path.join(extract_dir, "pairs", "*.parquet"),
                     "--output", download_dir, "--proxy", proxy, *DOWNLOAD_FLAGS]) == 0
    assert main(["score", "--input", download_dir, "--output", score_dir, *SCORE_FLAGS]) == 0
    assert main(["prune", "--input", score_dir, "--output", prune_dir, *PRUNE_FLAGS]) == 0

    def rows(table, columns):
        return sorted(zip(*(table.column(c).to_pylist() for c in columns)))

    for stage, columns in (("extract/pairs", ["uid", "URL", "TEXT", "LANGUAGE", "split"]),):
        assert rows(pq.read_table(os.path.join(staged, stage)), columns) == \
            rows(pq.read_table(os.path.join(combined_run, stage)), columns)
    for name in sorted(os.listdir(download_dir)):
        if name.endswith(".parquet"):
            a = pq.read_table(os.path.join(download_dir, name))
            b = pq.read_table(os.path.join(combined_run, "download", name))
            assert rows(a, ["key", "uid", "status", "sha256"]) == rows(b, ["key", "uid", "status", "sha256"])
    a, b = read_metadata(score_dir), read_metadata(os.path.join(combined_run, "score"))
    assert a.column("uid").to_pylist() == b.column("uid").to_pylist()
    assert a.column("similarity").to_pylist() == pytest.approx(b.column("similarity").to_pylist(), abs=1e-5)
    # run's prune on DirectRunner (the single-machine step) and `crawl2clip prune` (Beam): the same rows
    for name in (KEPT, DUPLICATES, CLUSTERS):
        assert pq.read_table(os.path.join(prune_dir, name)).equals(
            pq.read_table(os.path.join(combined_run, "prune", name))), name


@pytest.mark.parametrize("runner", ["FlinkRunner", "SparkRunner", "PortableRunner", "DataflowRunner",
                                    "apache_beam.runners.portability.flink_runner.FlinkRunner"])
def test_run_prunes_with_the_beam_prune_on_a_cluster_runner(runner):
    assert prune_builder(create_runner(runner)) is build_prune


@pytest.mark.parametrize("runner", ["DirectRunner", "direct", "BundleBasedDirectRunner", "SwitchingDirectRunner"])
def test_run_prunes_in_one_step_on_direct_runner(runner):
    assert prune_builder(create_runner(runner)) is build_prune_single_machine


# Beam's portable runner with its in-process job service: a runner other than DirectRunner that
# runs here, as Flink and Spark run a job (submitted through the Job API, SDK workers in loopback).
PORTABLE_FLAGS = ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"]


def test_run_on_a_portable_runner_prunes_with_beam_what_it_scored(tmp_path):
    """On a non-Direct runner `run` builds the Beam prune once scoring has finished: it plans the
    parts the score stage wrote (built earlier it would find none and keep nothing), and keeps
    and removes the same rows as the single-machine prune of that folder."""
    run_dir = str(tmp_path / "run")
    download_dir = os.path.join(run_dir, "download")
    write_download_shard(download_dir, 0, [(d, c, EN) for d, c in scene_pairs(seed=1, count=12)])
    # shard 1 repeats five images of shard 0 (other URLs): near-duplicates for SemDeDup to remove
    repeated = scene_pairs(seed=1, count=5) + scene_pairs(seed=2, count=7)
    write_download_shard(download_dir, 1, [(d, c, EN) for d, c in repeated])
    for stage in ("extract", "download"):  # as if this run had done them
        files.write_marker(os.path.join(run_dir, stage, SUCCESS_FILE), {"stage": stage})
    pipeline_options = PipelineOptions(["--input", "unused-extract-is-done.warc.gz", "--output-dir", run_dir,
                                        *SCORE_FLAGS, "--prune", *PRUNE_FLAGS, *PORTABLE_FLAGS])
    report = run_end_to_end(pipeline_options, pipeline_options.view_as(Crawl2ClipOptions))
    assert report["runner"] == "PortableRunner"
    assert [s for s, info in report["stages"].items() if info["ran"]] == ["score", "prune"]

    single = str(tmp_path / "single")
    score_dir, prune_dir = os.path.join(run_dir, "score"), os.path.join(run_dir, "prune")
    assert main(["prune", "--input", score_dir, "--output", single, *PRUNE_FLAGS, "--prune-single-machine"]) == 0
    for name in (KEPT, DUPLICATES, CLUSTERS):
        assert pq.read_table(os.path.join(prune_dir, name)).equals(pq.read_table(os.path.join(single, name))), name
    assert read_summary(prune_dir) == read_summary(single)
    summary = read_summary(prune_dir)
    assert summary["valid_rows"] == 24 and summary["duplicates_removed"] == 5 and summary["kept"] == 12
    assert report["counters"]["prune:kept"] == 12 and report["counters"]["prune:duplicates_removed"] == 5
    assert os.path.exists(os.path.join(prune_dir, SUCCESS_FILE))


def test_a_bad_prune_setting_stops_run_before_any_stage(tmp_path):
    run_dir = str(tmp_path / "run")
    pipeline_options = PipelineOptions(["--input", "crawl.warc.gz", "--output-dir", run_dir, *SCORE_FLAGS, "--prune",
                                        "--keep-fraction", "0.5", "--prune-temperature", "0"])
    with pytest.raises(ValueError, match="--prune-temperature must be > 0"):
        run_end_to_end(pipeline_options, pipeline_options.view_as(Crawl2ClipOptions))
    assert not os.path.exists(os.path.join(run_dir, "extract"))


def test_report_page_renders_in_chromium(combined_run, tmp_path):
    page = os.path.join(combined_run, "report.html")
    with chromium_page("file://" + page) as driver:
        assert driver.title == "crawl2clip run report"
        assert driver.execute_script("return document.querySelectorAll('#funnel tr').length") > 3
        broken = driver.execute_script(
            "return [...document.images].filter(i => !i.complete || i.naturalWidth === 0).map(i => i.alt)")
        assert broken == []
        cards = driver.execute_script("return document.querySelectorAll('#samples .card').length")
        assert cards == len(read_metadata(os.path.join(combined_run, "score")))
        severe = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert severe == []
        os.makedirs(os.path.join("output", "test-artifacts"), exist_ok=True)
        driver.save_screenshot(str(tmp_path / "run-report.png"))
        shutil.copy(tmp_path / "run-report.png", os.path.join("output", "test-artifacts", "run-report.png"))


def _run_command(crawl: str, run_dir: str, proxy: str) -> list[str]:
    return [sys.executable, "-m", "crawl2clip.pipelines.cli", "run", "--input", crawl, "--output", run_dir,
            "--proxy", proxy, "--image-size", "64", "--shard-size", "20", "--tiny-clip"]


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """The sample crawl run whole, and run again into another folder, SIGKILLed as soon as its
    first download shard is finished, then resumed."""
    root = tmp_path_factory.mktemp("resume")
    crawl = str(root / "sample.warc.gz")
    write_sample_crawl(crawl, pages=60)
    whole, resumed = str(root / "whole"), str(root / "resumed")
    with replay_proxy(crawl) as (proxy, _):
        subprocess.run(_run_command(crawl, whole, proxy), check=True, capture_output=True)
        process = subprocess.Popen(_run_command(crawl, resumed, proxy), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 300
        download_dir = os.path.join(resumed, "download")
        while time.time() < deadline and process.poll() is None:
            if os.path.isdir(download_dir) and any(n.endswith("_stats.json") for n in os.listdir(download_dir)):
                break
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before it could be killed part-way"
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        assert not os.path.exists(os.path.join(resumed, "score", "_SUCCESS"))
        assert not os.path.exists(os.path.join(resumed, "download", "metrics.json"))
        finished_before = len([n for n in os.listdir(download_dir) if n.endswith("_stats.json")])
        subprocess.run(_run_command(crawl, resumed, proxy), check=True, capture_output=True)
    return {"whole": whole, "resumed": resumed, "finished_before": finished_before}


def test_a_killed_run_resumes_to_the_same_output(killed_and_resumed):
    whole, resumed = killed_and_resumed["whole"], killed_and_resumed["resumed"]
    for folder in ("extract/pairs", "score/metadata", "score/dropped"):
        a, b = pq.read_table(os.path.join(whole, folder)), pq.read_table(os.path.join(resumed, folder))
        assert sorted(a.column("uid").to_pylist()) == sorted(b.column("uid").to_pylist()), folder
    names = sorted(n for n in os.listdir(os.path.join(whole, "download")) if n.endswith((".tar", ".parquet")))
    assert names == sorted(n for n in os.listdir(os.path.join(resumed, "download")) if n.endswith((".tar", ".parquet")))
    for name in names:
        if name.endswith(".tar"):
            with open(os.path.join(whole, "download", name), "rb") as a, \
                    open(os.path.join(resumed, "download", name), "rb") as b:
                assert a.read() == b.read(), name


def _stage_counters(run_dir: str) -> dict[str, dict[str, int]]:
    """Each stage's counters as the report shows them (read from DIR/<stage>/metrics.json)."""
    with open(os.path.join(run_dir, "report.json")) as f:
        return {stage: info["counters"] for stage, info in json.load(f)["stages"].items()}


def test_a_resumed_run_counts_the_whole_data(killed_and_resumed):
    whole, resumed = killed_and_resumed["whole"], killed_and_resumed["resumed"]
    counters = _counters(resumed)
    assert counters == _counters(whole)
    assert _stage_counters(resumed) == _stage_counters(whole)
    assert set(_stage_counters(resumed)) == {"extract", "download", "score"}
    # ... and the data on disk: every pair, every downloaded image, every kept pair
    downloads = _download_table(os.path.join(resumed, "download"))
    assert counters["download:images"] == int(pc.sum(pc.equal(downloads.column("status"), "success")).as_py()) > 0
    assert counters["download:shards"] == len([n for n in os.listdir(os.path.join(resumed, "download"))
                                               if n.endswith("_stats.json")])
    assert counters["extract:unique_pairs"] == pq.read_table(os.path.join(resumed, "extract", "pairs")).num_rows
    assert counters["score:kept"] == read_metadata(os.path.join(resumed, "score")).num_rows
    assert _funnel(resumed) == _funnel(whole)
    # the resumed download stage says what it carried over from the killed run
    with open(os.path.join(resumed, "download", "metrics.json")) as f:
        download = json.load(f)
    assert download["carried"]["download:shards"] == killed_and_resumed["finished_before"]
    assert download["this_run"]["download:shards_already_done"] == killed_and_resumed["finished_before"]
    assert download["this_run"]["download:shards"] + killed_and_resumed["finished_before"] == counters["download:shards"]


def test_finished_units_are_counted_as_the_stage_counted_them(killed_and_resumed):
    """What resume reads back from finished shards and parts equals what Beam counted doing them."""
    whole = killed_and_resumed["whole"]
    stages = _stage_counters(whole)
    for stage in ("download", "score"):
        assert finished_work(stage, os.path.join(whole, stage)) == stages[stage], stage


def test_a_scoring_stage_resumed_part_way_counts_every_part(killed_and_resumed, tmp_path):
    """A run that died while scoring: half the parts written, no score/metrics.json, no _SUCCESS.
    The rerun scores only the missing parts and still counts all of them."""
    whole = killed_and_resumed["whole"]
    partial = str(tmp_path / "partial")
    shutil.copytree(whole, partial)
    score_dir = os.path.join(partial, "score")
    for name in ("_SUCCESS", "metrics.json"):
        os.remove(os.path.join(score_dir, name))
    with open(os.path.join(score_dir, "scoring.json")) as f:  # as if it had been scored in this folder
        settings = json.load(f)
    with open(os.path.join(score_dir, "scoring.json"), "w") as f:
        json.dump({**settings, "input": os.path.abspath(os.path.join(partial, "download"))}, f)
    os.remove(os.path.join(partial, "metrics.json"))
    parts = list_parts(score_dir)
    assert len(parts) > 4
    for part in parts[::2]:
        for path in (part.metadata, part.img_emb, part.text_emb,
                     os.path.join(score_dir, "dropped", f"dropped_{part.number}.parquet")):
            os.remove(path)
    assert main(["run", "--input", "unused-extract-is-done.warc.gz", "--output", partial, "--image-size", "64",
                 "--shard-size", "20", "--tiny-clip"]) == 0
    assert _counters(partial) == _counters(whole)
    assert _stage_counters(partial) == _stage_counters(whole)
    with open(os.path.join(score_dir, "metrics.json")) as f:
        score = json.load(f)
    assert score["carried"]["score:shards"] == len(parts) - len(parts[::2])
    assert score["this_run"]["score:shards"] == len(parts[::2])
