"""The project's own sample crawl: a small gzip WARC of made-up but realistic pages.

The demo and the quick start must work on a machine without `../shared`, so the project writes
its input itself, deterministically. The pages exercise every extraction rule: relative URLs and
`<base href>`, lazy-loading `data-src`, images inside comments and scripts (not real tags),
SVG/GIF, missing and too-short alt texts, entities, several languages and scripts, pairs repeated
across pages, a revisit record, a non-HTML response and a 404.

The crawl also holds the images of its "gallery" pictures (rendered scenes, models/scenes.py),
so the whole pipeline runs on it offline with the replay proxy (pipelines/replay.py): most alt
texts describe their picture, some describe another one (CLIP should drop those), some pictures
carry a watermark, a few are broken or missing from the crawl. The German, French and Spanish
sites caption their gallery pictures in their language (models/scene_captions.py), so the
multilingual text tower has pairs to score. Its sites use plain http, so the
replay proxy sees every request (it cannot look inside an https CONNECT tunnel).

`Gallery` sets how many distinct pictures there are, how often a caption describes another one,
and how often a page shows a near-duplicate: a re-encoded, resized, slightly cropped copy of one
of a few popular pictures under its own URL (as stock photos recur across the web). The defaults
(no copies) are the demo's; `crawl2clip compare --demo` asks for a bigger, noisier crawl.
"""

import io
import os
import random
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

from crawl2clip.models.scene_captions import caption
from crawl2clip.models.scenes import random_scene, render_example, scene_rng
from crawl2clip.models.watermark import HELD_OUT_TEXTS, apply_watermark, random_watermark

HOSTS = ["www.example-photos.org", "blog.example-travel.net", "shop.example-store.com",
         "news.example-daily.de", "www.example-recettes.fr", "example-tabi.jp", "www.example-fotos.es"]
# the language of a site's gallery captions (and of its <html lang>); English elsewhere
HOST_LANGUAGES = {"news.example-daily.de": "de", "www.example-recettes.fr": "fr", "www.example-fotos.es": "es"}
CAPTIONS = [
    "A red fox sitting in fresh snow", "Sunset over the harbour with fishing boats",
    "Close-up of a ripe strawberry on a wooden table", "Two children flying a kite on the beach",
    "Snow-covered mountain peaks under a clear blue sky", "A bowl of ramen with a soft-boiled egg",
    "Vintage bicycle leaning against a yellow wall", "Ein Hund spielt im Park mit einem Ball",
    "Blick auf die Altstadt von Heidelberg im Herbst", "Une tarte aux pommes sortie du four",
    "La tour Eiffel illuminée la nuit", "Un gato durmiendo en el sofá",
    "Кошка сидит на подоконнике", "Красная площадь в Москве зимой", "富士山と桜の風景",
    "東京の夜景とスカイツリー", "صورة لمسجد في المدينة القديمة", "ताजमहल का सूर्योदय दृश्य",
    "Hot-air balloons &amp; a morning sky", "Lighthouse on a rocky coast &ndash; Brittany",
]
SHORT_ALTS = ["img", "logo", "", "   "]
SCENE_SEED = 50_000  # not a seed the tiny CLIP or its heads were trained or checked on
PICTURE_SIZE = 160


@dataclass(frozen=True)
class Gallery:
    """The gallery pictures of the crawl: `pictures` distinct scenes; a caption describes another
    scene with probability `misaligned`; with probability `near_duplicates` a gallery image is one
    of `copies` re-encoded copies of one of the first `popular` scenes."""
    pictures: int = 400
    misaligned: float = 0.2
    near_duplicates: float = 0.0
    popular: int = 20
    copies: int = 6


def _gallery_picture(rng: random.Random, pictures: dict[str, tuple[int, int]], language: str,
                     gallery: Gallery) -> tuple[str, str]:
    """(image URL, alt text in `language`) of a rendered scene, or of a copy of a popular one."""
    copy = 0
    if gallery.near_duplicates and rng.random() < gallery.near_duplicates:
        index, copy = rng.randrange(gallery.popular), 1 + rng.randrange(gallery.copies)
        url = f"http://media.example-photos.org/scenes/copies/{index:04d}-{copy}.jpg"
    else:
        index = rng.randrange(gallery.pictures)
        url = f"http://media.example-photos.org/scenes/{index:04d}.jpg"
    pictures[url] = (index, copy)
    caption_of = index if rng.random() >= gallery.misaligned else \
        (index + 1 + rng.randrange(gallery.pictures - 1)) % gallery.pictures
    return url, caption(random_scene(scene_rng(SCENE_SEED, caption_of)), language)


