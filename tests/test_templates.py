"""Templated batch runs (Beam YAML + Jinja) and the Flex Template metadata."""

import argparse
import inspect
import json
import os
import re
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from apache_beam.yaml import yaml_transform

from crawl2clip.pipelines.cli import main
from crawl2clip.pipelines.config import config_to_flags
from crawl2clip.pipelines.options import Crawl2ClipOptions
from crawl2clip.pipelines.replay import replay_proxy
from crawl2clip.pipelines.sample_crawl import write_sample_crawl
from crawl2clip.pipelines.templates import flex_template_metadata_json, render, template_names
from crawl2clip.pipelines.yaml_transforms import STAGE_OPTIONS, ExtractCandidates, IdentifyLanguage
from crawl2clip.transforms import files
from crawl2clip.transforms.download.shards import finished_shards, stats_path
from crawl2clip.transforms.embeddings import list_parts, part_paths, read_metadata
from crawl2clip.transforms.score.settings import SCORING_JSON
from crawl2clip.transforms.score.write import errors_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def option_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    Crawl2ClipOptions._add_argparse_args(parser)
    return parser


def option_names() -> set[str]:
    return {a.dest for a in option_parser()._actions if a.dest != "help"}


def rows(output: str) -> set[tuple]:
    return {(r["uid"], r["URL"], r["TEXT"], r["page_url"], r["offset"], r["occurrences"])
            for r in pq.read_table(os.path.join(output, "pairs")).to_pylist()}


@pytest.fixture(scope="module")
def cli_output(warc_dir, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("cli"))
    assert main(["extract", "--input", os.path.join(warc_dir, "*"), "--output", output]) == 0
    return output


def test_template_run_equals_the_extract_command(warc_dir, cli_output, tmp_path):
    output = str(tmp_path / "template")
    assert main(["run", "--template", "extract", "--set", f"input=['{warc_dir}/*']", "--set", f"output={output}"]) == 0
    assert rows(output) == rows(cli_output) and len(rows(output)) == 63
    errors = pq.read_table(os.path.join(output, "errors")).to_pylist()
    assert [e["reason"] for e in errors] == ["truncated_record"]


def test_beams_own_yaml_main_runs_the_template(warc_dir, cli_output, tmp_path):
    output = str(tmp_path / "beam-yaml")
    variables = json.dumps({"input": [f"{warc_dir}/*"], "output": output})
    subprocess.run([sys.executable, "-m", "apache_beam.yaml.main",
                    "--yaml_pipeline_file", os.path.join(REPO, "deploy", "templates", "extract.yaml"),
                    "--jinja_variables", variables, "--runner", "DirectRunner"],
                   check=True, capture_output=True, timeout=300)
    assert rows(output) == rows(cli_output)


def test_rows_carry_schemas_for_beams_own_yaml_transforms(warc_dir, tmp_path):
    template = tmp_path / "long-captions.yaml"
    template.write_text(f"""
pipeline:
  transforms:
    - type: ExtractCandidates
      name: Extract
      config: {{input: ["{warc_dir}/*"]}}
    - type: Filter
      input: Extract.pairs
      config: {{language: python, keep: "len(TEXT) > 30"}}
    - type: WriteCandidates
      input: Filter
      config: {{output: "{{{{ output }}}}"}}
providers:
  - type: python
    config: {{}}
    transforms:
      ExtractCandidates: crawl2clip.pipelines.yaml_transforms.ExtractCandidates
      WriteCandidates: crawl2clip.pipelines.yaml_transforms.WriteCandidates
""")
    output = str(tmp_path / "out")
    assert main(["run", "--template", str(template), "--set", f"output={output}"]) == 0
    texts = [r[2] for r in rows(output)]
    assert texts and all(len(t) > 30 for t in texts)


# Options no YAML transform takes: other commands' (index, serve, remove, prune-apply, download's
# --retry-failed), run's own (its stages are the template's transforms), the Beam prune's switch
# (the template's prune is the single-machine one), and extract options ExtractCandidates lacks.
NOT_TEMPLATE_OPTIONS = {
    "output_dir",  # the transforms' `output`
    "retry_failed", "dataset", "kept", "shards", "prune", "stop_after", "prune_single_machine",
    "embeddings", "max_memory", "exact_max_rows", "index_text", "index_shards", "target_recall", "no_thumbnails",
    "query_model", "query_pretrained", "ignore_page_optouts", "max_record_bytes",
}


