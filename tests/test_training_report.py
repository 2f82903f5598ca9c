import json

from crawl2clip.models.training_report import publish_report


def test_the_report_is_printed_and_kept_with_the_machines_load(tmp_path, capsys):
    path = tmp_path / "results" / "train.json"  # its folder does not exist yet
    published = publish_report({"loss": 0.5}, str(path))
    assert json.loads(capsys.readouterr().out) == published
    assert json.loads(path.read_text()) == published
    assert published["loss"] == 0.5 and len(published["loadavg"]) == 3


def test_without_a_path_it_is_only_printed(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    publish_report({"loss": 0.5}, None)
    assert json.loads(capsys.readouterr().out)["loss"] == 0.5
    assert not list(tmp_path.iterdir())
