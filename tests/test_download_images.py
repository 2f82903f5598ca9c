"""Image checks and img2dataset's resize modes, on the real photos in /work/shared/data/photos."""

import hashlib
import io
import struct
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from crawl2clip.transforms.download.images import (
    ImageRejected,
    ResizeSpec,
    process_image,
    sniff_image_format,
)

PHOTOS_DIR = Path("/work/shared/data/photos")
PHOTOS = sorted(PHOTOS_DIR.glob("*.jpg"))
pytestmark = pytest.mark.skipif(not PHOTOS, reason=f"no photos in {PHOTOS_DIR}")
SIZE = 256


def spec(**options) -> ResizeSpec:
    """Without the byte-count filter: most images here are small by construction
    (test_images_under_min_bytes_are_dropped covers the filter)."""
    return ResizeSpec(min_bytes=0, **options)


def named_size(path: Path) -> tuple[int, int]:
    width, height = path.stem.split("_")
    return int(width), int(height)


def encoded(image: Image.Image, format: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, format=format, **options)
    return out.getvalue()


def expected_size(width: int, height: int, mode: str, only_if_bigger: bool) -> tuple[int, int]:
    """Straight from img2dataset's definitions of the modes."""
    if mode == "no":
        return width, height
    if mode in ("keep_ratio", "center_crop"):
        if only_if_bigger and min(width, height) <= SIZE:
            return width, height
        if mode == "center_crop":
            return SIZE, SIZE
        # the smaller side becomes SIZE, the other keeps the aspect ratio
        return (SIZE, round(height * SIZE / width)) if width <= height else (round(width * SIZE / height), SIZE)
    if only_if_bigger and max(width, height) <= SIZE:
        return width, height
    if mode == "border":
        return SIZE, SIZE
    # keep_ratio_largest: the larger side becomes SIZE
    return (SIZE, round(height * SIZE / width)) if width >= height else (round(width * SIZE / height), SIZE)


def test_photos_are_named_by_their_size():
    for path in PHOTOS:
        with Image.open(path) as image:
            assert image.size == named_size(path)


@pytest.mark.parametrize("only_if_bigger", [False, True])
@pytest.mark.parametrize("mode", ["no", "border", "keep_ratio", "keep_ratio_largest", "center_crop"])
@pytest.mark.parametrize("path", PHOTOS, ids=lambda path: path.stem)
def test_every_mode_gives_the_expected_size(path, mode, only_if_bigger):
    data = path.read_bytes()
    width, height = named_size(path)
    result = process_image(data, spec(image_size=SIZE, resize_mode=mode, resize_only_if_bigger=only_if_bigger))
    assert (result.width, result.height) == expected_size(width, height, mode, only_if_bigger)
    assert (result.original_width, result.original_height) == (width, height)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.source_format == "jpeg"
    with Image.open(io.BytesIO(result.data)) as out:
        assert out.format == "JPEG" and out.mode == "RGB"
        assert out.size == (result.width, result.height)


def test_border_pads_with_white_around_the_centred_image():
    path = PHOTOS_DIR / "123_456.jpg"
    if not path.exists():
        pytest.skip("123_456.jpg missing")
    result = process_image(path.read_bytes(), spec(resize_mode="border", output_format="webp", quality=100))
    with Image.open(io.BytesIO(result.data)) as out:
        assert out.format == "WEBP"
        rgb = out.convert("RGB")
        # 123x456 -> 69x256, centred: 93 white columns on the left, 94 on the right
        for x in (0, 90, 165, 255):
            assert min(rgb.getpixel((x, 128))) >= 245


