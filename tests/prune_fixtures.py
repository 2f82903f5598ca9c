"""A scoring output with planted structure for the prune tests: tight and diffuse concept
clusters, near-duplicate pairs, parts with gaps in their numbers, the download shards its
metadata points at, and bad input (a zero vector, a part whose embeddings and metadata disagree).
Written through transforms/files.py, so the same rows land in a local folder or on HDFS."""

import io
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from crawl2clip.transforms import files
from crawl2clip.transforms.download.shards import PARQUET, TAR, shard_file
from crawl2clip.transforms.embeddings import part_paths, write_part
from crawl2clip.transforms.prune.settings import PruneSettings

DIM = 64
PER_CLUSTER = 150
SPREADS = (0.1, 0.3, 0.1, 0.3, 0.1, 0.3, 0.1, 0.3)  # tight and diffuse concepts
PAIRS = 20
PART_ROWS = 300
SETTINGS = PruneSettings(keep_fraction=0.4, clusters=len(SPREADS), dedup_cluster_size=200, seed=11)
ARGS = ["--keep-fraction", "0.4", "--prune-clusters", str(len(SPREADS)), "--dedup-cluster-size", "200",
        "--prune-seed", "11"]
BAD_PART = 99  # embeddings of 4 rows, metadata of 3: left out of the prune and reported


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def write_dataset(score: str, download: str) -> dict:
    """Writes the scoring output (parts 0, 2, 4, ...) into `score` and its download shards into
    `download`; returns what the tests check against. The same bytes on every call."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((len(SPREADS), DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    vectors = np.concatenate([centres[j] + s * rng.standard_normal((PER_CLUSTER, DIM)) for j, s in enumerate(SPREADS)])
    labels = np.repeat(np.arange(len(SPREADS)), PER_CLUSTER)
    sources = rng.choice(len(vectors), PAIRS, replace=False)
    vectors = np.concatenate([vectors, vectors[sources] + 0.01 * rng.standard_normal((PAIRS, DIM))])
    labels = np.concatenate([labels, labels[sources]])
    pair_rows = [(int(s), len(vectors) - PAIRS + i) for i, s in enumerate(sources)]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    order = rng.permutation(len(vectors))
    position = np.argsort(order)
    vectors, labels = vectors[order], labels[order]
    uids = [f"{i:032x}" for i in range(len(vectors))]
    pairs = [(uids[position[a]], uids[position[b]]) for a, b in pair_rows]
    vectors[5] = 0.0  # an embedding with no direction: an error, never a point
    keys = []
    for p, start in enumerate(range(0, len(vectors), PART_ROWS)):
        rows = slice(start, start + PART_ROWS)
        n = len(vectors[rows])
        part_keys = [f"{p:05d}{i:04d}" for i in range(n)]
        keys += part_keys
        shard = shard_file(download, p, TAR)
        files.write_atomic(shard, _tar_bytes({name: data for k in part_keys for name, data in
                                              ((f"{k}.jpg", rng.bytes(64)), (f"{k}.txt", k.encode()),
                                               (f"{k}.json", b"{}"))}))
        files.write_atomic(shard_file(download, p, PARQUET),
                           _parquet_bytes(pa.table({"key": part_keys, "status": ["success"] * n})))
        meta = pa.table({"uid": uids[rows], "key": part_keys, "shard": [shard] * n,
                         "hash": pa.array(np.arange(start, start + n), pa.int64()), "label": labels[rows]})
        write_part(score, 2 * p, vectors[rows], vectors[rows], meta)
    write_part(score, BAD_PART, vectors[:3], vectors[:3], pa.table({"uid": ["x", "y", "z"]}))
    files.write_atomic(part_paths(score, BAD_PART).img_emb, lambda f: np.save(f, vectors[:4].astype(np.float16)))
    return {"score": score, "download": download, "pairs": pairs, "uids": uids, "labels": labels,
            "keys": keys, "bad_uid": uids[5]}
