"""`crawl2clip serve INDEX_DIR`: the HTTP API and web page over a built index.

    GET  /                      the page (explorer/static: no CDN, no network assets)
    GET  /api/info              the index: rows, type, recall@10, columns, languages
    POST /api/search            JSON: text | row | vector, k, filters, dedup -> results
    POST /api/search/image      multipart: an uploaded image (+ k, filters, dedup) -> results
    POST /api/subset            JSON as /api/search (query optional) -> parquet of the rows
    GET  /api/thumbnail/{row}   JPEG thumbnail from INDEX_DIR
    GET  /openapi.json          the schema (no /docs: Swagger UI would load from a CDN)

Safe by default: binds 127.0.0.1; every parameter is validated (4xx with a message); request
bodies are capped as they arrive, chunked or not (explorer/body_limit.py); uploads are sniffed
by their bytes; nothing is read outside INDEX_DIR (rows are addressed by number, thumbnails come
from one packed file there).
"""

import argparse
import io
import ipaddress
import logging
import os
import sys
from functools import lru_cache
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import uvicorn
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, model_validator

from crawl2clip.explorer.body_limit import BodyLimit
from crawl2clip.explorer.filters import MAX_FILTERS, Filter, FilterError, allowed_rows, parse_filters
from crawl2clip.explorer.query import (
    DEDUP_THRESHOLD,
    MAX_UPLOAD_BYTES,
    QueryEncoder,
    QueryError,
    nearest,
    row_query,
    vector_query,
)
from crawl2clip.explorer.subset import filtered_rows, neighbour_rows
from crawl2clip.pipelines.filesystem_flags import add_filesystem_flags, use_filesystems
from crawl2clip.transforms.index.store import IndexStore

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
MAX_K = 500
MAX_SUBSET_ROWS = 1_000_000
MAX_TEXT_CHARS = 1000
MAX_BODY_BYTES = MAX_UPLOAD_BYTES + 2**16
RESULT_COLUMNS = ("URL", "TEXT", "key", "LANGUAGE", "split", "WIDTH", "HEIGHT", "similarity", "punsafe",
                  "pwatermark", "ptoxic", "uid")
_LOG = logging.getLogger(__name__)


class Query(BaseModel):
    """What to look for (at most one of text, row, vector) and which rows may answer."""
    model_config = {"extra": "forbid"}
    text: str | None = Field(None, min_length=1, max_length=MAX_TEXT_CHARS, description="text -> image search")
    lang: str | None = Field(None, pattern=r"^[a-z]{2,3}$",
                             description="the text's language (ISO 639; default: detected): picks its text tower")
    row: int | None = Field(None, ge=0, description="image -> image search from an indexed row")
    vector: list[float] | None = Field(None, max_length=4096, description="a query embedding")
    k: int = Field(40, ge=1, le=MAX_K)
    search: Literal["image", "text"] = "image"
    filters: list[str] = Field([], max_length=MAX_FILTERS, description="e.g. punsafe<0.1, LANGUAGE=en,de")
    dedup: bool = True
    dedup_threshold: float = Field(DEDUP_THRESHOLD, ge=0.5, le=1.0)

    @model_validator(mode="after")
    def _one_query(self):
        if sum(x is not None for x in (self.text, self.row, self.vector)) > 1:
            raise ValueError("give at most one of text, row and vector")
        return self


class SearchRequest(Query):
    @model_validator(mode="after")
    def _needs_query(self):
        if self.text is None and self.row is None and self.vector is None:
            raise ValueError("give text, row or vector")
        return self


class SubsetRequest(Query):
    k: int = Field(100, ge=1, le=MAX_K)
    limit: int = Field(100_000, ge=1, le=MAX_SUBSET_ROWS, description="rows of a filter-only subset")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, "detail": message})


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(x) for x in err.get("loc", ()) if x not in ("body", "query", "path", "form"))
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "; ".join(parts)


