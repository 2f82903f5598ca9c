"""Builds archive files for tests from the real shared archives: ARC copies of real pages and
deliberately broken copies of real WARCs. Written at test time, never committed."""

import gzip
import hashlib
import os
import uuid

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


def warc_record(target_uri: str, block: bytes, record_type: str = "response", content_length: int | None = None,
                content_type: str = "application/http; msgtype=response") -> bytes:
    """One WARC/1.0 record as bytes; `content_length` overrides the true length (a lying header)."""
    headers = [
        ("WARC-Type", record_type),
        ("WARC-Record-ID", f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, target_uri + hashlib.sha1(block).hexdigest())}>"),
        ("WARC-Date", "2024-01-01T00:00:00Z"),
        ("WARC-Target-URI", target_uri),
        ("Content-Type", content_type),
        ("Content-Length", str(len(block) if content_length is None else content_length)),
    ]
    head = "WARC/1.0\r\n" + "".join(f"{name}: {value}\r\n" for name, value in headers) + "\r\n"
    return head.encode() + block + b"\r\n\r\n"


def html_response(body: str, content_type: str = "text/html; charset=utf-8") -> bytes:
    """An HTTP 200 response block holding `body`."""
    data = body.encode("utf-8")
    return (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data


def page_with_images(name: str, n: int = 2) -> str:
    """An HTML page with `n` relative <img> tags carrying alt texts: n pairs."""
    tags = "".join(f'<img src="img/{name}-{i}.jpg" alt="picture {i} of {name}">' for i in range(n))
    return f"<!doctype html><html><body><h1>{name}</h1>{tags}</body></html>"


def write_warc(path, records: list[bytes], compress: bool) -> list[int]:
    """Writes the records (one gzip member each when compressed); returns each record's offset."""
    offsets, position = [], 0
    with open(path, "wb") as out:
        for record in records:
            data = gzip.compress(record, mtime=0) if compress else record
            offsets.append(position)
            out.write(data)
            position += len(data)
    return offsets


def gzip_members(path: str) -> list[bytes]:
    """The decompressed gzip members of a per-record gzip archive (one record each), in order."""
    data = open(path, "rb").read()
    offsets = gzip_member_offsets(path) + [len(data)]
    return [gzip.decompress(data[start:end]) for start, end in zip(offsets, offsets[1:])]


def uncompressed_records(path: str) -> list[bytes]:
    """The records of an uncompressed WARC as bytes, each with its trailing CRLFs."""
    data = open(path, "rb").read()
    offsets = [record.stream_pos for record in ArchiveIterator(path, parse_http=False)] + [len(data)]
    return [data[start:end] for start, end in zip(offsets, offsets[1:])]


def split_record(record: bytes) -> tuple[bytes, bytes]:
    """(WARC header up to its blank line, the rest: block and trailer)."""
    end = record.index(b"\r\n\r\n") + 4
    return record[:end], record[end:]


def with_header(record: bytes, name: str, value: str | None) -> bytes:
    """The record with header `name` set to `value` (None: the line removed); the block unchanged."""
    head, rest = split_record(record)
    lines = head[:-4].split(b"\r\n")
    key = name.lower().encode() + b":"
    kept = [line for line in lines if not line.lower().startswith(key)]
    if value is not None:
        kept.insert(1, f"{name}: {value}".encode())
    return b"\r\n".join(kept) + b"\r\n\r\n" + rest


def with_block(record: bytes, block: bytes) -> bytes:
    """The record holding `block` instead, with a Content-Length that says so."""
    head, _ = split_record(record)
    return with_header(head + b"\r\n\r\n", "Content-Length", str(len(block)))[:-4] + block + b"\r\n\r\n"


def block_of(record: bytes) -> bytes:
    head, rest = split_record(record)
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
    return rest[:length]


def write_members(path, members: list[bytes]) -> list[int]:
    """Each record as its own gzip member (Common Crawl's layout); returns the member offsets."""
    return write_warc(path, members, compress=True)
