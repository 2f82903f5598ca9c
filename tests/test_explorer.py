"""The explorer against a real index built from real photos: the HTTP API on a real uvicorn
server on 127.0.0.1, `crawl2clip subset` and `serve` as commands, and the page in a real headless
Chromium (Debian's, driven by Selenium with the system chromedriver)."""

import glob
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import requests
import uvicorn
from PIL import Image

from crawl2clip.explorer.filters import FilterError, allowed_rows, parse_filters
from crawl2clip.explorer.query import QueryEncoder
from crawl2clip.explorer.server import MAX_BODY_BYTES, create_app
from crawl2clip.explorer.subset import main as subset_main
from crawl2clip.pipelines.cli import main as cli_main
from crawl2clip.transforms.index.store import IndexStore
from tests.browser import chromium_page
from tests.test_index_data import DATA, build_score_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIFACTS = os.path.join(ROOT, "output", "test-artifacts")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    if not os.path.isdir(DATA):
        pytest.skip(f"the shared real data is not at {DATA}")
    root = str(tmp_path_factory.mktemp("explorer"))
    data = build_score_dir(root)
    index_dir = os.path.join(root, "index")
    assert cli_main(["index", "--embeddings", data["score_dir"], "--output", index_dir, "--index-text",
                     "--index-shards", "2"]) == 0
    return {**data, "index_dir": index_dir, "root": root}


@pytest.fixture(scope="module")
def server(built):
    store = IndexStore(built["index_dir"])
    encoder = QueryEncoder(store, "cpu")
    port = _free_port()
    config = uvicorn.Config(create_app(store, encoder), host="127.0.0.1", port=port, log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not instance.started:
        assert time.time() < deadline, "the server did not start"
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "store": store, "encoder": encoder}
    instance.should_exit = True
    thread.join(timeout=10)


def _search(server, **body) -> requests.Response:
    return requests.post(server["url"] + "/api/search", json=body, timeout=30)


def _row_of(built, url: str) -> int:
    return [r["URL"] for r in built["rows"]].index(url)


def test_info_describes_the_index(server, built):
    info = requests.get(server["url"] + "/api/info", timeout=10).json()
    assert info["rows"] == len(built["rows"])
    assert info["index_type"] == "Flat" and info["searches"]["image"]["recall_at_10"] == 1.0
    assert set(info["languages"]) == {"en", "de"}
    assert info["text_search"] is True
    schema = requests.get(server["url"] + "/openapi.json", timeout=10).json()
    assert {"/api/search", "/api/search/image", "/api/subset", "/api/thumbnail/{row}"} <= set(schema["paths"])


def test_text_search_ranks_by_cosine_with_the_query(server, built):
    response = _search(server, text="a red circle", k=8, dedup=False)
    assert response.status_code == 200
    results = response.json()["results"]
    assert len(results) == 8
    query = server["encoder"].texts(["a red circle"])[0]
    vectors = np.load(os.path.join(built["index_dir"], "img_emb.npy")).astype(np.float32)
    exact = vectors @ query
    for result in results:  # each score is the row's true cosine with the query ...
        assert result["score"] == pytest.approx(float(exact[result["row"]]), abs=2e-3)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    ninth = np.sort(exact)[::-1][8]  # ... and no row left out scores better (ties aside)
    assert min(r["score"] for r in results) >= ninth - 2e-3
    first = built["rows"][results[0]["row"]]
    assert (results[0]["URL"], results[0]["TEXT"], results[0]["key"]) == (first["URL"], first["TEXT"], first["key"])


def test_a_query_language_picks_the_text_tower_and_is_checked(server):
    """This index's scoring.json names one CLIP and no multilingual tower: every language is
    encoded by the CLIP's own text tower, whatever `lang` says; a malformed `lang` is refused."""
    plain = _search(server, text="ein roter Kreis", k=5, dedup=False).json()["results"]
    german = _search(server, text="ein roter Kreis", lang="de", k=5, dedup=False).json()["results"]
    assert [r["row"] for r in german] == [r["row"] for r in plain]
    response = _search(server, text="ein roter Kreis", lang="Deutsch", k=5)
    assert response.status_code in (400, 422) and "lang" in response.json()["error"]


