"""Builds archive files for tests from the real shared archives: ARC copies of real pages and
deliberately broken copies of real WARCs. Written at test time, never committed."""

import gzip
import os

from fastwarc.warc import ArchiveIterator

SHARED_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")
WARC_DIR = os.path.normpath(os.path.join(SHARED_DATA, "warc"))
WAT_DIR = os.path.normpath(os.path.join(SHARED_DATA, "wat"))


def real_responses(warc_path: str) -> list[tuple[str, str, bytes]]:
    """(target URI, WARC-Date, HTTP response block) of every response record."""
    out = []
    for record in ArchiveIterator(warc_path, parse_http=False):
        if record.headers.get("WARC-Type") == "response":
            out.append((record.headers["WARC-Target-URI"], record.headers["WARC-Date"], record.reader.read()))
    return out


def write_arc(path: str, responses: list[tuple[str, str, bytes]], compress: bool) -> None:
    """An ARC v1 file (the Internet Archive's pre-WARC format), one gzip member per record when
    compressed, as the Internet Archive wrote them."""

    def arc_date(warc_date: str) -> str:
        return warc_date.replace("-", "").replace(":", "").replace("T", "")[:14]

    version_block = b"1 0 crawl2clip-tests\nURL IP-address Archive-date Content-type Archive-length\n"
    header = f"filedesc://{os.path.basename(path)} 0.0.0.0 20240101000000 text/plain {len(version_block)}\n"
    members = [header.encode() + version_block + b"\n"]
    for url, date, block in responses:
        head = block.split(b"\r\n", 1)[1].split(b"\r\n\r\n", 1)[0].decode("iso-8859-1")
        content_type = "text/html"
        for line in head.split("\r\n"):
            if line.lower().startswith("content-type:"):
                content_type = line.split(":", 1)[1].strip().split(";")[0] or content_type
        members.append(f"{url} 127.0.0.1 {arc_date(date)} {content_type} {len(block)}\n".encode() + block + b"\n")
    with open(path, "wb") as out:
        for member in members:
            out.write(gzip.compress(member) if compress else member)


def gzip_member_offsets(warc_gz_path: str) -> list[int]:
    return [record.stream_pos for record in ArchiveIterator(warc_gz_path, parse_http=False)]
