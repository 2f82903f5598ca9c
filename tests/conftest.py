import os

import pytest

from tests.archive_files import WARC_DIR, WAT_DIR


@pytest.fixture(scope="session")
def warc_dir() -> str:
    if not os.path.isdir(WARC_DIR):
        pytest.skip(f"the shared real data is not at {WARC_DIR}")
    return WARC_DIR


@pytest.fixture(scope="session")
def books(warc_dir) -> str:
    """The books.toscrape.com capture: real pages and covers, replayed by the tests' proxy."""
    return os.path.join(warc_dir, "books-toscrape.warc")


@pytest.fixture(scope="session")
def wat_dir() -> str:
    if not os.path.isdir(WAT_DIR):
        pytest.skip(f"the shared real data is not at {WAT_DIR}")
    return WAT_DIR