def test_image_search_from_a_row_and_near_duplicate_removal(server, built):
    photo = built["rows"][_row_of(built, "https://img2.example.com/5.jpg")]
    copies = [i for i, r in enumerate(built["rows"]) if r["sha256"] == photo["sha256"]]
    assert len(copies) == 2  # the same photo under two URLs
    plain = _search(server, row=copies[0], k=5, dedup=False).json()["results"]
    assert {r["row"] for r in plain[:2]} == set(copies) and plain[1]["score"] == pytest.approx(1.0, abs=1e-3)
    folded = _search(server, row=copies[0], k=5, dedup=True, dedup_threshold=0.999).json()["results"]
    assert folded[0]["row"] in copies and len(set(copies) & {r["row"] for r in folded}) == 1
    assert len(folded) == 5  # the removed copy is replaced by the next result


def test_filters_hold_on_every_result(server, built):
    body = {"text": "a cat", "k": 50, "dedup": False}
    everything = _search(server, **body).json()["results"]
    filtered = _search(server, **body, filters=["punsafe<=0.3", "LANGUAGE=en", "WIDTH>=150"]).json()["results"]
    expected = [r["row"] for r in everything if r["punsafe"] <= 0.3 and r["LANGUAGE"] == "en" and r["WIDTH"] >= 150]
    assert [r["row"] for r in filtered] == expected and 0 < len(expected) < len(everything)
    german = _search(server, **body, filters=["LANGUAGE=de"]).json()["results"]
    assert german and {r["LANGUAGE"] for r in german} == {"de"}
    assert len(german) == sum(r["LANGUAGE"] == "de" for r in built["rows"])


def test_upload_search_finds_the_uploaded_photo(server, built):
    with open(os.path.join(DATA, "photos", "389_535.jpg"), "rb") as f:
        data = f.read()
    response = requests.post(server["url"] + "/api/search/image", files={"image": ("motel.jpg", data, "image/jpeg")},
                             data={"k": "3", "filters": ["LANGUAGE=en"]}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["results"][0]["TEXT"] == "a rusty motel sign"
    assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-2)
    assert len(body["query_vector"]) == server["store"].dim


def test_thumbnails_come_from_the_shards(server, built):
    for row in (0, 7, len(built["rows"]) - 1):
        response = requests.get(f"{server['url']}/api/thumbnail/{row}", timeout=10)
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        image = Image.open(io.BytesIO(response.content))
        width, height = built["rows"][row]["WIDTH"], built["rows"][row]["HEIGHT"]
        assert max(image.size) == min(256, max(width, height))
        assert image.width / image.height == pytest.approx(width / height, rel=0.05)


def test_subset_export_over_http(server, built):
    response = requests.post(server["url"] + "/api/subset", json={"filters": ["WIDTH>=1000"]}, timeout=30)
    assert response.status_code == 200
    table = pq.read_table(io.BytesIO(response.content))
    assert table.num_rows == int(response.headers["X-Rows"]) == sum(r["WIDTH"] >= 1000 for r in built["rows"])
    assert set(table.column_names) >= {"URL", "TEXT", "WIDTH", "HEIGHT", "punsafe", "similarity", "key", "shard"}
    neighbours = requests.post(server["url"] + "/api/subset", json={"text": "a kitten", "k": 4, "dedup": False},
                               timeout=30)
    table = pq.read_table(io.BytesIO(neighbours.content))
    assert table.num_rows == 4 and set(table["query"].to_pylist()) == {"a kitten"}
    assert table["query_similarity"].to_pylist() == sorted(table["query_similarity"].to_pylist(), reverse=True)


