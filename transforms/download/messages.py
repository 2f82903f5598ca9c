"""Error messages for the `error_message` column: the same for the same failure, short, one line.

Exception texts are not fit as they are: Pillow names the file object it read, memory address
included (`cannot identify image file <_io.BytesIO object at 0x7f...>`), so two identical runs
would differ; aiohttp's parser errors quote the bytes they choked on, tens of KB of a binary
body that ran past its Content-Length.
"""

import re

MAX_MESSAGE_CHARS = 500
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_WHITESPACE_RUN = re.compile(r"\s+")


def bounded_message(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` on one line, printable, without memory addresses, cut at `limit` characters."""
    text = _ADDRESS.sub("", text[: 4 * limit])  # whitespace runs collapse to one: keep some spare
    text = "".join(character if character.isprintable() else " " for character in text)
    text = _WHITESPACE_RUN.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def exception_message(error: BaseException) -> str:
    """`Type: message` of an exception, bounded. aiohttp's HTTP errors keep only their first
    line: what follows is the dump of the offending bytes."""
    message = getattr(error, "message", None)
    if isinstance(message, str):
        status = getattr(error, "status", None)
        text = message.split("\n", 1)[0].rstrip(":")
        text = f"{status}, {text}" if isinstance(status, int) else text
    else:
        text = str(error)
    return bounded_message(f"{type(error).__name__}: {text}" if text else type(error).__name__)
