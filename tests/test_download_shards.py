"""img2dataset's shard layout (tar + parquet + stats), on the real photos in /work/shared/data/photos.

The tars are read back with the `webdataset` package, the parquets with pyarrow; crashes are
simulated by abandoning a writer (or failing a rename) and resuming.
"""

import gc
import io
import json
import os
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from crawl2clip.transforms import files
from crawl2clip.transforms.download.images import ImageRejected, ResizeSpec, process_image
from crawl2clip.transforms.download.shards import (
    OUTPUT_COLUMNS,
    ShardWriter,
    finished_shards,
    retryable_rows,
    shard_key,
    tar_end,
    tar_member,
)
from crawl2clip.transforms.schema import CANDIDATE_SCHEMA, TEXT, URL, CandidateRow

try:
    import webdataset as wds
except ImportError:  # a dependency of crawl2clip compare (the version open_clip_train pins)
    wds = None

PHOTOS_DIR = Path("/work/shared/data/photos")
PHOTOS = sorted(PHOTOS_DIR.glob("*.jpg"))
pytestmark = pytest.mark.skipif(not PHOTOS, reason=f"no photos in {PHOTOS_DIR}")

RETRYABLE = {"timeout", "http_503"}


@pytest.fixture(scope="module")
def photo_bytes() -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in PHOTOS}


@pytest.fixture(scope="module")
def jpg_images(photo_bytes):
    return {name: process_image(data, ResizeSpec()) for name, data in photo_bytes.items()}


def _row(i: int, name: str) -> dict:
    return {
        URL: f"https://example.com/img/{i}/{name}",
        TEXT: f"caption {i}: a photo called {name} \u00e9t\u00e9",
        "uid": f"uid{i:04d}",
        "page_url": f"https://example.com/page/{i}",
        "source": "crawl.warc.gz",
        "offset": 1000 * i,
        "occurrences": 1 + i % 3,
        "LANGUAGE": "en" if i % 2 else None,
        "LANGUAGE_SCORE": 0.5 if i % 2 else None,
        "split": "en",
    }


@pytest.fixture(scope="module")
def samples(jpg_images):
    """(row, image or None, status, error_message) for every photo plus failures, interleaved."""
    failures = [("timeout", "read timed out"), ("http_404", "404 Not Found"), ("http_503", "busy")]
    out = []
    for i, name in enumerate(sorted(jpg_images)):
        out.append((_row(len(out), name), jpg_images[name], "success", None))
        if i < len(failures):
            status, message = failures[i]
            out.append((_row(len(out), f"missing{i}.jpg"), None, status, message))
    try:  # a real rejection from the image checks
        process_image(b"<html>not an image</html>", ResizeSpec(min_bytes=0))
    except ImageRejected as error:
        out.append((_row(len(out), "page.html"), None, error.reason, error.detail))
    return out


def _write(output_dir, shard_id, samples, output_format="jpg", **kwargs):
    with ShardWriter(str(output_dir), shard_id, output_format, **kwargs) as writer:
        for row, image, status, message in samples:
            writer.write(row, image, status=status, error_message=message)
    return writer


def _files(output_dir) -> list[str]:
    return sorted(os.listdir(output_dir))


def _read_tar(path, ext="jpg"):
    if wds is None:
        pytest.skip("webdataset is not installed")
    dataset = wds.WebDataset(str(path), shardshuffle=False).decode("pil").to_tuple("__key__", ext, "txt", "json")
    return list(dataset)


# ---------------------------------------------------------------- planning


def test_shard_keys():
    assert shard_key(12, 7) == "000120007"
    assert shard_key(123456, 7) == "1234560007"


# ---------------------------------------------------------------- one shard, read back


