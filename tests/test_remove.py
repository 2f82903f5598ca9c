"""`crawl2clip remove` on a finished run: the real books-toscrape pages and covers replayed from the
shared WARC through `crawl2clip run` (with prune) and `crawl2clip index`, then cleaned with real
lists of every kind a finished run can take, into a copy and in place (crashed half-way and
resumed), and read back with webdataset and pyarrow: the listed pairs are gone everywhere,
every other row and byte is as it was, and the audit names each removal's list and entry."""

import glob
import hashlib
import io
import json
import os
import shutil
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from crawl2clip.pipelines.cli import main
from crawl2clip.pipelines.replay import archived_responses, replay_proxy
from crawl2clip.transforms.consent.audit import REMOVED_SCHEMA
from crawl2clip.transforms.consent.phash import phash_of_bytes, to_hex
from crawl2clip.transforms.embeddings import list_parts, load_embeddings
from crawl2clip.transforms.remove import rewrite

RUN_FLAGS = ["--image-size", "64", "--shard-size", "8", "--tiny-clip", "--min-similarity-en", "-1",
             "--min-similarity-multi", "-1", "--prune", "--keep-fraction", "0.5", "--prune-clusters", "2",
             "--prune-neighbours", "1"]


def _table(path: str) -> list[dict]:
    return pq.read_table(path).to_pylist()


def _tar_members(path: str) -> list[tuple[str, bytes]]:
    with tarfile.open(path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar]


def _file_digests(folder: str) -> dict[str, str]:
    return {os.path.relpath(p, folder): hashlib.sha256(open(p, "rb").read()).hexdigest()
            for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True) if os.path.isfile(p)}


@pytest.fixture(scope="module")
def finished_run(books, tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("finished") / "run")
    with replay_proxy(books) as (proxy, _):
        assert main(["run", "--input", books, "--output", run_dir, "--proxy", proxy, *RUN_FLAGS]) == 0
    assert main(["index", "--embeddings", os.path.join(run_dir, "score"), "--output", os.path.join(run_dir, "index")]) == 0
    return run_dir


