"""`crawl2clip score` imports only what it uses: a whole scoring run (DirectRunner, its workers in
the same process) in a fresh interpreter loads no faiss, explorer, web server, plotting or index
stack, so GPU hosts without them score, and start-up stays short; the command line alone loads
no torch."""

import json
import subprocess
import sys

from crawl2clip.transforms.score.settings import EN
from tests.score_fixtures import scene_pairs, write_download_shard

UNUSED = ("faiss", "fastapi", "uvicorn", "starlette", "matplotlib", "crawl2clip.explorer", "crawl2clip.pipelines.index",
          "crawl2clip.pipelines.prune", "crawl2clip.transforms.index.build", "crawl2clip.transforms.index.search",
          "crawl2clip.transforms.index.store", "crawl2clip.transforms.index.transform")

_RUN = """
import json, sys
from crawl2clip.pipelines.cli import main
code = main(sys.argv[2:])
json.dump({"code": code, "modules": sorted(sys.modules)}, open(sys.argv[1], "w"))
"""


def _loaded(modules: list[str]) -> list[str]:
    return [name for name in modules if any(name == unused or name.startswith(unused + ".") for unused in UNUSED)]


def test_a_scoring_run_imports_no_index_explorer_or_plotting_stack(tmp_path):
    download = str(tmp_path / "images")
    write_download_shard(download, 0, [(data, caption, EN) for data, caption in scene_pairs(seed=3, count=4)])
    report = tmp_path / "modules.json"
    subprocess.run([sys.executable, "-c", _RUN, str(report), "score", "--input", download, "--output",
                    str(tmp_path / "scores"), "--tiny-clip", "--score-only", "--clip-device", "cpu"],
                   check=True, capture_output=True, text=True, timeout=600)
    result = json.loads(report.read_text())
    assert result["code"] == 0
    assert "crawl2clip.transforms.score.scoring" in result["modules"] and "open_clip" in result["modules"]
    assert _loaded(result["modules"]) == []


def test_the_command_line_itself_imports_none_of_them_nor_torch():
    """Every command starts by importing the CLI: the models' stack (seconds) waits for the commands that use it."""
    modules = json.loads(subprocess.run([sys.executable, "-c", "import json, sys; import crawl2clip.pipelines.cli; "
                                         "print(json.dumps(sorted(sys.modules)))"],
                                        check=True, capture_output=True, text=True).stdout)
    assert _loaded(modules) == []
    assert not {"torch", "open_clip", "torchvision"} & set(modules)
