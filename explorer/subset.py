"""Subsets of an index as parquet in the LAION schema: the rows passing filters (a
high-resolution or low-punsafe subset), or the neighbours of queries.

    crawl2clip subset --index INDEX_DIR --filter 'punsafe<0.1' --filter 'WIDTH>=1024' --output safe-hd.parquet
    crawl2clip subset --index INDEX_DIR --query 'a red car' --query 'a cat' --k 100 --output cars-cats.parquet
    crawl2clip subset --index INDEX_DIR --all --output everything.parquet

A query or a filter is required; exporting every row takes an explicit --all.

Rows keep every metadata column of the index; query subsets add `query` and `query_similarity`.
A row found by several queries appears once, for the query it is most similar to.

INDEX_DIR and the output may be on any Beam filesystem (with the stage commands' `--hdfs_*` or
`--s3_*` flags): the index is opened from local copies, the parquet committed whole.
"""

import argparse
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crawl2clip.explorer.filters import allowed_rows, parse_filters
from crawl2clip.explorer.query import QueryEncoder, QueryError, nearest
from crawl2clip.pipelines.filesystem_flags import add_filesystem_flags, use_filesystems
from crawl2clip.transforms import files
from crawl2clip.transforms.index.store import IndexStore

QUERY = "query"
QUERY_SIMILARITY = "query_similarity"
MAX_K = 10_000


def filtered_rows(allowed: np.ndarray | None, rows: int, limit: int | None = None) -> np.ndarray:
    ids = np.arange(rows) if allowed is None else np.flatnonzero(allowed)
    return ids[:limit] if limit is not None else ids


def neighbour_rows(store: IndexStore, vectors: np.ndarray, queries: list[str], k: int,
                   allowed: np.ndarray | None, dedup: bool, modality: str = "image") -> pa.Table:
    """The k nearest rows of each query, best match per row kept, most similar first."""
    best: dict[int, tuple[float, str]] = {}
    for vector, query in zip(vectors, queries):
        ids, scores = nearest(store, vector, k, modality, allowed, dedup)
        for row, score in zip(ids.tolist(), scores.tolist()):
            if row not in best or score > best[row][0]:
                best[row] = (score, query)
    order = sorted(best, key=lambda row: -best[row][0])
    table = store.metadata.take(pa.array(order, pa.int64()))
    return (table.append_column(QUERY, pa.array([best[r][1] for r in order], pa.string()))
                 .append_column(QUERY_SIMILARITY, pa.array([best[r][0] for r in order], pa.float32())))


def write_subset(table: pa.Table, path: str) -> None:
    """Writes the parquet file whole or not at all (files.write_atomic)."""
    files.write_atomic(path, lambda f: pq.write_table(table, f))


def output_problem(path: str) -> str | None:
    """Why a local --output cannot take the subset file (None when it can)."""
    if not files.is_local(path):
        return None
    if os.path.isdir(path):
        return f"--output {path}: a folder is there; give a file name (e.g. {os.path.join(path, 'subset.parquet')})"
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.exists(directory) and not os.path.isdir(directory):
        return f"--output {path}: {directory} is a file, not a folder"
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="crawl2clip subset", description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", required=True, metavar="INDEX_DIR", help="a `crawl2clip index` output")
    parser.add_argument("--query", action="append", default=[], metavar="TEXT", help="a text query (repeatable)")
    parser.add_argument("--query-file", metavar="FILE", help="text queries, one per line")
    parser.add_argument("--query-image", action="append", default=[], metavar="IMAGE",
                        help="an image query: JPEG, PNG or WebP file (repeatable)")
    parser.add_argument("--k", type=int, default=100, help="neighbours per query (default: %(default)s)")
    parser.add_argument("--filter", action="append", default=[], metavar="EXPR",
                        help="e.g. 'punsafe<0.1', 'WIDTH>=1024', 'LANGUAGE=en,de' (repeatable; all must hold)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many rows (filter subsets)")
    parser.add_argument("--no-dedup", action="store_true", help="keep near-duplicate neighbours")
    parser.add_argument("--search", choices=("image", "text"), default="image",
                        help="search image embeddings (default) or caption embeddings (needs --index-text)")
    parser.add_argument("--lang", default=None, metavar="CODE",
                        help="the text queries' language (ISO 639), which picks their text tower (default: detected)")
    parser.add_argument("--device", default="auto", help="device of the query encoder (default: %(default)s)")
    parser.add_argument("--all", action="store_true",
                        help="with no query and no filter: export every row (up to --limit)")
    parser.add_argument("--output", required=True, metavar="FILE.parquet")
    add_filesystem_flags(parser)
    return parser


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not (args.query or args.query_file or args.query_image or args.filter or args.all):
        parser.error("give --query, --query-file, --query-image or --filter (or --all for every row)")
    if problem := output_problem(args.output) or use_filesystems(
            args, {"--index": args.index, "--output": args.output, "--query-file": args.query_file}):
        parser.error(problem)
    try:
        store = IndexStore(args.index)
        if not 1 <= args.k <= MAX_K:
            raise QueryError(f"--k must be between 1 and {MAX_K}")
        if args.limit is not None and args.limit < 1:
            raise QueryError("--limit must be >= 1")
        if args.search not in store.searches:
            raise QueryError(f"the index has no {args.search} search (built without --index-text)")
        allowed = allowed_rows(store.metadata, parse_filters(args.filter, store.metadata.schema))
        texts = list(args.query)
        if args.query_file:
            lines = files.read_bytes(args.query_file).decode("utf-8").splitlines()
            texts += [line.strip() for line in lines if line.strip()]
        if texts or args.query_image:
            encoder = QueryEncoder(store, args.device)
            vectors = [encoder.texts(texts, args.lang)] if texts else []
            for path in args.query_image:
                vectors.append(encoder.image(files.read_bytes(path))[None, :])
            table = neighbour_rows(store, np.concatenate(vectors), texts + args.query_image, args.k,
                                   allowed, not args.no_dedup, args.search)
        else:
            table = store.metadata.take(pa.array(filtered_rows(allowed, store.rows, args.limit)))
    except (OSError, ValueError) as exc:  # FilterError, QueryError, bad index, unreadable file
        print(f"crawl2clip subset: {exc}", file=sys.stderr)
        return 2
    try:
        write_subset(table, args.output)
    except OSError as exc:
        print(f"crawl2clip subset: --output {args.output}: cannot write it ({exc.strerror or exc})", file=sys.stderr)
        return 2
    print(f"{table.num_rows:,} rows -> {args.output}")
    return 0
