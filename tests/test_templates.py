"""Templated batch runs (Beam YAML + Jinja) and the Flex Template metadata."""

import argparse
import inspect
import json
import os
import re
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from apache_beam.yaml import yaml_transform

from crawl2clip.pipelines.cli import main
from crawl2clip.pipelines.options import Crawl2ClipOptions
from crawl2clip.pipelines.templates import flex_template_metadata_json, render, template_names
from crawl2clip.pipelines.yaml_transforms import ExtractCandidates, IdentifyLanguage

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


def test_template_config_uses_the_option_names():
    ours = {"ExtractCandidates": ExtractCandidates, "IdentifyLanguage": IdentifyLanguage}
    for name in template_names():
        spec = yaml_transform.SafeLineLoader.strip_metadata(render(name, {"input": ["x.warc"], "output": "out"}))
        for transform in spec["pipeline"]["transforms"]:
            if transform["type"] in ours:
                assert set(transform["config"]) <= option_names()
    parameters = set()
    for transform in ours.values():
        parameters |= set(inspect.signature(transform.__init__).parameters) - {"self"}
    # Every option of the extract and language stages is a parameter of their YAML transforms
    # (the later stages run as `crawl2clip run`, not as YAML transforms yet).
    extract_and_language = {"input", "input_list", "input_prefix", "min_alt_chars", "max_alt_chars",
                            "max_host_chars", "keep_svg_gif", "no_lazy_src", "no_langid", "langid_model",
                            "langid_threshold"}
    assert parameters == extract_and_language
    assert parameters <= option_names()


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
