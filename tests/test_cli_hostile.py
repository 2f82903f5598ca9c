"""Bad command lines get one clear line and exit code 2 before any work, never a traceback; Beam's
own options still pass; a run where nothing survives to be pruned finishes with empty outputs."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from crawl2clip.pipelines.cli import main
from crawl2clip.pipelines.flags import FlagError, check_flags
from crawl2clip.pipelines.replay import replay_proxy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _refused(argv: list[str], capsys) -> str:
    """Runs the command in this process; it must exit 2 with one line on stderr, which is returned."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err
    assert len([line for line in err.splitlines() if not line.startswith("usage:")]) == 1, err
    return err


def _command(argv: list[str], cwd: str = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crawl2clip.pipelines.cli", *argv], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture
def folders(tmp_path, warc_dir):
    """A file where a folder should be, a scoring output's shape, a kept list, a real archive."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    score_dir = tmp_path / "score"
    (score_dir / "metadata").mkdir(parents=True)
    kept = tmp_path / "kept.parquet"
    pq.write_table(pa.table({"part": pa.array([], pa.int64()), "row": pa.array([], pa.int64())}), kept)
    return {"file": str(afile), "score": str(score_dir), "kept": str(kept), "tmp": tmp_path,
            "warc": os.path.join(warc_dir, "edsu-test.warc.gz")}


def _with_output(folders: dict, output: str) -> list[list[str]]:
    """Every stage command, valid but for its --output."""
    return [
        ["extract", "--input", folders["warc"], "--output", output],
        ["download", "--input", str(folders["tmp"] / "*.parquet"), "--output", output],
        ["score", "--input", folders["score"], "--output", output, "--tiny-clip"],
        ["index", "--embeddings", folders["score"], "--output", output],
        ["run", "--input", folders["warc"], "--output", output, "--tiny-clip"],
        ["prune", "--input", folders["score"], "--output", output, "--keep-fraction", "0.5"],
        ["prune", "--input", folders["score"], "--output", output, "--keep-fraction", "0.5", "--prune-single-machine"],
        ["prune-apply", "--input", folders["score"], "--kept", folders["kept"], "--output", output],
    ]


def test_an_output_that_is_a_file_is_refused_by_every_stage(folders, capsys):
    for argv in _with_output(folders, folders["file"]):
        err = _refused(argv, capsys)
        assert f"--output {folders['file']}: a file is there, not a folder" in err, argv


def test_an_output_that_cannot_be_created_is_refused_by_every_stage(folders, capsys):
    inside_a_file = os.path.join(folders["file"], "out")
    for argv in _with_output(folders, inside_a_file):
        err = _refused(argv, capsys)
        assert f"--output {inside_a_file}: cannot write there" in err, argv


def test_missing_inputs_and_bad_devices_are_named(folders, capsys):
    missing = str(folders["tmp"] / "nope.paths.gz")
    for command in ("extract", "run"):
        err = _refused([command, "--input-list", missing, "--output", str(folders["tmp"] / command), "--tiny-clip"],
                       capsys)
        assert f"--input-list {missing}: no such file" in err
    for argv in (["score", "--input", folders["score"]], ["run", "--input", folders["warc"]]):
        err = _refused([*argv, "--output", str(folders["tmp"] / "x"), "--clip-device", "bogus"], capsys)
        assert "--clip-device bogus: give auto, cpu, cuda or cuda:N" in err
    kept_missing = str(folders["tmp"] / "missing.parquet")
    err = _refused(["prune-apply", "--input", folders["score"], "--kept", kept_missing, "--output", str(folders["tmp"] / "p")],
                   capsys)
    assert f"--kept {kept_missing}: no such file" in err
    err = _refused(["prune-apply", "--input", folders["score"], "--output", str(folders["tmp"] / "p")], capsys)
    assert "give --kept KEPT_PARQUET" in err


@pytest.mark.parametrize("flags, message", [
    (["--imge-size", "3"], "unknown option --imge-size (did you mean --image-size?)"),
    (["--image-siz", "3"], "unknown option --image-siz (did you mean --image-size?)"),  # Beam would take the prefix
    (["--direct_num_worker", "2"], "unknown option --direct_num_worker (did you mean --direct_num_workers?)"),
    (["--min-alt-chars=3", "--max_alt_char=9"], "unknown option --max_alt_char (did you mean --max_alt_chars?)"),
    (["--no-such-thing"], "unknown option --no-such-thing"),
    (["stray"], "unexpected argument 'stray'"),
    (["--image-size", "big"], "argument --image-size/--image_size: invalid int value: 'big'"),
])
def test_unknown_and_misspelt_flags_are_errors(folders, capsys, flags, message):
    err = _refused(["extract", "--input", folders["warc"], "--output", str(folders["tmp"] / "out"), *flags], capsys)
    assert message in err
    assert not os.path.exists(folders["tmp"] / "out")  # refused before any work


def test_misspelt_flags_of_other_commands(folders, capsys):
    assert "did you mean --prune?" in _refused(["run", "--input", folders["warc"], "--output", "o", "--prnue"], capsys)
    assert "did you mean --pages?" in _refused(["demo", "--output", str(folders["tmp"] / "demo"), "--pagse", "5"], capsys)
    assert not os.path.exists(folders["tmp"] / "demo")
    err = _refused(["run", "--template", "extract", "--set", "output=o", "--runer", "DirectRunner"], capsys)
    assert "unknown option --runer (did you mean --runner?)" in err


def test_a_misspelt_config_key_is_an_error_naming_the_file(folders, capsys):
    config = folders["tmp"] / "job.yaml"
    config.write_text(f"input: [{folders['warc']}]\noutput: {folders['tmp'] / 'out'}\nimge-size: 3\n")
    err = _refused(["extract", "--config", str(config)], capsys)
    assert f"--config {config}: unknown option --imge-size (did you mean --image-size?)" in err


def test_the_messages_reach_a_real_terminal_alone(folders):
    """As a user sees it: the command's line only, no Beam warning, no traceback."""
    result = _command(["extract", "--input", folders["warc"], "--output", str(folders["tmp"] / "out"), "--imge-size", "3"])
    assert result.returncode == 2
    assert result.stderr.strip() == "crawl2clip extract: unknown option --imge-size (did you mean --image-size?)"
    result = _command(["download", "--input", "x.parquet", "--output", folders["file"]])
    assert result.returncode == 2
    assert result.stderr.strip() == f"crawl2clip download: --output {folders['file']}: a file is there, not a folder"


def test_beam_options_pass_runner_specific_ones_included():
    check_flags(["--runner", "FlinkRunner", "--flink_master", "127.0.0.1:8081", "--flink_version", "1.19",
                 "--parallelism", "2", "--environment_type", "EXTERNAL", "--environment_config", "127.0.0.1:50000",
                 "--job_endpoint", "127.0.0.1:8099", "--direct_num_workers", "2", "--direct_running_mode",
                 "multi_processing", "--hdfs_host", "namenode", "--s3_endpoint_url", "http://127.0.0.1:9000",
                 "--spark_master_url", "spark://127.0.0.1:7077", "--temp_location", "gs://b/tmp",
                 "--experiments", "use_runner_v2", "--sdk_worker_parallelism", "1", "--setup_file", "./setup.py"])
    # a portable runner's job server has options Python does not know; near misses are still errors
    check_flags(["--runner", "FlinkRunner", "--checkpointing_interval", "60000"])
    with pytest.raises(FlagError, match="did you mean --parallelism"):
        check_flags(["--runner", "FlinkRunner", "--parallelizm", "2"])
    with pytest.raises(FlagError, match="unknown option --checkpointing_interval"):
        check_flags(["--checkpointing_interval", "60000"])  # DirectRunner has no job server


def test_a_run_with_beam_options_from_the_command_line_and_a_config(folders, tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("direct_num_workers: 1\ndirect_running_mode: in_memory\nmin-alt-chars: 5\n")
    assert main(["extract", "--config", str(config), "--input", folders["warc"], "--output", str(tmp_path / "out"),
                 "--runner", "DirectRunner", "--experiments", "beam_fn_api"]) == 0
    assert pq.read_table(str(tmp_path / "out" / "pairs")).num_rows > 0


def test_demo_and_sample_crawl_refuse_a_negative_page_count(tmp_path, capsys):
    assert "--pages must be >= 1" in _refused(["demo", "--pages", "-1", "--output", str(tmp_path / "demo")], capsys)
    assert not os.path.exists(tmp_path / "demo")
    err = _refused(["sample-crawl", "--pages", "-5", "--output", str(tmp_path / "crawl.warc.gz")], capsys)
    assert "--pages must be >= 1" in err and not os.path.exists(tmp_path / "crawl.warc.gz")
    err = _refused(["sample-crawl", "--output", str(tmp_path)], capsys)
    assert f"--output {tmp_path}: cannot write it" in err


def _empty_prune(run_dir: str) -> None:
    prune_dir = os.path.join(run_dir, "prune")
    for name in ("kept.parquet", "duplicates.parquet", "clusters.parquet"):
        assert pq.read_table(os.path.join(prune_dir, name)).num_rows == 0, name
    assert pq.read_schema(os.path.join(prune_dir, "kept.parquet")).names[:3] == ["part", "row", "uid"]
    with open(os.path.join(prune_dir, "prune.json")) as f:
        assert json.load(f)["kept"] == 0
    with open(os.path.join(run_dir, "report.json")) as f:
        report = json.load(f)
    funnel = {step["step"]: step["count"] for step in report["funnel"]}
    assert funnel["kept by pruning"] == 0
    assert any("no usable row to prune" in note for note in report["notes"])
    with open(os.path.join(run_dir, "report.html")) as f:
        assert "no usable row to prune" in f.read()


@pytest.mark.parametrize("path", [[], ["--prune-single-machine"]])
def test_prune_of_a_scoring_output_without_rows_writes_empty_outputs(folders, path):
    out = str(folders["tmp"] / "pruned")
    assert main(["prune", "--input", folders["score"], "--output", out, "--keep-fraction", "0.5", *path]) == 0
    assert pq.read_table(os.path.join(out, "kept.parquet")).num_rows == 0
    with open(os.path.join(out, "prune.json")) as f:
        assert "no usable row to prune" in json.load(f)["note"]


def test_a_run_with_no_pairs_at_all_prunes_nothing_and_says_so(warc_dir, tmp_path):
    run_dir = str(tmp_path / "run")
    wat_without_links = os.path.join(warc_dir, "cc-main-2024-22-whirlwind.warc.wat.gz")
    result = _command(["run", "--input", wat_without_links, "--output", run_dir, "--tiny-clip", "--prune",
                       "--keep-fraction", "0.5"])
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    _empty_prune(run_dir)
    with open(os.path.join(run_dir, "report.json")) as f:
        assert any("'candidates'" in note for note in json.load(f)["notes"])


def test_a_run_whose_pairs_are_all_dropped_prunes_nothing(warc_dir, tmp_path):
    books = os.path.join(warc_dir, "books-toscrape.warc")
    run_dir = str(tmp_path / "run")
    with replay_proxy(books) as (proxy, _):
        assert main(["run", "--input", books, "--output", run_dir, "--proxy", proxy, "--tiny-clip", "--image-size", "64",
                     "--min-image-bytes", "0", "--min-similarity-en", "1", "--min-similarity-multi", "1",
                     "--prune", "--keep-fraction", "0.5"]) == 0
    with open(os.path.join(run_dir, "metrics.json")) as f:
        counters = json.load(f)["counters"]
    assert counters["score:kept"] == 0 and counters["score:dropped_low_similarity"] > 0
    _empty_prune(run_dir)