@pytest.fixture(scope="module")
def lists(finished_run, books, tmp_path_factory):
    """A list of each kind, each naming one pair (chosen from the run, hashed from the archive)."""
    folder = tmp_path_factory.mktemp("lists")
    downloads = pq.read_table(sorted(glob.glob(os.path.join(finished_run, "download", "[0-9]*.parquet")))).to_pylist()
    kept = {r["uid"] for r in _table(os.path.join(finished_run, "prune", "kept.parquet"))}
    success = sorted((r for r in downloads if r["status"] == "success"), key=lambda r: r["uid"])
    failed = sorted((r for r in downloads if r["status"] != "success"), key=lambda r: r["uid"])
    in_prune = [r for r in success if r["uid"] in kept]
    others = [r for r in success if r["uid"] not in kept]
    chosen = {"url": in_prune[0], "url-md5": failed[0] if failed else others[-1], "image-sha256": others[0],
              "image-phash": in_prune[-1]}
    originals = archived_responses(books)
    files = {
        "url": ("urls.txt", f"{chosen['url']['URL']}\n"),  # a plain URL list: its kind is sniffed
        "url-md5": ("urls.md5", "# crawl2clip-blocklist: url-md5\n"
                                f"{hashlib.md5(chosen['url-md5']['URL'].encode()).hexdigest()}\n"),
        "domain": ("domains.txt", "# crawl2clip-blocklist: domain\nexample.org\n*.toscrape.test\n"),  # lists nothing here
        "image-sha256": ("covers.sha256", "# crawl2clip-blocklist: image-sha256\n"
                                          f"{hashlib.sha256(originals[chosen['image-sha256']['URL']][2]).hexdigest()}\n"),
    }
    near = io.BytesIO()  # the listed cover as someone else stored it: smaller and recompressed
    cover = Image.open(io.BytesIO(originals[chosen["image-phash"]["URL"]][2])).convert("RGB")
    cover.resize((cover.width // 2, cover.height // 2)).save(near, "JPEG", quality=75)
    listed_phash = to_hex(phash_of_bytes(near.getvalue()))
    files["image-phash"] = ("covers.phash", f"# crawl2clip-blocklist: image-phash\n{listed_phash}\n")
    paths = {}
    for kind, (name, text) in files.items():
        paths[kind] = str(folder / name)
        (folder / name).write_text(text)
    expected = {row["uid"]: (paths[kind], files[kind][1].strip().splitlines()[-1], kind) for kind, row in chosen.items()}
    return {"paths": paths, "expected": expected}


def crash_on_the_fifth_rename(patch: pytest.MonkeyPatch) -> None:
    """Makes every rename of a remove after the fourth fail, as a crash half-way through them."""
    moves, move = [], rewrite.move

    def crashing(source, target):
        if len(moves) == 4:
            raise OSError("simulated crash")
        moves.append(target)
        move(source, target)

    patch.setattr(rewrite, "move", crashing)


def remove_args(lists: dict) -> list[str]:
    return ["--blocklist", *lists["paths"].values(), "--phash-distance", "8"]


@pytest.fixture(scope="module")
def cleaned(finished_run, lists, tmp_path_factory):
    before = _file_digests(finished_run)
    clean = str(tmp_path_factory.mktemp("clean") / "run")
    assert main(["remove", "--dataset", finished_run, "--output", clean, *remove_args(lists)]) == 0
    assert _file_digests(finished_run) == before  # the dataset itself is untouched
    return clean


def test_the_audit_names_every_removal(cleaned, lists):
    (audit_file,) = glob.glob(os.path.join(cleaned, "removed", "remove-*.parquet"))
    audit = pq.read_table(audit_file)
    assert audit.schema.equals(REMOVED_SCHEMA)
    found = {r["uid"]: (r["list"], r["entry"], r["reason"]) for r in audit.to_pylist()}
    assert found == lists["expected"]
    assert {r["stage"] for r in audit.to_pylist()} == {"remove"}
    (summary_file,) = glob.glob(os.path.join(cleaned, "removed", "_remove-*.json"))
    with open(summary_file) as f:
        counters = json.load(f)["counters"]
    for kind in ("url", "url_md5", "image_sha256", "image_phash"):
        assert counters[f"remove:removed_{kind}"] == 1
    with open(os.path.join(cleaned, "report.json")) as f:
        removals = json.load(f)["removals"]
    assert removals == {f"remove:removed_{k}": 1 for k in ("image_phash", "image_sha256", "url", "url_md5")}


def _compare_runs(original: str, cleaned: str, removed: set[str], shards_moved: bool) -> None:
    """Every row of `cleaned` is the row of `original` it was, in the same order, minus `removed`."""
    for path in sorted(glob.glob(os.path.join(original, "extract", "pairs", "*.parquet"))):
        rows = _table(os.path.join(cleaned, os.path.relpath(path, original)))
        assert rows == [r for r in _table(path) if r["uid"] not in removed]
    shards = sorted(glob.glob(os.path.join(original, "download", "[0-9]*.tar")))
    assert shards
    for tar in shards:
        name = os.path.basename(tar)[:-4]
        rows = _table(os.path.join(original, "download", f"{name}.parquet"))
        new_rows = _table(os.path.join(cleaned, "download", f"{name}.parquet"))
        assert new_rows == [r for r in rows if r["uid"] not in removed]
        gone = {r["key"] for r in rows if r["uid"] in removed}
        members = _tar_members(os.path.join(cleaned, "download", f"{name}.tar"))
        assert members == [(n, data) for n, data in _tar_members(tar) if n.split(".")[0] not in gone]  # byte for byte
        with open(os.path.join(cleaned, "download", f"{name}_stats.json")) as f:
            stats = json.load(f)
        assert stats["count"] == len(new_rows) and stats.get("removed_rows", 0) == len(rows) - len(new_rows)
        assert stats["successes"] == sum(r["status"] == "success" for r in new_rows) == len(members) // 3
    samples = list(wds.WebDataset(sorted(glob.glob(os.path.join(cleaned, "download", "*.tar"))), shardshuffle=False)
                   .decode("pil"))
    assert samples and not {s["json"]["uid"] for s in samples} & removed
    assert all(s["jpg"].size == (64, 64) and s["txt"] == s["json"]["TEXT"] for s in samples)
    for part in list_parts(os.path.join(original, "score")):
        rows = _table(part.metadata)
        keep = np.array([r["uid"] not in removed for r in rows])
        new_part = os.path.join(cleaned, os.path.relpath(part.metadata, original))
        new_rows = _table(new_part)
        expected = [r for r, k in zip(rows, keep) if k]
        if shards_moved:  # the copy's rows point at the copy's tars
            expected = [{**r, "shard": r["shard"].replace(original, cleaned)} for r in expected]
        assert new_rows == expected
        for old, new in ((part.img_emb, new_part.replace("metadata", "img_emb")),
                         (part.text_emb, new_part.replace("metadata", "text_emb"))):
            assert np.array_equal(np.asarray(load_embeddings(new.replace(".parquet", ".npy"))),
                                  np.asarray(load_embeddings(old))[keep])
    for path in sorted(glob.glob(os.path.join(original, "score", "dropped", "*.parquet"))):
        assert _table(os.path.join(cleaned, os.path.relpath(path, original))) == \
            [r for r in _table(path) if r["uid"] not in removed]
    kept, new_kept = (_table(os.path.join(run, "prune", "kept.parquet")) for run in (original, cleaned))
    assert [r["uid"] for r in new_kept] == [r["uid"] for r in kept if r["uid"] not in removed]
    assert len(new_kept) < len(kept)  # the listed pair pruning kept is gone from its list too
    metadata = {p.number: _table(p.metadata) for p in list_parts(os.path.join(cleaned, "score"))}
    for row, old in zip(new_kept, [r for r in kept if r["uid"] not in removed]):
        assert metadata[row["part"]][row["row"]]["uid"] == row["uid"]  # renumbered into the new parts
        assert (row["cluster"], row["distance"]) == (old["cluster"], old["distance"])
    index_rows = pa.ipc.open_file(os.path.join(cleaned, "index", "metadata.arrow")).read_all()
    assert index_rows.column("uid").to_pylist() == [r["uid"] for p in sorted(metadata) for r in metadata[p]]
    with open(os.path.join(cleaned, "index", "index_info.json")) as f:
        assert json.load(f)["rows"] == index_rows.num_rows


def test_a_cleaned_copy_lost_the_listed_rows_and_nothing_else(finished_run, cleaned, lists):
    removed = set(lists["expected"])
    _compare_runs(finished_run, cleaned, removed, shards_moved=True)
    # files that hold no pairs are copied as they are
    for name in ("score/scoring.json", "prune/clusters.parquet", "prune/prune.json", "extract/metrics.json"):
        assert open(os.path.join(cleaned, name), "rb").read() == open(os.path.join(finished_run, name), "rb").read()


def test_in_place_after_a_crash_half_way_resumes_to_the_same_result(finished_run, cleaned, lists, tmp_path, monkeypatch):
    dataset = str(tmp_path / "run")
    shutil.copytree(finished_run, dataset)
    crash_on_the_fifth_rename(monkeypatch)
    with pytest.raises(Exception, match="simulated crash"):
        main(["remove", "--dataset", dataset, *remove_args(lists)])
    monkeypatch.undo()
    (work,) = glob.glob(os.path.join(dataset, "removed", ".remove-*"))
    assert os.listdir(os.path.join(work, "staged"))  # a unit was caught between its renames
    assert main(["remove", "--dataset", dataset, *remove_args(lists)]) == 0
    assert not os.path.exists(work)
    # The copy's shard paths point into the copy, the in-place run's into the original folder it was copied from.
    _compare_runs(finished_run, dataset, set(lists["expected"]), shards_moved=False)
    for name in glob.glob(os.path.join(cleaned, "download", "*.tar")):
        assert open(name, "rb").read() == open(os.path.join(dataset, "download", os.path.basename(name)), "rb").read()
    summaries = [json.load(open(p))["counters"] for p in (glob.glob(os.path.join(dataset, "removed", "_remove-*.json"))
                                                          + glob.glob(os.path.join(cleaned, "removed", "_remove-*.json")))]
    removed_rows = [{k: v for k, v in s.items() if "removed" in k} for s in summaries]
    assert removed_rows[0] == removed_rows[1]  # the totals survive the crash
    # once done, the same lists again change nothing
    before = _file_digests(dataset)
    assert main(["remove", "--dataset", dataset, *remove_args(lists)]) == 0
    assert _file_digests(dataset) == before


def test_an_unreadable_file_is_recorded_and_nothing_is_removed_until_it_is_mended(finished_run, cleaned, lists,
                                                                                   tmp_path, capsys):
    """A damaged table and a damaged shard: every other source is still searched, both are named
    with their reasons, and no file changes (a plan without them could miss a listed pair's rows).
    Once they are mended the same command removes what the undamaged run's removal removed."""
    dataset = str(tmp_path / "run")
    shutil.copytree(finished_run, dataset)
    (errors_table,) = glob.glob(os.path.join(dataset, "extract", "errors", "*.parquet"))
    first_shard = sorted(glob.glob(os.path.join(dataset, "download", "[0-9]*.parquet")))[0]
    damaged = {errors_table: open(errors_table, "rb").read(), first_shard: open(first_shard, "rb").read()}
    for path, data in damaged.items():
        with open(path, "wb") as f:
            f.write(data[: len(data) // 2])
    before = _file_digests(dataset)

    assert main(["remove", "--dataset", dataset, *remove_args(lists)]) == 1
    message = capsys.readouterr().err
    assert "2 file(s) of the dataset could not be read, so nothing was removed" in message
    assert errors_table in message and first_shard in message
    (work,) = glob.glob(os.path.join(dataset, "removed", ".remove-*"))
    unreadable = _table(os.path.join(work, "unreadable.parquet"))
    assert sorted(r["source"] for r in unreadable) == sorted(damaged)
    assert {(r["stage"], r["reason"]) for r in unreadable} == {("remove", "unreadable")}
    assert all("Parquet" in r["detail"] or "parquet" in r["detail"] for r in unreadable)
    after = {k: v for k, v in _file_digests(dataset).items() if not k.startswith("removed/")}
    assert after == before  # no audit, no rewritten file
    assert not glob.glob(os.path.join(dataset, "removed", "remove-*.parquet"))

    for path, data in damaged.items():
        with open(path, "wb") as f:
            f.write(data)
    assert main(["remove", "--dataset", dataset, *remove_args(lists)]) == 0
    assert not os.path.exists(work)
    _compare_runs(finished_run, dataset, set(lists["expected"]), shards_moved=False)


def test_remove_refuses_what_it_cannot_do(finished_run, tmp_path, capsys):
    md5 = tmp_path / "images.md5"
    md5.write_text("# crawl2clip-blocklist: image-md5\nd41d8cd98f00b204e9800998ecf8427e\n")
    urls = tmp_path / "urls.txt"
    urls.write_text("https://example.org/a.jpg\n")
    cases = [(["--dataset", finished_run, "--blocklist", str(md5), "--output", str(tmp_path / "c")],
              "image-md5 lists cannot be used here"),
             (["--dataset", finished_run, "--blocklist", str(urls), "--output", os.path.join(finished_run, "clean")],
              "inside --dataset"),
             (["--dataset", str(tmp_path), "--blocklist", str(urls)], "not a crawl2clip run"),
             (["--dataset", finished_run], "give --blocklist")]
    for args, message in cases:
        assert main(["remove", *args]) == 2
        assert message in capsys.readouterr().err
    assert not os.path.exists(os.path.join(finished_run, "clean"))


def test_a_run_applies_the_same_lists_at_extract_and_download(books, lists, tmp_path):
    run_dir = str(tmp_path / "run")
    with replay_proxy(books) as (proxy, requested):
        assert main(["run", "--input", books, "--output", run_dir, "--proxy", proxy, *RUN_FLAGS,
                     *remove_args(lists)]) == 0
    by_kind = {kind: uid for uid, (_, _, kind) in lists["expected"].items()}
    audits = {stage: {r["uid"]: (r["list"], r["entry"], r["reason"])
                      for r in _table(os.path.join(run_dir, stage, "removed"))} for stage in ("extract", "download")}
    assert set(audits["extract"]) == {by_kind["url"], by_kind["url-md5"]}  # URL lists: before any request
    assert set(audits["download"]) == {by_kind["image-sha256"], by_kind["image-phash"]}  # image lists: on the bytes
    assert {**audits["extract"], **audits["download"]} == lists["expected"]
    extract_rows = {r["uid"]: r for r in _table(os.path.join(run_dir, "extract", "pairs"))}
    downloads = [r for p in sorted(glob.glob(os.path.join(run_dir, "download", "[0-9]*.parquet"))) for r in _table(p)]
    metadata = _table(os.path.join(run_dir, "score", "metadata"))
    assert not {by_kind["url"], by_kind["url-md5"]} & set(extract_rows)  # the image lists' pairs are candidates
    assert not set(lists["expected"]) & ({r["uid"] for r in downloads} | {r["uid"] for r in metadata})
    listed_urls = {r["URL"] for r in _table(os.path.join(run_dir, "extract", "removed"))}
    assert not listed_urls & set(requested)  # never requested
    with open(os.path.join(run_dir, "report.json")) as f:
        assert json.load(f)["removals"] == {"download:removed_image_phash": 1, "download:removed_image_sha256": 1,
                                            "extract:removed_url": 1, "extract:removed_url_md5": 1}


def test_what_unfinished_writes_left_is_no_unit(finished_run, tmp_path):
    """The file layer's `.NAME.tmp-<attempt>` temporaries and older writers' `NAME.tmp` files are
    neither cleaned nor copied: only finished files are units."""
    dataset = str(tmp_path / "run")
    shutil.copytree(finished_run, dataset)
    leftovers = ["download/.00001.tar.tmp-0123abcd", "score/metadata/.metadata_0.parquet.tmp-0123abcd",
                 "extract/pairs/.pairs-00000-of-00001.parquet.tmp-0123abcd", "prune/kept.parquet.1234.tmp"]
    for name in leftovers:
        with open(os.path.join(dataset, name), "wb") as f:
            f.write(b"half a file")
    units = rewrite.list_units(dataset, str(tmp_path / "copy"), rewrite.RunDirs(), {"index"})
    names = {unit.name for unit in units}
    assert not names & set(leftovers)
    finished = {os.path.relpath(p, dataset) for p in glob.glob(os.path.join(dataset, "**"), recursive=True)
                if os.path.isfile(p) and not p.startswith(os.path.join(dataset, "index"))} - set(leftovers)
    covered = set(names)  # a shard's unit is named by its tar, a part's by its metadata
    for unit in units:
        if unit.kind == "shard":
            covered |= {f"download/{unit.number:05d}.parquet", f"download/{unit.number:05d}_stats.json"}
        elif unit.kind == "part":
            covered |= {f"score/img_emb/img_emb_{unit.number}.npy", f"score/text_emb/text_emb_{unit.number}.npy"}
    assert covered == finished
    assert {u.kind for u in units} == {"shard", "part", "rows", "table", "copy"}
    assert sum(u.kind == "shard" for u in units) == 3 and sum(u.kind == "part" for u in units) == 3
