"""Decode, check, resize and re-encode one downloaded image, the way img2dataset does for LAION.

    bytes -> byte count check -> sniff format (magic bytes) -> header size check -> decode
          -> EXIF orientation -> RGB (alpha on white) -> resize (img2dataset's modes) -> JPEG/WebP bytes

Every refusal raises `ImageRejected` with a short reason so the downloader can count drops by
reason. Sizes follow img2dataset's resizer exactly (albumentations' rounding, crop and pad
offsets); the pixels come from Pillow instead of OpenCV, so they differ slightly.
"""

import hashlib
import io
from dataclasses import dataclass

from PIL import Image, ImageOps

from crawl2clip.transforms.download.messages import exception_message

RESIZE_MODES = ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop")
OUTPUT_FORMATS = {"jpg": "JPEG", "webp": "WEBP"}
# Our format names -> Pillow's plugin names; opening with only the sniffed plugin keeps Pillow
# from trying every decoder it has on hostile bytes.
_PILLOW_FORMATS = {
    "jpeg": "JPEG",
    "png": "PNG",
    "webp": "WEBP",
    "gif": "GIF",
    "bmp": "BMP",
    "tiff": "TIFF",
    "avif": "AVIF",
    "heic": "HEIF",  # only with the pillow-heif plugin; without it, a decode_error
}
_AVIF_BRANDS = {b"avif", b"avis"}
_HEIC_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
_BMP_DIB_HEADER_SIZES = {12, 40, 52, 56, 64, 108, 124}
WHITE = (255, 255, 255)


class ImageRejected(Exception):
    """An image the downloader drops; `reason` is one of a few fixed words, `detail` is free text."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class ResizeSpec:
    """img2dataset's resizing options; the defaults are LAION-5B's."""

    image_size: int = 256
    resize_mode: str = "border"
    resize_only_if_bigger: bool = False
    output_format: str = "jpg"
    quality: int = 95
    min_image_size: int = 0  # smallest allowed side, in pixels, before resizing
    # Smallest allowed body as downloaded (icons, spacers, tiny thumbnails); 0 keeps every one.
    min_bytes: int = 5 * 1024
    # LAION's decompression-bomb limit (Pillow's default MAX_IMAGE_PIXELS, give or take one).
    max_pixels: int = 89_478_484
    allowed_formats: tuple[str, ...] = ("jpeg", "png", "webp")

    def __post_init__(self):
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, not {self.resize_mode!r}")
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {tuple(OUTPUT_FORMATS)}, not {self.output_format!r}")
        if self.image_size < 1:
            raise ValueError("image_size must be at least 1")
        if self.min_bytes < 0:
            raise ValueError("min_bytes must not be negative")


@dataclass(frozen=True)
class ProcessedImage:
    data: bytes  # re-encoded in the spec's output_format
    width: int
    height: int
    original_width: int  # as displayed: after EXIF orientation
    original_height: int
    sha256: str  # of the bytes as downloaded, so duplicates are found before any re-encoding
    source_format: str  # sniffed from the downloaded bytes


def sniff_image_format(data: bytes) -> str | None:
    """The image format named by the first bytes, or None. Content-Type headers lie too often."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    # "BM" alone starts plenty of text; also require a known DIB header size.
    if data[:2] == b"BM" and len(data) >= 18 and int.from_bytes(data[14:18], "little") in _BMP_DIB_HEADER_SIZES:
        return "bmp"
    if data[4:8] == b"ftyp":  # ISO base media file: the brands say which
        box_size = int.from_bytes(data[0:4], "big")
        brands = {data[8:12]}
        end = min(box_size, len(data), 256)
        brands.update(data[i : i + 4] for i in range(16, end - 3, 4))
        if brands & _AVIF_BRANDS:
            return "avif"
        if brands & _HEIC_BRANDS:
            return "heic"
    return None


def target_size(width: int, height: int, spec: ResizeSpec) -> tuple[int, int] | None:
    """(width, height) to scale to before any crop or pad, or None to keep the pixels as they are.

    img2dataset: keep_ratio and center_crop scale the smaller side to image_size; border and
    keep_ratio_largest scale the larger side; with resize_only_if_bigger nothing happens unless
    that side is bigger than image_size (then no crop or pad either).
    """
    if spec.resize_mode == "no":
        return None
    side = min(width, height) if spec.resize_mode in ("keep_ratio", "center_crop") else max(width, height)
    if spec.resize_only_if_bigger and side <= spec.image_size:
        return None
    scale = spec.image_size / side
    # albumentations rounds with Python's round(); at least 1 pixel so needle-thin images survive.
    return max(1, round(width * scale)), max(1, round(height * scale))


