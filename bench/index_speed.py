"""kNN index on 1M synthetic CLIP-sized embeddings: build time and peak memory of `crawl2clip
index`, the index type it chooses, then queries per second and p50/p99 latency for k=10 (one
query at a time, as the server answers them; with and without a filter) and recall@10 against
exact search on fresh queries.

The embeddings are clustered like real CLIP embeddings are (a mixture of 2,000 Gaussian
clusters on the unit sphere, float16), written in the scoring stage's layout as 10 parts. The
build runs as its own process (`python -m crawl2clip.pipelines.cli index`, DirectRunner, no
thumbnails) so its peak RSS is measured alone.

    .venv/bin/python bench/index_speed.py [--rows 1000000] [--dim 512]   # -> bench/results/index_speed.json
"""

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from crawl2clip.explorer.filters import allowed_rows, parse_filters  # noqa: E402
from crawl2clip.transforms.embeddings import list_parts, write_part  # noqa: E402
from crawl2clip.transforms.index.search import exact_search, recall_at_k  # noqa: E402
from crawl2clip.transforms.index.store import IndexStore  # noqa: E402

WORK = os.path.join(REPO, "output", "bench-index")
RESULT = os.path.join(REPO, "bench", "results", "index_speed.json")
PARTS = 10
CLUSTERS = 2000
QUERIES = 2000
RECALL_QUERIES = 1000


def synthetic_score_dir(path: str, rows: int, dim: int, seed: int = 0) -> tuple[np.random.Generator, np.ndarray]:
    """Writes (once) `rows` clustered unit vectors as a scoring output; returns the queries' RNG and the centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLUSTERS, dim)).astype(np.float32)
    if len(list_parts(path)) != PARTS:
        shutil.rmtree(path, ignore_errors=True)
        per_part = rows // PARTS
        for number in range(PARTS):
            vectors = _sample(rng, centres, per_part)
            keys = [f"{number:05d}{i:06d}" for i in range(per_part)]
            metadata = pa.table({"key": keys, "punsafe": rng.random(per_part, dtype=np.float32),
                                 "LANGUAGE": rng.choice(["en", "de", "fr", "es"], per_part)})
            write_part(path, number, vectors, vectors, metadata)
    return np.random.default_rng(seed + 1), centres


def _sample(rng: np.random.Generator, centres: np.ndarray, count: int) -> np.ndarray:
    vectors = centres[rng.integers(0, len(centres), count)] + rng.normal(size=(count, centres.shape[1]),
                                                                          scale=0.8).astype(np.float32)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float16)


def build(score_dir: str, index_dir: str) -> dict:
    shutil.rmtree(index_dir, ignore_errors=True)
    command = [sys.executable, "-m", "crawl2clip.pipelines.cli", "index", "--embeddings", score_dir,
               "--output", index_dir, "--no-thumbnails", "--max-memory", "4GB", "--index-shards", "2"]
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB
    return {"command": " ".join(command[1:]), "seconds": round(seconds, 1), "peak_rss_mib": round(peak_kib / 1024)}


def latencies(store: IndexStore, queries: np.ndarray, allowed: np.ndarray | None) -> dict:
    search = store.searches["image"]
    search.search(queries[:20], 10, allowed)  # warm-up
    times = []
    started = time.perf_counter()
    for query in queries:
        begin = time.perf_counter()
        search.search(query[None, :], 10, allowed)
        times.append(time.perf_counter() - begin)
    total = time.perf_counter() - started
    ms = np.array(times) * 1000
    return {"queries": len(queries), "qps": round(len(queries) / total, 1),
            "p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    args = parser.parse_args()
    score_dir = os.path.join(WORK, f"score-{args.rows}x{args.dim}")
    index_dir = os.path.join(WORK, f"index-{args.rows}x{args.dim}")
    result = {"rows": args.rows, "dim": args.dim, "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
              "loadavg_before": [round(x, 2) for x in os.getloadavg()]}
    started = time.perf_counter()
    rng, centres = synthetic_score_dir(score_dir, args.rows, args.dim)
    result["data_seconds"] = round(time.perf_counter() - started, 1)
    result["build"] = build(score_dir, index_dir)
    result["loadavg_after_build"] = [round(x, 2) for x in os.getloadavg()]

    store = IndexStore(index_dir)
    info = store.info
    result["index"] = {"type": info["index_type"], "bytes": info["index_bytes"]["image"],
                       "estimated_bytes": info["memory_bytes_estimate"], "train_rows": info["train_rows"],
                       "train_seconds": info["train_seconds"], "merge_seconds": info["merge_seconds"],
                       "search": info["indexes"]["image"]["search"],
                       "recall_at_10_reported": info["indexes"]["image"]["recall_at_10"]}
    queries = _sample(rng, centres, QUERIES).astype(np.float32)  # fresh points, not rows of the index
    result["query"] = latencies(store, queries, None)
    allowed = allowed_rows(store.metadata, parse_filters(["punsafe<0.1", "LANGUAGE=en"], store.metadata.schema))
    result["query_filtered"] = {"filters": ["punsafe<0.1", "LANGUAGE=en"], "allowed_share": round(float(allowed.mean()), 4),
                                **latencies(store, queries[:500], allowed)}
    vectors = store.searches["image"].vectors
    truth, _ = exact_search(vectors, queries[:RECALL_QUERIES], 10)
    found = store.searches["image"].search(queries[:RECALL_QUERIES], 10)[1]
    result["recall_at_10_fresh_queries"] = round(recall_at_k(found, truth, queries[:RECALL_QUERIES], vectors), 4)
    result["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    os.makedirs(os.path.dirname(RESULT), exist_ok=True)
    with open(RESULT, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