@pytest.mark.parametrize("body, message", [
    ({"text": "x", "k": 0}, "k: Input should be greater than or equal to 1"),
    ({"text": "x", "k": 501}, "k: Input should be less than or equal to 500"),
    ({"text": "x", "row": 1}, "at most one of text, row and vector"),
    ({"k": 5}, "give text, row or vector"),
    ({"text": "x", "colour": "red"}, "colour: Extra inputs are not permitted"),
    ({"text": "x" * 1001}, "text: String should have at most 1000 characters"),
    ({"row": 10_000}, "row must be between 0 and"),
    ({"vector": [1.0, 2.0]}, "a query vector needs"),
    ({"text": "x", "filters": ["punsafe<high"]}, "punsafe is numeric"),
    ({"text": "x", "filters": ["password=1"]}, "no column 'password'"),
    ({"text": "x", "filters": ["TEXT<3"]}, "TEXT is not numeric"),
])
def test_bad_searches_get_4xx_with_a_message(server, body, message):
    response = _search(server, **body)
    assert 400 <= response.status_code < 500
    assert message in response.json()["error"]


def test_bad_uploads_and_paths_are_refused(server):
    url = server["url"]
    text = requests.post(url + "/api/search/image", files={"image": ("a.jpg", b"not an image at all", "image/jpeg")},
                         timeout=10)
    assert text.status_code == 400 and "JPEG, PNG or WebP" in text.json()["error"]
    gif = requests.post(url + "/api/search/image", files={"image": ("a.gif", b"GIF89a" + b"\0" * 64, "image/gif")},
                        timeout=10)
    assert gif.status_code == 400 and "got gif" in gif.json()["error"]
    huge = requests.post(url + "/api/search/image", files={"image": ("a.jpg", b"\xff\xd8\xff" + b"\0" * MAX_BODY_BYTES)},
                         timeout=30)
    assert huge.status_code == 413 and "limited to" in huge.json()["error"]
    assert requests.get(url + "/api/thumbnail/100000", timeout=10).status_code == 404
    assert requests.get(url + "/api/thumbnail/-1", timeout=10).status_code == 404
    for path in ("/static/../index_info.json", "/static/%2e%2e/%2e%2e/README.md", "/static/..%2fserver.py"):
        response = requests.get(url + path, timeout=10)
        assert response.status_code == 404, path
        assert b"crawl2clip" not in response.content


def test_subset_command_writes_laion_rows(built, tmp_path):
    safe = tmp_path / "safe.parquet"
    assert subset_main(["--index", built["index_dir"], "--filter", "punsafe<0.2", "--filter", "split=en",
                        "--output", str(safe)]) == 0
    table = pq.read_table(safe)
    expected = [r["key"] for r in built["rows"] if r["punsafe"] < 0.2 and r["split"] == "en"]
    assert table["key"].to_pylist() == expected and expected
    near = tmp_path / "near.parquet"
    assert subset_main(["--index", built["index_dir"], "--query", "a red square", "--query", "a dog",
                        "--query-image", os.path.join(DATA, "photos", "208_495.jpg"), "--k", "3", "--no-dedup",
                        "--output", str(near)]) == 0
    table = pq.read_table(near)
    assert len(set(table["uid"].to_pylist())) == table.num_rows <= 9
    assert "a boardwalk through the dunes to the sea" in table["TEXT"].to_pylist()
    assert subset_main(["--index", built["index_dir"], "--filter", "nope>1", "--output", str(near)]) == 2
    assert subset_main(["--index", os.path.dirname(built["index_dir"]), "--all", "--output", str(near)]) == 2