def _resize(image: Image.Image, spec: ResizeSpec, size: tuple[int, int] | None) -> Image.Image:
    """To `size` (target_size of the ORIGINAL dimensions: a JPEG may arrive decoded at a
    reduced scale, and sizes must not depend on that), then crop or pad as the mode says."""
    if size is None:
        return image
    if size != image.size:
        # img2dataset: INTER_AREA to shrink, Lanczos to enlarge; BOX is Pillow's area average.
        downscale = size[0] < image.width or size[1] < image.height
        image = image.resize(size, Image.Resampling.BOX if downscale else Image.Resampling.LANCZOS)
    n = spec.image_size
    if spec.resize_mode == "center_crop":
        left, top = (image.width - n) // 2, (image.height - n) // 2
        image = image.crop((left, top, left + n, top + n))
    elif spec.resize_mode == "border":
        canvas = Image.new("RGB", (n, n), WHITE)
        canvas.paste(image, ((n - image.width) // 2, (n - image.height) // 2))
        image = canvas
    return image


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with any transparency composited on white as img2dataset does."""
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if not has_alpha:
        return image if image.mode == "RGB" else image.convert("RGB")
    rgba = image.convert("RGBA")
    background = Image.new("RGB", rgba.size, WHITE)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _encode(image: Image.Image, spec: ResizeSpec) -> bytes:
    out = io.BytesIO()
    image.save(out, format=OUTPUT_FORMATS[spec.output_format], quality=spec.quality)
    return out.getvalue()


def process_image(data: bytes, spec: ResizeSpec) -> ProcessedImage:
    """Checked, oriented, resized and re-encoded image; raises ImageRejected when dropped."""
    if len(data) < spec.min_bytes:
        raise ImageRejected("too_few_bytes", f"{len(data)} bytes < {spec.min_bytes}")
    source_format = sniff_image_format(data)
    if source_format is None:
        raise ImageRejected("not_an_image", data[:16].hex())
    if source_format not in spec.allowed_formats:
        raise ImageRejected("format_not_allowed", source_format)
    try:
        # open() reads only the header; Pillow itself refuses more than twice MAX_IMAGE_PIXELS here.
        image = Image.open(io.BytesIO(data), formats=[_PILLOW_FORMATS[source_format]])
    except Image.DecompressionBombError as error:
        raise ImageRejected("decompression_bomb", str(error)) from None
    except Exception as error:  # Pillow raises many types (OSError, SyntaxError, ValueError...)
        raise ImageRejected("decode_error", exception_message(error)) from None
    with image:
        width, height = image.size
        # Checked on the header's numbers, before a single pixel is decoded.
        if width * height > spec.max_pixels:
            raise ImageRejected("decompression_bomb", f"{width}x{height}")
        if min(width, height) < spec.min_image_size:
            raise ImageRejected("too_small", f"{width}x{height}")
        try:
            orientation = _exif_orientation(image)
            swapped = orientation in _TRANSPOSING_ORIENTATIONS
            original_width, original_height = (height, width) if swapped else (width, height)
            size = target_size(original_width, original_height, spec)
            if size is not None and source_format == "jpeg":
                # JPEG decodes at 1/2, 1/4 or 1/8 scale almost for free: ask for no less than the
                # target, in the file's own (unrotated) orientation. Most of the CPU of a
                # download is this decode.
                image.draft(None, (size[1], size[0]) if swapped else size)
            image.load()  # first frame of animations
            if orientation != 1:  # exif_transpose copies even an upright image
                image = _oriented(image)
            image = _to_rgb(image)
            image = _resize(image, spec, size)
            encoded = _encode(image, spec)
        except Image.DecompressionBombError as error:
            raise ImageRejected("decompression_bomb", str(error)) from None
        except Exception as error:
            raise ImageRejected("decode_error", exception_message(error)) from None
    return ProcessedImage(
        data=encoded,
        width=image.width,
        height=image.height,
        original_width=original_width,
        original_height=original_height,
        sha256=hashlib.sha256(data).hexdigest(),
        source_format=source_format,
    )


_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def _exif_orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # a broken EXIF block: treated as no orientation, like _oriented
        return 1


def _oriented(image: Image.Image) -> Image.Image:
    """Rotated/flipped as the EXIF Orientation tag says; a broken EXIF block is ignored rather
    than costing an otherwise good image."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        return image