class Explorer:
    """The state behind the API: the opened index, the query encoder, cached filter masks."""

    def __init__(self, store: IndexStore, encoder: QueryEncoder | None):
        self.store = store
        self.encoder = encoder
        self._mask = lru_cache(maxsize=32)(self._compute_mask)

    def _compute_mask(self, filters: tuple[Filter, ...]) -> np.ndarray | None:
        return allowed_rows(self.store.metadata, filters)

    def allowed(self, expressions: list[str]) -> np.ndarray | None:
        return self._mask(parse_filters(expressions, self.store.metadata.schema))

    def vector(self, query: Query) -> np.ndarray | None:
        if query.text is not None:
            if self.encoder is None:
                raise QueryError("this server has no query model: text search is off")
            return self.encoder.texts([query.text], query.lang)[0]
        if query.row is not None:
            return row_query(self.store, query.row)
        if query.vector is not None:
            return vector_query(self.store, query.vector)
        return None

    def check_search(self, search: str) -> None:
        if search not in self.store.searches:
            raise QueryError(f"the index has no {search} search (built without --index-text)")

    def results(self, vector: np.ndarray, query: Query) -> dict:
        self.check_search(query.search)
        ids, scores = nearest(self.store, vector, query.k, query.search, self.allowed(query.filters),
                              query.dedup, query.dedup_threshold)
        table = self.store.metadata.take(pa.array(ids, pa.int64()))
        columns = [c for c in RESULT_COLUMNS if c in table.column_names]
        rows = table.select(columns).to_pylist()
        thumbs = self.store.thumbnails.available() if self.store.thumbnails else None
        for row, row_id, score in zip(rows, ids.tolist(), scores.tolist()):
            row.update(row=row_id, score=round(score, 5), thumbnail=bool(thumbs is not None and thumbs[row_id]))
        return {"count": len(rows), "results": rows}

    def subset(self, request: SubsetRequest) -> pa.Table:
        allowed = self.allowed(request.filters)
        vector = self.vector(request)
        if vector is None:
            return self.store.metadata.take(pa.array(filtered_rows(allowed, self.store.rows, request.limit)))
        self.check_search(request.search)
        label = request.text if request.text is not None else (f"row {request.row}" if request.row is not None
                                                               else "vector")
        return neighbour_rows(self.store, vector[None, :], [label], request.k, allowed, request.dedup,
                              request.search)

    def info(self) -> dict:
        info, metadata = self.store.info, self.store.metadata
        languages = []
        if "LANGUAGE" in metadata.column_names:
            counts = pc.value_counts(metadata["LANGUAGE"]).to_pylist()
            languages = [c["values"] for c in sorted(counts, key=lambda c: -c["counts"]) if c["values"]][:100]
        return {
            "rows": self.store.rows, "dim": self.store.dim, "index_type": info["index_type"],
            "searches": {m: {"recall_at_10": e["recall_at_10"], **e["search"]} for m, e in info["indexes"].items()},
            "thumbnails": info.get("thumbnails", 0), "clip": info.get("clip"),
            "text_search": self.encoder is not None, "max_k": MAX_K, "max_upload_bytes": MAX_UPLOAD_BYTES,
            "columns": {f.name: str(f.type) for f in metadata.schema}, "languages": languages,
        }


def create_app(store: IndexStore, encoder: QueryEncoder | None) -> FastAPI:
    """The FastAPI app over an opened index. `encoder` None: text and upload queries answer 400."""
    explorer = Explorer(store, encoder)
    app = FastAPI(title="crawl2clip explorer", version="1", docs_url=None, redoc_url=None,
                  description="kNN search, filters and subset export over a crawl2clip index.")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        return _error(422, _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(QueryError)
    async def _query(request: Request, exc: QueryError):
        return _error(400, str(exc))

    @app.exception_handler(FilterError)
    async def _filter(request: Request, exc: FilterError):
        return _error(400, str(exc))

    app.add_middleware(BodyLimit, max_bytes=MAX_BODY_BYTES)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(os.path.join(STATIC_DIR, "index.html"))

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/api/info")
    def info() -> dict:
        return explorer.info()

    @app.post("/api/search")
    def search(request: SearchRequest) -> dict:
        return explorer.results(explorer.vector(request), request)

    @app.post("/api/search/image")
    def search_image(image: UploadFile = File(..., description="JPEG, PNG or WebP"),
                     k: int = Form(40, ge=1, le=MAX_K), filters: list[str] = Form([]),
                     dedup: bool = Form(True), search: Literal["image", "text"] = Form("image")) -> dict:
        if encoder is None:
            raise QueryError("this server has no query model: image upload is off")
        data = image.file.read(MAX_UPLOAD_BYTES + 1)
        vector = encoder.image(data)
        query = Query(k=k, filters=filters, dedup=dedup, search=search)
        return {**explorer.results(vector, query), "query_vector": [round(float(x), 6) for x in vector]}

    @app.post("/api/subset", response_class=Response,
              responses={200: {"content": {"application/vnd.apache.parquet": {}}}})
    def subset(request: SubsetRequest) -> Response:
        table = explorer.subset(request)
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        return Response(buffer.getvalue(), media_type="application/vnd.apache.parquet",
                        headers={"Content-Disposition": 'attachment; filename="subset.parquet"',
                                 "X-Rows": str(table.num_rows)})

    @app.get("/api/thumbnail/{row}", responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(row: int) -> Response:
        if not 0 <= row < store.rows:
            raise HTTPException(404, f"row must be between 0 and {store.rows - 1}")
        data = store.thumbnails.get(row) if store.thumbnails else None
        if data is None:
            raise HTTPException(404, f"row {row} has no thumbnail")
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})

    return app


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="crawl2clip serve", description="Serve the explorer over an index.")
    parser.add_argument("index", metavar="INDEX_DIR", help="a `crawl2clip index` output")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s, this machine only)")
    parser.add_argument("--port", type=int, default=8765, help="(default: %(default)s)")
    parser.add_argument("--device", default="auto", help="device of the query encoder (default: %(default)s)")
    add_filesystem_flags(parser)
    args = parser.parse_args(argv)
    if not 0 < args.port < 65536:
        parser.error("--port must be between 1 and 65535")
    if problem := use_filesystems(args, {"INDEX_DIR": args.index}):
        parser.error(problem)
    try:
        store = IndexStore(args.index)
        encoder = QueryEncoder(store, args.device)
    except (OSError, ValueError) as exc:
        print(f"crawl2clip serve: {exc}", file=sys.stderr)
        return 2
    if not _is_loopback(args.host):
        _LOG.warning("binding %s: the explorer is reachable from other machines", args.host)
    print(f"crawl2clip explorer: {store.rows:,} rows ({store.info['index_type']}) at http://{args.host}:{args.port}/",
          flush=True)
    uvicorn.run(create_app(store, encoder), host=args.host, port=args.port, log_level="warning")
    return 0