def test_shard_reads_back_with_webdataset_and_pyarrow(tmp_path, samples, photo_bytes):
    stats = _write(tmp_path, 3, samples).stats()
    assert _files(tmp_path) == ["00003.parquet", "00003.tar", "00003_stats.json"]
    assert finished_shards(str(tmp_path)) == {3}

    expected = {shard_key(3, i): s for i, s in enumerate(samples) if s[2] == "success"}
    read = _read_tar(tmp_path / "00003.tar")
    assert [key for key, *_ in read] == list(expected)  # input order, failures skipped
    for key, image, caption, meta in read:
        row, processed, _, _ = expected[key]
        assert isinstance(image, Image.Image)
        assert image.size == (processed.width, processed.height) == (256, 256)
        assert caption == row[TEXT]
        assert meta["key"] == key and meta["url"] == row[URL]
        assert meta["status"] == "success" and meta["error_message"] is None
        assert {k: meta[k] for k in row} == row  # every input column carried through
        assert (meta["width"], meta["height"]) == (256, 256)
        name = row[URL].rsplit("/", 1)[1]
        assert [meta["original_width"], meta["original_height"]] == [int(v) for v in name[:-4].split("_")]
        assert meta["sha256"] == processed.sha256
    # the jpg member is the processed bytes exactly (read() above skipped without webdataset)
    raw = next(iter(wds.WebDataset(str(tmp_path / "00003.tar"), shardshuffle=False)))
    assert raw["jpg"] == expected[raw["__key__"]][1].data

    table = pq.read_table(tmp_path / "00003.parquet")
    assert table.column_names == list(samples[0][0]) + list(OUTPUT_COLUMNS)
    records = table.to_pylist()
    assert [r["key"] for r in records] == [shard_key(3, i) for i in range(len(samples))]
    assert [r["uid"] for r in records] == [s[0]["uid"] for s in samples]  # each input row once
    for record, (row, image, status, message) in zip(records, samples):
        assert {k: record[k] for k in row} == row
        assert record["status"] == status and record["error_message"] == message
        if image is None:
            assert [record[c] for c in ("width", "height", "original_width", "original_height", "sha256")] == [None] * 5
        else:
            assert (record["width"], record["original_width"], record["sha256"]) == (
                image.width,
                image.original_width,
                image.sha256,
            )
    assert set(table.column("status").to_pylist()) == {"success", "timeout", "http_404", "http_503", "not_an_image"}

    on_disk = json.loads((tmp_path / "00003_stats.json").read_text())
    assert on_disk["count"] == len(samples) == stats["count"]
    assert on_disk["successes"] == len(PHOTOS)
    assert on_disk["failures"] == len(samples) - len(PHOTOS)
    assert on_disk["status_counts"] == {
        "http_404": 1, "http_503": 1, "not_an_image": 1, "success": len(PHOTOS), "timeout": 1
    }
    assert on_disk["image_bytes"] == sum(s[1].data.__len__() for s in samples if s[1])
    assert on_disk["tar_bytes"] == os.path.getsize(tmp_path / "00003.tar")
    assert on_disk["seconds"] >= 0


def test_webp_output_and_keep_ratio_sizes(tmp_path, photo_bytes):
    spec = ResizeSpec(image_size=64, resize_mode="keep_ratio_largest", output_format="webp")
    samples = [
        (_row(i, name), process_image(photo_bytes[name], spec), "success", None)
        for i, name in enumerate(sorted(photo_bytes))
    ]
    _write(tmp_path, 0, samples, output_format="webp")
    read = _read_tar(tmp_path / "00000.tar", ext="webp")
    assert len(read) == len(samples)
    for (key, image, caption, meta), (row, processed, _, _) in zip(read, samples):
        assert image.size == (processed.width, processed.height) == (meta["width"], meta["height"])
        assert max(image.size) == 64
        assert caption == row[TEXT]


def test_many_shards(tmp_path, samples):
    n = (len(samples) + 3) // 4  # shards of 4 rows, in input order
    for shard_id in range(n):
        _write(tmp_path, shard_id, samples[4 * shard_id:4 * shard_id + 4])
    assert finished_shards(str(tmp_path)) == set(range(n))
    keys = []
    for shard_id in range(n):
        keys += pq.read_table(tmp_path / f"{shard_id:05d}.parquet").column("key").to_pylist()
    assert keys == [shard_key(*divmod(i, 4)) for i in range(len(samples))]
    tar_keys = [k for shard_id in range(n) for k, *_ in _read_tar(tmp_path / f"{shard_id:05d}.tar")]
    assert tar_keys == [shard_key(*divmod(i, 4)) for i, s in enumerate(samples) if s[2] == "success"]


