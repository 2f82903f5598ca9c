"""Thumbnails for the explorer, read from the download stage's webdataset shards.

A metadata row names its image by `shard` (the .tar, on any Beam filesystem) and `key`
(`KEY.jpg`/`.webp` inside it). Each tar is read once, front to back, for all the keys wanted from it.
"""

import io
import tarfile
from collections import defaultdict
from collections.abc import Iterable

from PIL import Image

from crawl2clip.transforms import files

THUMBNAIL_SIZE = 256  # longest side, pixels
THUMBNAIL_QUALITY = 85
MAX_PIXELS = 89_478_484  # the download stage's bomb limit
IMAGE_EXTENSIONS = ("jpg", "jpeg", "webp", "png")


class ThumbnailError(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def make_thumbnail(data: bytes, size: int = THUMBNAIL_SIZE) -> bytes:
    """A JPEG whose longest side is at most `size`. ThumbnailError when the bytes are no image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise ThumbnailError("image_too_large", f"{image.width}x{image.height} pixels")
            image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
            image = image.convert("RGB")
            image.thumbnail((size, size))
            out = io.BytesIO()
            image.save(out, "JPEG", quality=THUMBNAIL_QUALITY)
            return out.getvalue()
    except ThumbnailError:
        raise
    except Exception as exc:  # Pillow raises many types for bad bytes
        raise ThumbnailError("bad_image", f"{type(exc).__name__}: {exc}") from exc


def read_images(tar_path: str, keys: Iterable[str]) -> dict[str, bytes]:
    """The image bytes of `keys` found in one tar (missing keys are absent from the result)."""
    wanted = set(keys)
    found: dict[str, bytes] = {}
    with files.open_read(tar_path) as raw, tarfile.open(fileobj=raw, mode="r:*") as tar:
        for member in tar:
            stem, _, extension = member.name.rpartition(".")
            if stem in wanted and extension.lower() in IMAGE_EXTENSIONS and member.isfile():
                found[stem] = tar.extractfile(member).read()
                if len(found) == len(wanted):
                    break
    return found


def thumbnails_for(rows: list[tuple[str | None, str | None]]) -> tuple[list[bytes | None], list[tuple[int, str, str]]]:
    """Thumbnails for (shard, key) rows, in row order, and the problems: (row, reason, detail).
    Rows without a shard or key get None and no problem (the scoring output may omit images)."""
    by_tar: dict[str, list[int]] = defaultdict(list)
    for i, (shard, key) in enumerate(rows):
        if shard and key:
            by_tar[shard].append(i)
    thumbnails: list[bytes | None] = [None] * len(rows)
    problems: list[tuple[int, str, str]] = []
    for tar_path, positions in by_tar.items():
        try:
            images = read_images(tar_path, (rows[i][1] for i in positions))
        except (OSError, tarfile.TarError) as exc:
            problems.extend((i, "shard_unreadable", f"{tar_path}: {exc}") for i in positions)
            continue
        for i in positions:
            key = rows[i][1]
            if key not in images:
                problems.append((i, "image_missing", f"{files.split(tar_path)[1]} has no image {key}"))
                continue
            try:
                thumbnails[i] = make_thumbnail(images[key])
            except ThumbnailError as error:
                problems.append((i, error.reason, error.detail))
    return thumbnails, problems