def picture_bytes(index: int, copy: int = 0) -> bytes:
    """JPEG of gallery scene `index`: every 7th is watermarked, every 50th cut short (broken).
    Copy 1, 2, ... is a near-duplicate: cropped by a few pixels, resized, at a lower quality."""
    image, _ = render_example(SCENE_SEED, index, size=PICTURE_SIZE)
    if index % 7 == 3:
        mark_rng = np.random.default_rng([SCENE_SEED, index, 1])
        image = apply_watermark(image, random_watermark(mark_rng, HELD_OUT_TEXTS), mark_rng)
    quality = 90
    if copy:
        crop = 1 + copy % 4
        image = image.crop((crop, crop, PICTURE_SIZE - crop, PICTURE_SIZE - crop)).resize(
            (PICTURE_SIZE - 8 * copy, PICTURE_SIZE - 8 * copy))
        quality = 90 - 6 * copy
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    data = out.getvalue()
    return data[: len(data) // 3] if index % 50 == 49 and not copy else data


def _image_path(rng: random.Random, extension: str = "jpg") -> str:
    return f"/images/{rng.randrange(16**6):06x}.{extension}"


def _page_html(rng: random.Random, host: str, page_number: int, pictures: dict[str, tuple[int, int]],
               gallery: Gallery = Gallery()) -> str:
    tags = []
    for _ in range(rng.randint(6, 14)):
        kind = rng.random()
        caption = rng.choice(CAPTIONS)
        if kind < 0.4:
            url, alt = _gallery_picture(rng, pictures, HOST_LANGUAGES.get(host, "en"), gallery)
            tags.append(f'<img src="{url}" alt="{alt}">')
        elif kind < 0.45:
            tags.append(f'<img src="{_image_path(rng)}" alt="{caption}" width="640" height="480">')
        elif kind < 0.55:  # lazy loading: the image is in data-src
            tags.append(f'<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" '
                        f'data-src="http://cdn.{host}{_image_path(rng)}" alt="{caption}">')
        elif kind < 0.65:  # relative to <base href>
            tags.append(f"<img src='thumbs/{rng.randrange(1000)}.png' alt='{caption}'>")
        elif kind < 0.72:
            tags.append(f'<IMG SRC="{_image_path(rng, rng.choice(["svg", "gif"]))}" ALT="{caption}">')
        elif kind < 0.82:
            tags.append(f'<img src="{_image_path(rng)}" alt="{rng.choice(SHORT_ALTS)}">')
        elif kind < 0.88:
            tags.append(f'<img src="{_image_path(rng)}">')
        else:  # a pair shared by many pages (site logo): deduplicated across the crawl
            tags.append(f'<img src="http://{host}/static/logo.png" alt="{host} logo and home link">')
    body = "\n".join(f"<figure>{tag}</figure>" for tag in tags)
    return f"""<!DOCTYPE html>
<html lang="{HOST_LANGUAGES.get(host, "en")}"><head><meta charset="utf-8"><title>Page {page_number} of {host}</title>
<base href="http://{host}/gallery/{page_number}/">
<script>var tpl = '<img src="/not-a-tag.jpg" alt="inside a script, not an image">';</script>
<style>.x{{background:url(/bg.jpg)}}</style></head>
<body><nav><a href="/">Home</a></nav>
<!-- <img src="/commented-out.jpg" alt="inside a comment, not an image"> -->
<main>{body}</main></body></html>"""


def write_sample_crawl(path: str, pages: int = 200, seed: int = 0, gallery: Gallery = Gallery()) -> dict:
    """Writes the sample crawl to `path` (gzip WARC, one member per record); returns counts."""
    rng = random.Random(seed)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    when = datetime(2024, 5, 1, tzinfo=timezone.utc)
    records = 0
    with open(path, "wb") as out:
        writer = WARCWriter(out, gzip=True)
        writer.write_record(writer.create_warcinfo_record(os.path.basename(path), {"software": "crawl2clip sample"}))
        records += 1

        def write_response(url: str, status: str, content_type: str, body: bytes) -> None:
            nonlocal records, when
            when += timedelta(seconds=7)
            headers = StatusAndHeaders(status, [("Content-Type", content_type)], protocol="HTTP/1.1")
            date = when.strftime("%Y-%m-%dT%H:%M:%SZ")
            writer.write_record(writer.create_warc_record(url, "response", payload=io.BytesIO(body),
                                                          http_headers=headers, warc_headers_dict={"WARC-Date": date}))
            records += 1

        pictures: dict[str, tuple[int, int]] = {}
        for number in range(pages):
            host = HOSTS[number % len(HOSTS)]
            url = f"http://{host}/gallery/{number}/index.html"
            write_response(url, "200 OK", "text/html; charset=utf-8",
                           _page_html(rng, host, number, pictures, gallery).encode())
        for url, (index, copy) in sorted(pictures.items()):
            if index % 40 != 17:  # a few pictures the crawl never fetched: the replay answers 404
                write_response(url, "200 OK", "image/jpeg", picture_bytes(index, copy))
        write_response(f"http://{HOSTS[0]}/missing.html", "404 Not Found", "text/html", b"<html>gone</html>")
        write_response(f"http://{HOSTS[0]}/static/logo.png", "200 OK", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(64))
        revisit = writer.create_revisit_record(f"http://{HOSTS[0]}/gallery/0/index.html",
                                               "sha1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                                               f"http://{HOSTS[0]}/gallery/0/index.html", "2024-05-01T00:00:00Z")
        writer.write_record(revisit)
        records += 1
    return {"path": path, "pages": pages, "records": records, "pictures": len(pictures)}
