"""`--config FILE`: the file's options become flags, with the command line's after them."""

import json

import pytest

from crawl2clip.pipelines.cli import main
from crawl2clip.pipelines.config import ConfigError, config_to_flags, expand_config_flag
from crawl2clip.pipelines.options import Crawl2ClipOptions


def test_config_values_become_flags():
    flags = config_to_flags({"image-size": 256, "keep_svg_gif": True, "no-langid": False,
                             "input": ["a.warc", "b.warc"], "proxy": None, "runner": "DirectRunner"})
    assert flags == ["--image-size", "256", "--keep_svg_gif", "--input", "a.warc", "b.warc",
                     "--runner", "DirectRunner"]


def test_file_options_parse_like_the_command_line_and_the_command_line_wins(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("input: [x.warc.gz]\noutput-dir: out\nimage_size: 128\nkeep-svg-gif: true\n")
    argv = expand_config_flag(["--config", str(config), "--image-size", "64"])
    options = Crawl2ClipOptions(argv)
    assert options.input == ["x.warc.gz"]
    assert options.output_dir == "out"
    assert options.image_size == 64  # the command line's value comes last
    assert options.keep_svg_gif is True


def test_json_config(tmp_path):
    config = tmp_path / "job.json"
    config.write_text(json.dumps({"min-alt-chars": 9}))
    assert Crawl2ClipOptions(expand_config_flag([f"--config={config}"])).min_alt_chars == 9


@pytest.mark.parametrize("text, message", [
    ("- a\n- b\n", "mapping"),
    ("a: {b: 1}\n", "not a mapping"),
    ("a: [unclosed\n", "not valid"),
])
def test_bad_config_files_fail_with_a_message(tmp_path, text, message):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        expand_config_flag(["--config", str(config)])


def test_cli_reports_a_missing_config_file(tmp_path, capsys):
    assert main(["extract", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
