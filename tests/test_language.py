"""Language identification: the rules, the real lid.176 model, and the Beam transform."""

import glob
import json
import os
import shutil

import apache_beam as beam
import pyarrow.parquet as pq
import pytest

from crawl2clip.models.langid import FastTextLanguageModel, default_model_path
from crawl2clip.pipelines.cli import main
from crawl2clip.transforms.language import DEFAULT_THRESHOLD, IdentifyLanguage, language_text, split_of
from tests.archive_files import SHARED_DATA
from tests.http_server import serve_directory
from tests.multilingual_captions import CAPTIONS

REAL_CAPTIONS = os.path.normpath(os.path.join(SHARED_DATA, "pairs", "url-caption-10k.parquet"))


@pytest.fixture(scope="module")
def model() -> FastTextLanguageModel:
    return FastTextLanguageModel()


@pytest.fixture(scope="module")
def real_captions() -> list:
    if not os.path.exists(REAL_CAPTIONS):
        pytest.skip(f"no real captions at {REAL_CAPTIONS}")
    return pq.read_table(REAL_CAPTIONS, columns=["TEXT"]).column("TEXT").to_pylist()


@pytest.mark.parametrize(
    "caption, reason",
    [
        (None, "empty"), ("", "empty"), ("  \n\t ", "empty"), (b"bytes".decode() * 3000, "too_long"),
        ("12345 678", "no_letters"), ("!!! ??? 2024", "no_letters"),
        ("https://example.org/a/b.jpg", "url"), ("www.example.com/page", "url"),
        ("IMG_2024-05-01 (2).JPG", "file_name"), ("holiday photo.webp", "file_name"),
        ("DSC_0012", "one_word"), ("paranoid-london-cover", "one_word"),
        ("\x00\x01\x02\x03garbage\x04\x05\x06\x07\x08", "garbage"), ("ab\ufffd\ufffd\ufffd\ufffd", "garbage"),
    ],
)
def test_captions_without_language(caption, reason):
    assert language_text(caption) == (None, reason)


def test_captions_with_language_become_one_line():
    assert language_text("A red\nfox  in\tsnow") == ("A red fox in snow", "")
    assert language_text("富士山と桜の風景") == ("富士山と桜の風景", "")  # one "word", a whole sentence
    assert language_text("Zürich") == (None, "one_word")


def test_split_rule():
    assert split_of("en", 0.9, 0.4) == "en"
    assert split_of("de", 0.9, 0.4) == "multi"
    assert split_of("de", 0.39, 0.4) == "nolang"
    assert split_of("", 1.0, 0.4) == "nolang"


def test_model_knows_languages_in_many_scripts(model):
    lines = [language_text(text)[0] for _, text in CAPTIONS]
    predicted = model.predict(lines)
    right = sum(lang == guess for (lang, _), (guess, _) in zip(CAPTIONS, predicted))
    assert len({lang for lang, _ in CAPTIONS}) >= 8
    assert right / len(CAPTIONS) >= 0.9, [(l, g) for (l, _), (g, _) in zip(CAPTIONS, predicted) if l != g]
    assert all(0.0 <= score <= 1.0 for _, score in predicted)


def test_a_file_that_is_not_a_model_is_refused(tmp_path):
    bogus = tmp_path / "model.bin"
    bogus.write_bytes(b"not a fasttext model")
    with pytest.raises(Exception):
        FastTextLanguageModel(str(bogus))


def run_language(rows: list[dict], tmp_path, **kwargs) -> list[dict]:
    """The rows through IdentifyLanguage on DirectRunner, read back from the JSON it writes."""
    prefix = str(tmp_path / "language")
    with beam.Pipeline("DirectRunner") as p:
        (p | beam.Create(rows) | IdentifyLanguage(**kwargs) | beam.Map(json.dumps)
         | beam.io.WriteToText(prefix, file_name_suffix=".jsonl"))
    out = []
    for path in glob.glob(prefix + "*.jsonl"):
        with open(path) as f:
            out += [json.loads(line) for line in f]
    return out