def test_template_config_uses_the_option_names():
    ours = {"ExtractCandidates": ExtractCandidates, "IdentifyLanguage": IdentifyLanguage}
    stage_of = {"DownloadImages": "download", "ScoreImages": "score", "PruneScored": "prune"}
    seen = set()
    for name in template_names():
        spec = yaml_transform.SafeLineLoader.strip_metadata(render(name, {"input": ["x.warc"], "output": "out"}))
        for transform in spec["pipeline"]["transforms"]:
            seen.add(transform["type"])
            if transform["type"] in ours:
                assert set(transform["config"]) <= option_names()
            if transform["type"] in stage_of:
                assert set(transform["config"]) - {"input", "output"} <= set(STAGE_OPTIONS[stage_of[transform["type"]]])
    assert set(stage_of) <= seen  # laion-pruned has every stage
    parameters = set()
    for transform in ours.values():
        parameters |= set(inspect.signature(transform.__init__).parameters) - {"self"}
    extract_and_language = {"input", "input_list", "input_prefix", "min_alt_chars", "max_alt_chars",
                            "max_host_chars", "keep_svg_gif", "no_lazy_src", "no_langid", "langid_model",
                            "langid_threshold"}
    assert parameters == extract_and_language
    # Every option is a config key of one stage's YAML transform, or listed above as none's.
    stage_keys = [key for keys in STAGE_OPTIONS.values() for key in keys]
    assert len(stage_keys) == len(set(stage_keys)) and not set(stage_keys) & parameters
    assert parameters | set(stage_keys) | NOT_TEMPLATE_OPTIONS == option_names()
    assert not (parameters | set(stage_keys)) & NOT_TEMPLATE_OPTIONS


@pytest.mark.parametrize("template, split", [("laion-en", "en"), ("laion-multi", "multi")])
def test_laion_split_templates(warc_dir, cli_output, tmp_path, template, split):
    output = str(tmp_path / template)
    assert main(["run", "--template", template, "--set", f"input=['{warc_dir}/*']", "--set", f"output={output}"]) == 0
    kept = pq.read_table(os.path.join(output, "pairs")).to_pylist()
    everything = pq.read_table(os.path.join(cli_output, "pairs")).to_pylist()
    assert kept and {r["uid"] for r in kept} == {r["uid"] for r in everything if r["split"] == split}