def test_namedtuple_rows_with_a_fixed_schema(tmp_path, samples):
    rows = [(CandidateRow(**row), image, status, message) for row, image, status, message in samples]
    _write(tmp_path, 0, rows[:1], input_schema=CANDIDATE_SCHEMA)
    _write(tmp_path, 1, rows[1:2], input_schema=CANDIDATE_SCHEMA)  # a failure only
    first, second = (pq.read_table(tmp_path / f"{i:05d}.parquet") for i in (0, 1))
    assert first.schema == second.schema
    assert first.schema.field("LANGUAGE_SCORE").type == pa.float32()
    assert second.column("uid").to_pylist() == [samples[1][0]["uid"]]


def test_an_empty_shard_is_still_finished(tmp_path):
    _write(tmp_path, 0, [])
    assert finished_shards(str(tmp_path)) == {0}
    assert pq.read_table(tmp_path / "00000.parquet").num_rows == 0
    assert _read_tar(tmp_path / "00000.tar") == []


def test_write_rejects_inconsistent_rows(tmp_path, samples):
    writer = ShardWriter(str(tmp_path), 0)
    with pytest.raises(ValueError):
        writer.write(samples[0][0])  # success without an image
    with pytest.raises(ValueError):
        writer.write(samples[0][0], samples[0][1], status="timeout")
    writer.abort()
    assert _files(tmp_path) == []


# ---------------------------------------------------------------- crashes and resume


def test_abandoned_shard_is_redone_identically(tmp_path, samples):
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    _write(clean, 0, samples)
    _write(crashed, 1, samples[:2])  # a finished neighbour must stay untouched

    writer = ShardWriter(str(crashed), 0)
    for row, image, status, message in samples[:5]:
        writer.write(row, image, status=status, error_message=message)
    writer._tar.file.flush()
    del writer  # abandoned: never closed, as if the process died
    gc.collect()
    leftovers = [name for name in _files(crashed) if "00000" in name]
    assert len(leftovers) == 1 and leftovers[0].startswith(".00000.tar.tmp-")  # a temporary name only
    assert finished_shards(str(crashed)) == {1}

    neighbour = (crashed / "00001.tar").read_bytes()
    _write(crashed, 0, samples)
    assert finished_shards(str(crashed)) == {0, 1}
    assert _files(crashed) == ["00000.parquet", "00000.tar", "00000_stats.json", "00001.parquet", "00001.tar",
                               "00001_stats.json"]  # the finished shard deleted the killed attempt's file
    assert (crashed / "00000.tar").read_bytes() == (clean / "00000.tar").read_bytes()
    assert pq.read_table(crashed / "00000.parquet").equals(pq.read_table(clean / "00000.parquet"))
    assert (crashed / "00001.tar").read_bytes() == neighbour


def test_crash_between_renames_leaves_shard_unfinished(tmp_path, samples, monkeypatch):
    clean, crashed = tmp_path / "clean", tmp_path / "crashed"
    _write(clean, 0, samples)

    real_replace = files._replace
    calls = []

    def dying_replace(temporary, path):
        calls.append(path)
        if len(calls) == 2:  # the tar went into place; die before the parquet
            raise KeyboardInterrupt("killed")
        real_replace(temporary, path)

    monkeypatch.setattr(files, "_replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        _write(crashed, 0, samples)
    monkeypatch.setattr(files, "_replace", real_replace)
    assert _files(crashed) == ["00000.tar"]  # a final tar, but no stats: not finished
    assert finished_shards(str(crashed)) == set()

    _write(crashed, 0, samples)
    assert _files(crashed) == _files(clean)
    assert (crashed / "00000.tar").read_bytes() == (clean / "00000.tar").read_bytes()
    assert pq.read_table(crashed / "00000.parquet").equals(pq.read_table(clean / "00000.parquet"))


def test_an_attempt_outrun_by_another_gives_its_files_up(tmp_path, samples):
    """Two attempts at one shard (a retried or speculative worker): the one that finishes second
    finds the stats in place and commits nothing over the finished shard."""
    slow = ShardWriter(str(tmp_path), 0)
    for row, image, status, message in samples[:2]:  # not the same rows: its bytes would differ
        slow.write(row, image, status=status, error_message=message)
    fast = _write(tmp_path, 0, samples)
    finished = {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)}
    assert slow.close() == json.loads(finished["00000_stats.json"])
    assert {name: (tmp_path / name).read_bytes() for name in _files(tmp_path)} == finished
    assert fast.count == len(samples)