def test_serve_command_binds_loopback(built):
    port = _free_port()
    register = (f"import open_clip; open_clip.add_model_config({built['config_dir']!r}); " if built["config_dir"] else "")
    code = register + f"from crawl2clip.pipelines.cli import main; main(['serve', {built['index_dir']!r}, '--port', '{port}'])"
    process = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 60
        while True:
            try:
                info = requests.get(f"http://127.0.0.1:{port}/api/info", timeout=2).json()
                break
            except requests.ConnectionError:
                assert process.poll() is None and time.time() < deadline, process.stdout.read().decode()
                time.sleep(0.3)
        assert info["rows"] == len(built["rows"])
        listening = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True).stdout
        assert [line.split()[3] for line in listening.splitlines()] == [f"127.0.0.1:{port}"]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_serve_refuses_a_folder_that_is_no_index(built, capsys):
    assert cli_main(["serve", built["score_dir"]]) == 2
    assert "no index_info.json" in capsys.readouterr().err


def test_the_page_in_headless_chromium(server, built, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with chromium_page(server["url"] + "/", download_dir=str(downloads)) as driver:
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "pairs" in d.find_element(By.ID, "index-summary").text)
        driver.find_element(By.ID, "dedup").click()  # tiny test models see many images as alike
        driver.find_element(By.ID, "query").send_keys("a kitten")
        driver.find_element(By.ID, "search-button").click()
        wait.until(lambda d: "results for" in d.find_element(By.ID, "status").text)
        cards = driver.find_elements(By.CSS_SELECTOR, "#results .result")
        assert len(cards) >= 10
        wait.until(lambda d: all(img.get_property("naturalWidth") > 0
                                 for img in d.find_elements(By.CSS_SELECTOR, "#results img")))

        driver.find_element(By.ID, "filter-max-punsafe").send_keys("0.3")
        driver.find_element(By.CSS_SELECTOR, "#languages input[value=en]").click()
        driver.find_element(By.ID, "apply-filters").click()
        wait.until(lambda d: "LANGUAGE=en" in d.find_element(By.ID, "active-filters").text
                   and "results for" in d.find_element(By.ID, "status").text)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results .result")) < len(cards))
        rows = [int(card.get_attribute("data-row")) for card in driver.find_elements(By.CSS_SELECTOR, "#results .result")]
        assert rows and all(built["rows"][r]["punsafe"] <= 0.3 and built["rows"][r]["LANGUAGE"] == "en" for r in rows)

        screenshot = tmp_path / "explorer.png"
        driver.save_screenshot(str(screenshot))
        os.makedirs(ARTIFACTS, exist_ok=True)
        shutil.copy(screenshot, os.path.join(ARTIFACTS, "explorer.png"))

        driver.find_element(By.ID, "export").click()
        wait.until(lambda d: "Exported" in d.find_element(By.ID, "status").text)
        deadline = time.time() + 20
        while not glob.glob(str(downloads / "*.parquet")):
            assert time.time() < deadline, "the export was not downloaded"
            time.sleep(0.2)
        exported = pq.read_table(glob.glob(str(downloads / "*.parquet"))[0])
        assert exported["query"].to_pylist() == ["a kitten"] * exported.num_rows
        assert sorted(rows) == sorted(
            [r for r, row in enumerate(built["rows"]) if row["uid"] in set(exported["uid"].to_pylist())])


def test_filters_never_pass_nulls_and_combine_with_and():
    table = pa.table({"LANGUAGE": ["en", None, "de", "fr"], "punsafe": [0.1, 0.2, None, 0.9],
                      "WIDTH": pa.array([100, 2000, 3000, 50], pa.int64())})
    def rows(*expressions):
        return allowed_rows(table, parse_filters(list(expressions), table.schema)).tolist()
    assert rows("LANGUAGE!=en") == [False, False, True, True]
    assert rows("LANGUAGE = en, de") == [True, False, True, False]
    assert rows("punsafe<0.5") == [True, True, False, False]
    assert rows("punsafe<0.5", "WIDTH>=1000") == [False, True, False, False]
    assert allowed_rows(table, parse_filters([], table.schema)) is None
    with pytest.raises(FilterError, match="at most"):
        parse_filters(["WIDTH>1"] * 21, table.schema)
    with pytest.raises(FilterError, match="finite"):
        parse_filters(["WIDTH>inf"], table.schema)
