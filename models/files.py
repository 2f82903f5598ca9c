"""Model files on any filesystem Beam knows (local paths, gs://, s3://, hdfs://, https://...).

Model loaders read bytes through `read_bytes`, or through `local_copy` when the library they
hand the file to wants a local path. Copies land in one cache folder per process and are made
once: a worker loading the same model for every shard reads it once.
"""

import hashlib
import os
import shutil
import tempfile
import threading

from apache_beam.io.filesystems import FileSystems

_COPY_LOCK = threading.Lock()


def is_remote(path: str) -> bool:
    return "://" in path


def exists(path: str) -> bool:
    return os.path.exists(path) if not is_remote(path) else FileSystems.exists(path)


def read_bytes(path: str) -> bytes:
    """The whole file at `path`, local or on a Beam filesystem."""
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    with FileSystems.open(path) as f:
        return f.read()


def join(folder: str, name: str) -> str:
    return FileSystems.join(folder, name) if is_remote(folder) else os.path.join(folder, name)


def cache_dir() -> str:
    return os.path.join(tempfile.gettempdir(), f"crawl2clip-models-{os.getuid()}")


def _copy(path: str, target: str) -> str:
    """Copies the remote file `path` to `target` once (to a temporary name, then renamed: a
    half-copied file is never used)."""
    with _COPY_LOCK:
        if not os.path.exists(target):
            os.makedirs(os.path.dirname(target), exist_ok=True)
            temporary = f"{target}.{os.getpid()}.tmp"
            with FileSystems.open(path) as source, open(temporary, "wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            os.replace(temporary, target)
    return target


def _cache_key(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()[:16]


def local_copy(path: str) -> str:
    """A local path holding the file at `path`: the path itself when it is local, else a cached copy."""
    if not is_remote(path):
        return path
    return _copy(path, os.path.join(cache_dir(), _cache_key(path), os.path.basename(path)))


def local_folder(folder: str, names: list[str]) -> str:
    """A local folder holding `names` (relative paths) of `folder`: the folder itself when it is
    local, else a cached copy of those of them that exist there."""
    if not is_remote(folder):
        return folder
    target = os.path.join(cache_dir(), _cache_key(folder))
    for name in names:
        if FileSystems.exists(join(folder, name)):
            _copy(join(folder, name), os.path.join(target, name))
    return target