def test_exception_inside_with_aborts(tmp_path, samples):
    with pytest.raises(RuntimeError):
        with ShardWriter(str(tmp_path), 0) as writer:
            writer.write(*samples[0][:2])
            raise RuntimeError("download stage blew up")
    assert _files(tmp_path) == []


def test_finished_shard_is_not_rewritten_without_overwrite(tmp_path, samples):
    _write(tmp_path, 0, samples[:3])
    with pytest.raises(FileExistsError):
        ShardWriter(str(tmp_path), 0)
    writer = ShardWriter(str(tmp_path), 0, overwrite=True)
    assert finished_shards(str(tmp_path)) == set()  # unfinished while being redone
    writer.write(*samples[0][:2])
    writer.close()
    assert finished_shards(str(tmp_path)) == {0}
    assert pq.read_table(tmp_path / "00000.parquet").num_rows == 1


def test_finished_shards_of_a_missing_folder(tmp_path):
    assert finished_shards(str(tmp_path / "nope")) == set()
    assert retryable_rows(str(tmp_path / "nope"), RETRYABLE) == []


# ---------------------------------------------------------------- retry-failed


def test_retryable_rows_are_exactly_the_retryable_failures(tmp_path, samples):
    for shard_id in range((len(samples) + 3) // 4):
        _write(tmp_path, shard_id, samples[4 * shard_id:4 * shard_id + 4])
    # an unfinished shard (no stats) is not read
    unfinished = ShardWriter(str(tmp_path), 99)
    unfinished.write(_row(99, "x.jpg"), status="timeout", error_message="late")
    unfinished.abort()

    expected = [row for row, _, status, _ in samples if status in RETRYABLE]
    assert len(expected) == 2
    assert retryable_rows(str(tmp_path), RETRYABLE) == expected
    assert retryable_rows(str(tmp_path), ["http_404"]) == [r for r, _, s, _ in samples if s == "http_404"]
    assert retryable_rows(str(tmp_path), []) == []

    # the rows feed a new run unchanged: same columns, no writer columns
    retry_dir = tmp_path / "retry"
    _write(retry_dir, 0, [(row, None, "timeout", "again") for row in expected])
    assert retryable_rows(str(retry_dir), RETRYABLE) == expected


@pytest.mark.parametrize("sizes", [[], [0], [1, 511, 512, 513], [10_000, 7, 20_000], [512] * 19 + [1]])
def test_tar_members_are_what_tarfile_writes(photo_bytes, sizes):
    """The writer's own tar members and ending equal tarfile's output byte for byte."""
    photo = b"".join(photo_bytes.values())
    members = [(f"{shard_key(123456, i)}.{('jpg', 'txt', 'json', 'webp')[i % 4]}", photo[i : i + size])
               for i, size in enumerate(sizes)]
    expected = io.BytesIO()
    with tarfile.open(fileobj=expected, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o444, "bigdata", "bigdata"
            tar.addfile(info, io.BytesIO(data))
    ours = b"".join(tar_member(name, data) for name, data in members)
    assert ours + tar_end(len(ours)) == expected.getvalue()
    with tarfile.open(fileobj=io.BytesIO(ours + tar_end(len(ours)))) as tar:
        assert [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()] == members


def test_tar_member_names_must_be_short_ascii():
    with pytest.raises(ValueError):
        tar_member("x" * 100, b"")
    with pytest.raises(UnicodeEncodeError):
        tar_member("\u00e9t\u00e9.jpg", b"")
