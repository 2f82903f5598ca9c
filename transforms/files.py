"""Every file a stage reads, writes, lists or checks, through Beam's `FileSystems`: the same calls
for local paths, `hdfs://`, `s3://`, `gs://` and any other Beam filesystem.

A write is committed whole: the bytes go to a name of their own for this attempt, in the final
file's folder (`.NAME.tmp-<uuid>`: readers and Hadoop-style listings skip dot files), and a rename
then gives them the final name, so a retried write never shows a half file under it. Object
stores have no atomic rename (Beam copies then deletes), so "finished" is never "the file
exists": it is "the done marker exists", and a stage writes its marker last.

Bytes are read and written as they are: no compression is guessed from a name.

Beam's remote filesystems read their settings from the pipeline options: `configure` hands them
over in the launching process, and `unreachable` tells, before any job is built, why a path's
filesystem cannot be used (options missing, no answer), naming the options to check.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from typing import BinaryIO

from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import HadoopFileSystemOptions, PipelineOptions

RAW = CompressionTypes.UNCOMPRESSED
_TEMPORARY = ".tmp-"  # `.NAME.tmp-<attempt>`

# The Beam options a filesystem reads its address and credentials from, named when it cannot be
# reached (credentials may also come from the environment: AWS_*, GOOGLE_APPLICATION_CREDENTIALS).
FILESYSTEM_OPTIONS = {
    "hdfs": ("--hdfs_host", "--hdfs_port", "--hdfs_user"),
    "s3": ("--s3_endpoint_url", "--s3_access_key_id", "--s3_secret_access_key", "--s3_region_name"),
    "gs": ("--project",),
}
REACH_TIMEOUT = 20.0  # seconds a filesystem has to answer the fail-fast probe


def configure(pipeline_options: PipelineOptions) -> None:
    """Gives Beam's filesystems their settings (`--hdfs_host`, `--s3_endpoint_url`, ...). Beam keeps
    them process-wide and sets them from the last pipeline built, so code that touches `hdfs://`
    or `s3://` in the launching process before a pipeline is built calls this first."""
    FileSystems.set_options(pipeline_options)


def is_local(path: str) -> bool:
    return FileSystems.get_scheme(path) in (None, "file")


def join(directory: str, *parts: str) -> str:
    return FileSystems.join(directory, *parts)


def split(path: str) -> tuple[str, str]:
    """(folder, name) of a path."""
    return FileSystems.split(path)


def exists(path: str) -> bool:
    return FileSystems.exists(path)


def match(pattern: str) -> list[str]:
    """The paths a glob matches, sorted; [] when nothing matches, also when its folder is missing.
    Keep globs in the last part of the path: HDFS lists one folder, not a tree (and lists
    folders too: name files by their suffix, `*.parquet`)."""
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except BeamIOError:
        literal_prefix = re.match(r"[^[*?]*", pattern).group(0)
        if exists(FileSystems.split(literal_prefix)[0]):
            raise
        return []
    return sorted(item.path for item in found)


def open_read(path: str) -> BinaryIO:
    """A binary file object (seekable) for reading; FileNotFoundError when there is no file."""
    try:
        return FileSystems.open(path, compression_type=RAW)
    except Exception as exc:  # each filesystem raises its own kind
        if not exists(path):
            raise FileNotFoundError(path) from exc
        raise


def read_bytes(path: str) -> bytes:
    with open_read(path) as f:
        return f.read()


def size(path: str) -> int:
    return FileSystems.get_filesystem(path).size(path)


_COPIES_LOCK = threading.Lock()
DEFAULT_CACHE_BYTES = 20 << 30
# A copy used this recently is never evicted: whoever was just handed its path is about to open it
# (an open file or a memory map outlives its name, so evicting one in use later is harmless).
_IN_USE_SECONDS = 120


def _copies_folder() -> str:
    return os.path.join(os.environ.get("CRAWL2CLIP_CACHE") or tempfile.gettempdir(), "crawl2clip-copies")


def _cache_bytes() -> int:
    """The most the copies may take on the local disk: `$CRAWL2CLIP_CACHE_BYTES`, else 20 GiB."""
    return int(os.environ.get("CRAWL2CLIP_CACHE_BYTES") or DEFAULT_CACHE_BYTES)


def _make_room(folder: str, needed: int) -> None:
    """Deletes the least recently used copies until `needed` more bytes fit under the limit (a
    worker that reads a whole dataset's parts would otherwise fill its disk with them)."""
    copies = []
    for root, _, names in os.walk(folder):
        for name in names:
            try:
                stat = os.stat(os.path.join(root, name))
            except FileNotFoundError:  # another process evicted or renamed it meanwhile
                continue
            copies.append((stat.st_mtime, stat.st_size, os.path.join(root, name)))
    total, limit, recent = sum(c[1] for c in copies), _cache_bytes(), time.time() - _IN_USE_SECONDS
    for used, size_, copy in sorted(copies):
        if total + needed <= limit or used > recent:
            break
        if ".tmp-" in copy.rpartition("/")[2]:  # a copy another process is still making
            continue
        with contextlib.suppress(FileNotFoundError):
            os.remove(copy)
        total -= size_


def _copy_once(path: str, copy: str) -> str:
    """Copies `path` to the local `copy` unless it is there (to a temporary name, then renamed:
    a half-copied file is never used), making room first; a copy that is there is marked used."""
    with _COPIES_LOCK:
        if os.path.exists(copy):
            with contextlib.suppress(FileNotFoundError):
                os.utime(copy)
                return copy
        _make_room(_copies_folder(), size(path))
        os.makedirs(os.path.dirname(copy), exist_ok=True)
        temporary = f"{copy}.tmp-{uuid.uuid4().hex}"
        with open_read(path) as source, open(temporary, "wb") as target:
            shutil.copyfileobj(source, target, 1 << 20)
        os.replace(temporary, copy)
    return copy


def local_copy(path: str) -> str:
    """A local path holding the bytes of `path`, for readers that need one (numpy's memory map,
    faiss, tarfile seeking, model loaders): `path` itself when it is local, else a copy in this
    cache folder (`$CRAWL2CLIP_CACHE` or the temp folder, shared by the processes of a machine),
    made once per path and size. Meant for committed files, which never change under their name;
    a file rewritten with another size gets a new copy. The copies are kept under
    `$CRAWL2CLIP_CACHE_BYTES` (20 GiB) by deleting the least recently used."""
    if is_local(path):
        return path
    key = hashlib.sha256(f"{path}\0{size(path)}".encode()).hexdigest()[:24]
    return _copy_once(path, os.path.join(_copies_folder(), f"{key}-{FileSystems.split(path)[1]}"))


def local_folder(folder: str, names: list[str]) -> str:
    """A local folder holding `names` (paths relative to `folder`, those of them that exist), for
    libraries that load a folder (Hugging Face's): `folder` itself when it is local, else a
    copy in the cache folder, each file copied once."""
    if is_local(folder):
        return folder
    target = os.path.join(_copies_folder(), hashlib.sha256(folder.encode()).hexdigest()[:24])
    present = [name for name in names if exists(join(folder, name))]
    for name in present:
        _copy_once(join(folder, name), os.path.join(target, name))
    for name in present:  # again: all of them marked used (or copied again) just before the load
        _copy_once(join(folder, name), os.path.join(target, name))
    return target


def upload(local_path: str, path: str) -> str:
    """Commits a local file (built where a library needs a local path: faiss, tarfile) as `path`
    through `write_atomic`; returns `path`."""
    with open(local_path, "rb") as source:
        return write_atomic(path, lambda target: shutil.copyfileobj(source, target, 1 << 20))


class PendingFile:
    """A file written under a temporary name of its own (`.NAME.tmp-<attempt>`, in the final
    file's folder) until `commit` gives it its final name; `discard` deletes it. As a context
    manager it commits when the block ends normally and discards on an exception.

    durable: on a local disk, fsync the bytes before the rename (so a power cut cannot leave a
    committed name on a half-written file); remote filesystems make a closed file durable."""

    def __init__(self, path: str, durable: bool = False):
        folder, name = FileSystems.split(path)
        self.path = path
        self.temporary = join(folder, f".{name}{_TEMPORARY}{uuid.uuid4().hex}")
        self.durable = durable and is_local(path)
        self.file: BinaryIO = FileSystems.create(self.temporary, compression_type=RAW)

    def commit(self) -> str:
        try:
            if self.durable:
                self.file.flush()
                os.fsync(self.file.fileno())
            self.file.close()
            _replace(self.temporary, self.path)
        except BaseException:
            self.discard()
            raise
        return self.path

    def discard(self) -> None:
        with contextlib.suppress(Exception):  # the write's own error is the one to report
            self.file.close()
        with contextlib.suppress(Exception):
            delete(self.temporary)

    def __enter__(self) -> "PendingFile":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def write_atomic(path: str, data: bytes | Callable[[BinaryIO], None], durable: bool = False) -> str:
    """Writes `data` (bytes, or a function that writes to the file object it is given) to `path`
    all at once: under a temporary name unique to this call, then renamed. Replaces a file an
    earlier attempt committed. Returns `path`."""
    with PendingFile(path, durable) as pending:
        if callable(data):
            data(pending.file)
        else:
            pending.file.write(data)
    return path


def is_temporary(name: str) -> bool:
    """Whether a file name is an unfinished write's (`.NAME.tmp-<attempt>`)."""
    return name.startswith(".") and _TEMPORARY in name


def move(source: str, path: str) -> None:
    """Renames a file (or a folder) to `path`, replacing a file there (HDFS renames only onto a
    free name; a folder still goes only where nothing is: HDFS would move it into one)."""
    _replace(source, path)


def temporaries(path: str) -> list[str]:
    """What unfinished attempts to write `path` left (a killed worker's temporary files)."""
    folder, name = FileSystems.split(path)
    return match(join(folder, f".{name}{_TEMPORARY}*"))


def _replace(temporary: str, path: str) -> None:
    try:
        FileSystems.rename([temporary], [path])
    except BeamIOError:
        if not exists(path):
            raise
        # HDFS renames only onto a free name (POSIX and object stores replace): an earlier
        # attempt committed this file. Readers see the old file or none until the rename.
        delete(path)
        FileSystems.rename([temporary], [path])


def write_marker(path: str, payload: dict | None = None, durable: bool = False) -> str:
    """A done marker: small JSON, committed like any file. Write it after what it vouches for."""
    return write_atomic(path, json.dumps(payload or {}, indent=2, sort_keys=True).encode() + b"\n", durable)


def marker_exists(path: str) -> bool:
    return exists(path)


def read_marker(path: str) -> dict:
    return json.loads(read_bytes(path))


def makedirs(path: str) -> None:
    """Creates a folder and its parents; nothing to do when it exists (or on object stores)."""
    if not exists(path):
        try:
            FileSystems.mkdirs(path)
        except (BeamIOError, OSError):
            if not exists(path):  # another worker made it meanwhile: fine
                raise


def delete(path: str) -> None:
    """Deletes a file, or a folder and all it holds; nothing to do when it is not there."""
    try:
        FileSystems.delete([path])
    except BeamIOError:
        if exists(path):
            raise


def unreachable(path: str, timeout: float | None = None) -> str | None:
    """Why the filesystem of `path` cannot be used, before any job is submitted (None when it
    answers; local paths and http(s) URLs are not probed): its settings are missing, its package
    is not installed, or asking whether `path` exists fails or gets no answer in `timeout` s.
    Needs `configure` first."""
    scheme = FileSystems.get_scheme(path)
    if is_local(path) or scheme in ("http", "https"):
        return None
    timeout = REACH_TIMEOUT if timeout is None else timeout
    settings = FILESYSTEM_OPTIONS.get(scheme, ())
    if scheme == "hdfs":
        options = (FileSystems._pipeline_options or PipelineOptions([])).view_as(HadoopFileSystemOptions)
        missing = [flag for flag in settings if getattr(options, flag[2:]) is None]
        if missing:
            return f"give {', '.join(missing)} (the HDFS's WebHDFS address and user)"
    outcome: dict[str, BaseException | None] = {}

    def probe() -> None:
        try:
            exists(path)
            outcome["error"] = None
        except BaseException as exc:  # every filesystem fails in its own way
            outcome["error"] = exc

    # In a thread: Beam's clients have no timeout, and a host that drops packets never answers.
    thread = threading.Thread(target=probe, daemon=True, name="filesystem-probe")
    thread.start()
    thread.join(timeout)
    check = f"; check {', '.join(settings)}" if settings else ""
    if "error" not in outcome:
        return f"the {scheme}:// filesystem gave no answer in {timeout:.0f} s{check}"
    if outcome["error"] is not None:
        return f"cannot reach the {scheme}:// filesystem ({_reason(outcome['error'])}){check}"
    return None


def _reason(error: BaseException) -> str:
    """The underlying error, shortly: Beam wraps each path's error in a BeamIOError."""
    details = getattr(error, "exception_details", None)
    if isinstance(details, dict) and details:
        error = next(iter(details.values()))
    text = str(error)
    if len(text) > 200:
        text = text[:200] + "..."
    return f"{type(error).__name__}: {text}"
