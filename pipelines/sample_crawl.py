"""The project's own sample crawl: a small gzip WARC of made-up but realistic pages.

The demo and the quick start must work on a machine without `../shared`, so the project writes
its input itself, deterministically. The pages exercise every extraction rule: relative URLs and
`<base href>`, lazy-loading `data-src`, images inside comments and scripts (not real tags),
SVG/GIF, missing and too-short alt texts, entities, several languages and scripts, pairs repeated
across pages, a revisit record, a non-HTML response and a 404.
"""

import io
import os
import random
from datetime import datetime, timedelta, timezone

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

HOSTS = ["www.example-photos.org", "blog.example-travel.net", "shop.example-store.com",
         "news.example-daily.de", "www.example-recettes.fr", "example-tabi.jp"]
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


def _image_path(rng: random.Random, extension: str = "jpg") -> str:
    return f"/images/{rng.randrange(16**6):06x}.{extension}"


def _page_html(rng: random.Random, host: str, page_number: int) -> str:
    tags = []
    for _ in range(rng.randint(6, 14)):
        kind = rng.random()
        caption = rng.choice(CAPTIONS)
        if kind < 0.45:
            tags.append(f'<img src="{_image_path(rng)}" alt="{caption}" width="640" height="480">')
        elif kind < 0.55:  # lazy loading: the image is in data-src
            tags.append(f'<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" '
                        f'data-src="https://cdn.{host}{_image_path(rng)}" alt="{caption}">')
        elif kind < 0.65:  # relative to <base href>
            tags.append(f"<img src='thumbs/{rng.randrange(1000)}.png' alt='{caption}'>")
        elif kind < 0.72:
            tags.append(f'<IMG SRC="{_image_path(rng, rng.choice(["svg", "gif"]))}" ALT="{caption}">')
        elif kind < 0.82:
            tags.append(f'<img src="{_image_path(rng)}" alt="{rng.choice(SHORT_ALTS)}">')
        elif kind < 0.88:
            tags.append(f'<img src="{_image_path(rng)}">')
        else:  # a pair shared by many pages (site logo): deduplicated across the crawl
            tags.append(f'<img src="https://{host}/static/logo.png" alt="{host} logo and home link">')
    body = "\n".join(f"<figure>{tag}</figure>" for tag in tags)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Page {page_number} of {host}</title>
<base href="https://{host}/gallery/{page_number}/">
<script>var tpl = '<img src="/not-a-tag.jpg" alt="inside a script, not an image">';</script>
<style>.x{{background:url(/bg.jpg)}}</style></head>
<body><nav><a href="/">Home</a></nav>
<!-- <img src="/commented-out.jpg" alt="inside a comment, not an image"> -->
<main>{body}</main></body></html>"""


def write_sample_crawl(path: str, pages: int = 200, seed: int = 0) -> dict:
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

        for number in range(pages):
            host = HOSTS[number % len(HOSTS)]
            url = f"https://{host}/gallery/{number}/index.html"
            write_response(url, "200 OK", "text/html; charset=utf-8", _page_html(rng, host, number).encode())
        write_response(f"https://{HOSTS[0]}/missing.html", "404 Not Found", "text/html", b"<html>gone</html>")
        write_response(f"https://{HOSTS[0]}/static/logo.png", "200 OK", "image/png", b"\x89PNG\r\n\x1a\n" + bytes(64))
        revisit = writer.create_revisit_record(f"https://{HOSTS[0]}/gallery/0/index.html",
                                               "sha1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                                               f"https://{HOSTS[0]}/gallery/0/index.html", "2024-05-01T00:00:00Z")
        writer.write_record(revisit)
        records += 1
    return {"path": path, "pages": pages, "records": records}
