"""A 64-bit perceptual hash (pHash) of an image, for removal lists of near-identical images.

The classic DCT hash, computed the way the `imagehash` package's `phash` does (so its lists can
be used): grey, 32x32 Lanczos, 2-D DCT-II, the top-left 8x8 coefficients against their median,
bits row by row, the first bit most significant; written as 16 hex digits. Re-encoding and
resizing move a few bits; other pictures differ in about half of them.
"""

import io

import numpy as np
from PIL import Image, ImageOps

HASH_SIZE = 8
_SAMPLE = 32
_N = np.arange(_SAMPLE)
# DCT-II basis (unnormalised: a common factor does not change which coefficients pass the median).
_DCT = np.cos(np.pi * np.outer(_N, 2 * _N + 1) / (2 * _SAMPLE))
_DRAFT_SIZE = 256  # JPEGs decode at the smallest DCT scale that still covers this


def phash(image: Image.Image) -> int:
    grey = np.asarray(image.convert("L").resize((_SAMPLE, _SAMPLE), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT @ grey @ _DCT.T)[:HASH_SIZE, :HASH_SIZE]
    bits = (low > np.median(low)).ravel()
    return int("".join("1" if bit else "0" for bit in bits), 2)


def phash_of_bytes(data: bytes) -> int | None:
    """The pHash of an encoded image as displayed (EXIF orientation applied); None when the
    bytes do not decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.draft("RGB", (_DRAFT_SIZE, _DRAFT_SIZE))
            return phash(ImageOps.exif_transpose(image))
    except Exception:  # any decoder error: not an image we can hash
        return None


def content_box(size: tuple[int, int], original: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Where an image of `original` size sits inside a stored image of `size` that img2dataset's
    `border` mode padded to a square: the centred box of the original's aspect ratio, or None
    when the aspects already agree (nothing to cut)."""
    width, height = size
    original_width, original_height = original
    if min(width, height, original_width, original_height) <= 0:
        return None
    scale = min(width / original_width, height / original_height)
    inner_width, inner_height = round(original_width * scale), round(original_height * scale)
    if abs(inner_width - width) <= 1 and abs(inner_height - height) <= 1:
        return None
    left, top = (width - inner_width) // 2, (height - inner_height) // 2
    return left, top, left + inner_width, top + inner_height


def stored_image_phashes(data: bytes, original: tuple[int, int] | None) -> list[int]:
    """pHashes of a stored (resized) image: of the whole of it and, when it may carry a border,
    of the box the original fills: a list made from the originals matches either way."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            hashes = [phash(image)]
            box = content_box(image.size, original) if original else None
            if box is not None:
                hashes.append(phash(image.crop(box)))
            return hashes
    except Exception:
        return []


def to_hex(value: int) -> str:
    return f"{value:016x}"


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()