def test_exif_orientation_is_applied():
    # Stored 300 wide, 100 high, left half red; Orientation 6 means "rotate 90° clockwise to view".
    image = Image.new("RGB", (300, 100), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 150, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(image, "JPEG", exif=exif, quality=95)
    result = process_image(data, spec(resize_mode="no"))
    assert (result.original_width, result.original_height) == (100, 300)
    assert (result.width, result.height) == (100, 300)
    with Image.open(io.BytesIO(result.data)) as out:
        assert out.getexif().get(0x0112) in (None, 1)  # not rotated a second time by viewers
        red, _, blue = out.getpixel((50, 40))  # the old left half is now on top
        assert red > 200 and blue < 60
        red, _, blue = out.getpixel((50, 260))
        assert blue > 200 and red < 60


def test_png_alpha_is_composited_on_white():
    image = Image.new("RGBA", (200, 100), (255, 0, 0, 0))  # transparent red: must become white
    image.paste((0, 0, 255, 255), (100, 0, 200, 100))  # opaque blue stays blue
    result = process_image(encoded(image, "PNG"), spec(resize_mode="no"))
    assert result.source_format == "png"
    with Image.open(io.BytesIO(result.data)) as out:
        assert min(out.getpixel((40, 50))) >= 245
        red, green, blue = out.getpixel((160, 50))
        assert blue > 200 and red < 60 and green < 60


def test_palette_png_transparency_is_composited_on_white():
    image = Image.new("P", (64, 64), 0)
    image.putpalette([0, 0, 0] + [0, 255, 0] * 255)
    image.paste(1, (32, 0, 64, 64))
    data = encoded(image, "PNG", transparency=0)  # palette index 0 (black) is transparent
    with Image.open(io.BytesIO(process_image(data, spec(resize_mode="no")).data)) as out:
        assert min(out.getpixel((10, 32))) >= 245
        assert out.getpixel((50, 32))[1] > 200


def png_header_only(width: int, height: int) -> bytes:
    """A PNG with a header claiming width x height and no pixel data at all."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    def refuse(self):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", refuse)


def test_decompression_bomb_rejected_before_decoding(no_pixel_decoding):
    data = png_header_only(20000, 20000)
    assert len(data) < 100
    started = time.perf_counter()
    with pytest.raises(ImageRejected) as raised:
        process_image(data, spec())
    assert raised.value.reason == "decompression_bomb"
    assert time.perf_counter() - started < 1


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_our_pixel_limit_applies_below_pillows(no_pixel_decoding):
    # 100 Mpx: over LAION's limit, under the 2x limit at which Pillow itself refuses.
    with pytest.raises(ImageRejected) as raised:
        process_image(png_header_only(10000, 10000), spec())
    assert raised.value.reason == "decompression_bomb"
    with pytest.raises(ImageRejected) as raised:
        process_image(png_header_only(2000, 2000), spec(max_pixels=1_000_000))
    assert raised.value.reason == "decompression_bomb"


def test_pixel_limit_on_a_real_photo():
    path = PHOTOS[0]
    width, height = named_size(path)
    with pytest.raises(ImageRejected) as raised:
        process_image(path.read_bytes(), spec(max_pixels=width * height - 1))
    assert raised.value.reason == "decompression_bomb"
    assert process_image(path.read_bytes(), spec(max_pixels=width * height)).width == SIZE


@pytest.mark.parametrize(
    "data", [b"", b"<!doctype html><html><body>Not found</body></html>", b"BM is not a bitmap", b"\x00" * 64]
)
def test_non_images_are_rejected(data):
    with pytest.raises(ImageRejected) as raised:
        process_image(data, spec())
    assert raised.value.reason == "not_an_image"


def test_gif_refused_by_default_and_taken_when_allowed():
    data = encoded(Image.new("RGB", (40, 30), (10, 200, 10)), "GIF")
    with pytest.raises(ImageRejected) as raised:
        process_image(data, spec())
    assert (raised.value.reason, raised.value.detail) == ("format_not_allowed", "gif")
    result = process_image(data, spec(allowed_formats=("jpeg", "png", "webp", "gif"), resize_mode="no"))
    assert (result.width, result.height, result.source_format) == (40, 30, "gif")


def test_too_small_is_checked_on_the_smaller_side():
    path = PHOTOS_DIR / "123_456.jpg"
    if not path.exists():
        pytest.skip("123_456.jpg missing")
    with pytest.raises(ImageRejected) as raised:
        process_image(path.read_bytes(), spec(min_image_size=124))
    assert raised.value.reason == "too_small"
    assert process_image(path.read_bytes(), spec(min_image_size=123)).original_width == 123


def test_broken_image_data_is_a_decode_error():
    data = PHOTOS[-1].read_bytes()
    with pytest.raises(ImageRejected) as raised:
        process_image(data[: len(data) // 2], spec())
    assert raised.value.reason == "decode_error"
    with pytest.raises(ImageRejected) as raised:
        process_image(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10, spec())
    assert raised.value.reason == "decode_error"


def test_images_under_min_bytes_are_dropped():
    tiny = encoded(Image.new("RGB", (16, 16), (200, 40, 40)), "JPEG", quality=90)
    assert 300 < len(tiny) < 1024
    with pytest.raises(ImageRejected) as raised:
        process_image(tiny, ResizeSpec())  # 5 KB by default
    assert (raised.value.reason, raised.value.detail) == ("too_few_bytes", f"{len(tiny)} bytes < 5120")
    assert process_image(tiny, ResizeSpec(min_bytes=len(tiny))).original_width == 16
    assert process_image(tiny, ResizeSpec(min_bytes=0)).original_width == 16
    photo = min(PHOTOS, key=lambda path: path.stat().st_size)  # 6,314 bytes: kept by default
    assert process_image(photo.read_bytes(), ResizeSpec()).original_width == named_size(photo)[0]
    with pytest.raises(ValueError):
        ResizeSpec(min_bytes=-1)


def test_decode_error_messages_hold_no_memory_address():
    """Pillow names the BytesIO it read, address included: two runs would record different text."""
    junk = b"\xff\xd8\xff" + bytes(range(256)) * 40  # a JPEG signature, then no JPEG at all
    messages = set()
    for _ in range(2):
        with pytest.raises(ImageRejected) as raised:
            process_image(junk, ResizeSpec())
        messages.add(raised.value.detail)
    (message,) = messages
    assert raised.value.reason == "decode_error"
    assert message == "UnidentifiedImageError: cannot identify image file <_io.BytesIO object>"


def test_sha256_is_of_the_original_bytes():
    for path in PHOTOS:
        data = path.read_bytes()
        result = process_image(data, spec(resize_mode="no"))
        assert result.sha256 == hashlib.sha256(data).hexdigest()
        assert result.data != data  # re-encoded, yet hashed as downloaded


def test_sniff_formats():
    image = Image.new("RGB", (8, 8), (1, 2, 3))
    for format, name in [("JPEG", "jpeg"), ("PNG", "png"), ("WEBP", "webp"), ("GIF", "gif"), ("BMP", "bmp"), ("TIFF", "tiff")]:
        assert sniff_image_format(encoded(image, format)) == name
    assert sniff_image_format(b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf") == "avif"
    assert sniff_image_format(b"\x00\x00\x00\x1cftypmif1\x00\x00\x00\x00mif1avifmiaf") == "avif"
    assert sniff_image_format(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic") == "heic"
    assert sniff_image_format(b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00isommp41") is None  # an MP4
    assert sniff_image_format(b"RIFF\x00\x00\x00\x00WAVEfmt ") is None
    assert sniff_image_format(b"") is None
    assert sniff_image_format(PHOTOS[0].read_bytes()) == "jpeg"


def test_spec_validation():
    with pytest.raises(ValueError):
        spec(resize_mode="fit")
    with pytest.raises(ValueError):
        spec(output_format="png")