def test_template_mistakes_fail_fast(tmp_path, capsys):
    assert main(["run", "--template", "extract", "--set", "input=['x']"]) == 2
    assert "output" in capsys.readouterr().err
    assert main(["run", "--template", "no-such-template", "--set", "output=x"]) == 2
    assert "known: extract" in capsys.readouterr().err
    assert main(["run", "--template", "extract", "--set", "novalue"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_flex_template_metadata_is_current_and_complete():
    with open(os.path.join(REPO, "deploy", "templates", "flex-template-metadata.json")) as f:
        committed = f.read()
    assert committed == flex_template_metadata_json(), "run: crawl2clip flex-metadata --output deploy/templates/flex-template-metadata.json"
    metadata = json.loads(committed)
    assert {p["name"] for p in metadata["parameters"]} == option_names()
    defaults = {a.dest: a.default for a in option_parser()._actions}
    for parameter in metadata["parameters"]:
        assert parameter["helpText"]
        for regex in parameter.get("regexes", []):
            if defaults[parameter["name"]] is None:  # unset by default: nothing to validate
                continue
            assert re.match(regex, str(defaults[parameter["name"]]).lower()), parameter["name"]
            assert not re.match(regex, "not-a-value"), parameter["name"]


# --- laion-pruned: archives to the pruned subset in one pipeline ------------------------------

DOWNLOAD = {"image_size": 64, "shard_size": 20}
SCORE = {"tiny_clip": True}
PRUNE = {"keep_fraction": 0.5, "prune_clusters": 4}


@pytest.fixture(scope="module")
def pruned_runs(tmp_path_factory):
    """The sample crawl (60 pages: four languages, near-duplicates, broken images) through
    `crawl2clip run --prune`, `crawl2clip run --template laion-pruned` and Beam's own YAML main,
    with the same settings, images from the replay proxy."""
    root = tmp_path_factory.mktemp("pruned")
    crawl = str(root / "sample.warc.gz")
    write_sample_crawl(crawl, pages=60)
    runs = {name: str(root / name) for name in ("run", "template", "beam-yaml")}
    with replay_proxy(crawl) as (proxy, _):
        download = {**DOWNLOAD, "proxy": proxy}
        assert main(["run", "--input", crawl, "--output", runs["run"], "--prune", "--proxy", proxy,
                     *config_to_flags({**DOWNLOAD, **SCORE, **PRUNE})]) == 0
        assert main(["run", "--template", "laion-pruned", "--set", f"input=['{crawl}']",
                     "--set", f"output={runs['template']}", "--set", f"download={json.dumps(download)}",
                     "--set", f"score={json.dumps(SCORE)}", "--set", f"prune={json.dumps(PRUNE)}"]) == 0
        variables = {"input": [crawl], "output": runs["beam-yaml"],
                     "download": download, "score": SCORE, "prune": PRUNE}
        subprocess.run([sys.executable, "-m", "apache_beam.yaml.main",
                        "--yaml_pipeline_file", os.path.join(REPO, "deploy", "templates", "laion-pruned.yaml"),
                        "--jinja_variables", json.dumps(variables), "--runner", "DirectRunner"],
                       check=True, capture_output=True, timeout=600)
    return {**runs, "crawl": crawl}


def _kept_uids(run_dir: str) -> list[str]:
    return sorted(pq.read_table(os.path.join(run_dir, "prune", "kept.parquet")).column("uid").to_pylist())


def _download_rows(run_dir: str) -> list[tuple]:
    folder = os.path.join(run_dir, "download")
    table = pq.ParquetDataset(sorted(os.path.join(folder, name) for name in os.listdir(folder)
                                     if name.endswith(".parquet"))).read()
    return sorted(zip(*(table.column(c).to_pylist() for c in ("key", "uid", "status", "sha256"))))


@pytest.mark.parametrize("how", ["template", "beam-yaml"])
def test_the_pruned_template_keeps_what_run_prune_keeps(pruned_runs, how):
    run, template = pruned_runs["run"], pruned_runs[how]
    kept = _kept_uids(template)
    scored = read_metadata(os.path.join(template, "score"))
    assert 0 < len(kept) < scored.num_rows  # pruning removed some, kept some
    assert kept == _kept_uids(run)
    # ... and every stage on the way wrote what run's stages write
    assert rows(os.path.join(template, "extract")) == rows(os.path.join(run, "extract"))
    assert _download_rows(template) == _download_rows(run)
    statuses = {row[2] for row in _download_rows(template)}
    assert "success" in statuses and len(statuses) > 1  # the sample crawl's broken and missing images too
    theirs = read_metadata(os.path.join(run, "score"))
    assert scored.column("uid").to_pylist() == theirs.column("uid").to_pylist()
    assert scored.column("similarity").to_pylist() == pytest.approx(theirs.column("similarity").to_pylist(), abs=1e-5)
    assert [p.number for p in list_parts(os.path.join(template, "score"))] == \
        [p.number for p in list_parts(os.path.join(run, "score"))]
    for name in ("duplicates.parquet", "clusters.parquet"):
        assert pq.read_table(os.path.join(template, "prune", name)).num_rows == \
            pq.read_table(os.path.join(run, "prune", name)).num_rows


def test_a_rerun_of_the_template_resumes_from_the_download_s_shard_numbers(pruned_runs, tmp_path):
    """Rerun into the same folder: every shard is already downloaded and scored, so nothing is
    fetched or scored again, and the prune gives the same rows. The shard numbers come from the
    download step, not from listing the folder: a finished-looking stranger there is not scored."""
    output = str(tmp_path / "rerun")
    shutil.copytree(pruned_runs["template"], output)
    download_dir, score_dir = os.path.join(output, "download"), os.path.join(output, "score")
    with open(os.path.join(score_dir, SCORING_JSON)) as f:  # as if it had been scored in this folder
        settings = json.load(f)
    with open(os.path.join(score_dir, SCORING_JSON), "w") as f:
        json.dump({**settings, "input": download_dir}, f)
    shards = sorted(finished_shards(download_dir))
    stranger = shards[-1] + 50
    shutil.copy(stats_path(download_dir, shards[0]), stats_path(download_dir, stranger))
    with replay_proxy(pruned_runs["crawl"]) as (proxy, requested):
        assert main(["run", "--template", "laion-pruned", "--set", f"input=['{pruned_runs['crawl']}']",
                     "--set", f"output={output}", "--set", f"download={json.dumps({**DOWNLOAD, 'proxy': proxy})}",
                     "--set", f"score={json.dumps(SCORE)}", "--set", f"prune={json.dumps(PRUNE)}"]) == 0
    assert requested == []  # no image fetched again (robots.txt included)
    with open(os.path.join(output, "metrics.json")) as f:
        counters = json.load(f)["counters"]
    assert counters["download:shards_already_done"] == len(shards) and "download:shards" not in counters
    assert counters["score:shards_already_scored"] == len(shards) and "score:shards" not in counters
    assert not files.exists(part_paths(score_dir, stranger).metadata)
    assert not files.exists(errors_path(score_dir, stranger))
    assert _kept_uids(output) == _kept_uids(pruned_runs["template"])


@pytest.mark.parametrize("setting, message", [
    ("prune={keep_fracton: 0.5}", "'keep_fracton' is not a prune option (did you mean keep_fraction?)"),
    ("prune={prune_clusters: 4}", "give --keep-fraction"),
    ("download={image_size: big}", "invalid int value: 'big'"),
    ("download={shard_size: 0}", "--shard-size must be >= 1"),
    ("score={tiny_clip: true, clip_device: gpu}", "--clip-device gpu: give auto, cpu, cuda or cuda:N"),
])
def test_stage_settings_mistakes_fail_before_any_work(tmp_path, capsys, setting, message):
    output = str(tmp_path / "out")
    assert main(["run", "--template", "laion-pruned", "--set", "input=['x.warc']", "--set", f"output={output}",
                 "--set", "score={tiny_clip: true}", "--set", "prune={keep_fraction: 0.5}", "--set", setting]) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(os.path.join(output, "extract")) and not os.path.exists(os.path.join(output, "download"))