def test_real_captions_split_plausibly_and_stably(real_captions, model, tmp_path):
    rows = [{"uid": str(i), "TEXT": t} for i, t in enumerate(real_captions)]
    out = {r["uid"]: r for r in run_language(rows, tmp_path)}
    assert len(out) == len(rows)
    shares = {s: sum(r["split"] == s for r in out.values()) / len(out) for s in ("en", "multi", "nolang")}
    # This sample is mostly English product captions; LAION-5B had 21.7% without a language.
    assert 0.65 < shares["en"] < 0.85 and 0.03 < shares["multi"] < 0.15 and 0.12 < shares["nolang"] < 0.30, shares
    # The transform gives exactly what the plain functions give, caption by caption.
    for i, caption in enumerate(real_captions):
        line, _ = language_text(caption)
        row = out[str(i)]
        if line is None:
            assert row["LANGUAGE"] is None and row["split"] == "nolang"
        else:
            language, score = model.predict([line])[0]
            assert (row["LANGUAGE"], row["split"]) == (language, split_of(language, score, DEFAULT_THRESHOLD))
    # Captions checked by hand.
    by_text = {r["TEXT"]: r for r in out.values()}
    assert by_text["Socionext hat den Display-Controller SC1711 für den Betrieb von Head-Up-Displays optimiert."]["LANGUAGE"] == "de"
    assert by_text["NBA Draft 2019 : un enfant de Guinée Conakry vers les Washington Wizards mais pas que..."]["LANGUAGE"] == "fr"
    assert by_text["CHIMERA GAMESのアーカイブ画像:Vol.7FMX NIGHT SESSION"]["LANGUAGE"] == "ja"
    assert by_text["Expresiones regulares en Tkinter"]["LANGUAGE"] == "es"
    assert by_text["Hogsmeade Station"]["split"] in ("en", "nolang")
    assert by_text["Scorching June 14 for Alabama.jpg"]["split"] == "nolang"


def test_bad_captions_go_to_nolang_without_crashing(tmp_path):
    bad = [None, "", "\x00" * 50, "x" * 1_000_000, "\ufffd" * 20, "ok"]
    out = run_language([{"uid": str(i), "TEXT": t} for i, t in enumerate(bad)], tmp_path)
    assert sorted(r["uid"] for r in out) == [str(i) for i in range(len(bad))]
    assert all(r["split"] == "nolang" for r in out)


def test_extract_adds_language_columns_and_counts_them(tmp_path):
    output = tmp_path / "sample"
    assert main(["sample-crawl", "--output", str(output / "sample-crawl.warc.gz")]) == 0
    assert main(["extract", "--input", str(output / "sample-crawl.warc.gz"), "--output", str(output / "extract")]) == 0
    rows = pq.read_table(str(output / "extract" / "pairs")).to_pylist()
    by_text = {r["TEXT"]: r for r in rows}
    assert by_text["Ein Hund spielt im Park mit einem Ball"]["LANGUAGE"] == "de"
    assert by_text["Кошка сидит на подоконнике"]["split"] == "multi"
    assert by_text["A red fox sitting in fresh snow"]["split"] == "en"
    assert {r["split"] for r in rows} <= {"en", "multi", "nolang"}
    off = tmp_path / "off"
    assert main(["extract", "--input", str(output / "sample-crawl.warc.gz"), "--output", str(off), "--no-langid"]) == 0
    assert all(r["split"] is None for r in pq.read_table(str(off / "pairs")).to_pylist())


def test_model_from_a_url_and_a_missing_model(tmp_path, capsys):
    shutil.copy(default_model_path(), tmp_path / "lid.176.ftz")
    crawl = tmp_path / "crawl.warc.gz"
    assert main(["sample-crawl", "--output", str(crawl), "--pages", "5"]) == 0
    with serve_directory(str(tmp_path)) as server:
        assert main(["extract", "--input", str(crawl), "--output", str(tmp_path / "out"),
                     "--langid-model", f"{server.url}/lid.176.ftz"]) == 0
        assert any(r.path.endswith("lid.176.ftz") for r in server.requests)
    assert {r["split"] for r in pq.read_table(str(tmp_path / "out" / "pairs")).to_pylist()} & {"en", "multi"}
    assert main(["extract", "--input", str(crawl), "--output", str(tmp_path / "x"), "--langid-model", "/no/such.bin"]) == 2
    assert "no such file" in capsys.readouterr().err
