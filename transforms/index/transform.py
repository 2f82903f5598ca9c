"""The index stage in Beam: the driver trains, workers add shards of parts in parallel, one
worker merges them and finishes INDEX_DIR.

    prepare_index (driver: plan parts, choose the index, train it on a sample)
    shards -> Reshuffle -> BuildShard (add vectors, make thumbnails) -> ToList -> MergeShards
    (merge indexes, copy metadata and vectors, pack thumbnails, tune search, measure recall,
    write index_info.json)

Workers read SCORE_DIR and write INDEX_DIR through transforms/files.py, so both may be on any
Beam filesystem every worker reaches (local for DirectRunner, HDFS or an object store on a
cluster): the driver's trained indexes and the shards' files go to INDEX_DIR/building/, and
the merge removes it before writing index_info.json.
"""

import os
import time
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import pyarrow as pa

from crawl2clip.transforms import files
from crawl2clip.transforms.errors import ERRORS, count_error, counter, error_record
from crawl2clip.transforms.index.build import (
    RECALL_QUERIES,
    PartPlan,
    RowReader,
    add_parts,
    merge_indexes,
    pack_thumbnails,
    plan_parts,
    read_parquet,
    sample_ids,
    split_shards,
    train_index,
    tune_search,
    write_metadata,
    write_vectors,
)
from crawl2clip.transforms.index.choice import EXACT_MAX_ROWS, IndexChoice, choose_index
from crawl2clip.transforms.index.search import VectorSearch
from crawl2clip.transforms.index.store import (
    METADATA,
    MODALITIES,
    THUMBNAIL_OFFSETS,
    THUMBNAILS,
    WORK,
    forget_info,
    index_path,
    read_index,
    vectors_path,
    write_index,
    write_info,
    write_npy,
)
from crawl2clip.transforms.index.thumbnails import THUMBNAIL_SIZE, thumbnails_for

STAGE = "index"


@dataclass
class IndexPlan:
    """What the driver decided and trained; everything the workers need, picklable."""
    score_dir: str
    index_dir: str
    modalities: list[str]
    parts: list[PartPlan]
    shards: list[list[PartPlan]]
    choice: IndexChoice
    trained: dict[str, str]  # modality -> trained empty index file
    tune_ids: np.ndarray
    test_ids: np.ndarray
    target_recall: float
    thumbnails: bool
    clip: dict | None
    problems: list[dict] = field(default_factory=list)  # error records of parts left out
    train_seconds: float = 0.0


def prepare_index(score_dir: str, index_dir: str, modalities: list[str], max_memory: int, shards: int,
                  target_recall: float, thumbnails: bool, clip: dict | None,
                  exact_max_rows: int = EXACT_MAX_ROWS, seed: int = 0) -> IndexPlan:
    """Plans the parts, chooses the index type for their size and the budget, and trains one
    empty index per modality on a random sample (written under INDEX_DIR/building/). An earlier
    build's index_info.json goes first: the folder is unfinished until the merge writes it."""
    started = time.time()
    parts, dim, problems = plan_parts(score_dir, [MODALITIES[m] for m in modalities])
    records = [error_record(STAGE, reason, source=f"{score_dir} part {number}", detail=detail)
               for number, reason, detail in problems]
    rows = sum(p.rows for p in parts)
    if not rows:
        raise ValueError(f"{score_dir}: no usable embeddings" + (f" ({problems[0][2]})" if problems else ""))
    choice = choose_index(rows, dim, max_memory, exact_max_rows)
    train, held_out = sample_ids(rows, choice.train_rows, 2 * RECALL_QUERIES, seed)
    forget_info(index_dir)
    work = files.join(index_dir, WORK)
    files.delete(work)  # an unfinished build's shards
    trained = {}
    for modality in modalities:
        index = train_index(choice, RowReader(parts, MODALITIES[modality]).take(train) if len(train) else None)
        trained[modality] = files.join(work, f"trained.{modality}.index")
        write_index(index, trained[modality])
    return IndexPlan(score_dir, index_dir, modalities, parts, split_shards(parts, shards), choice, trained,
                     held_out[0::2], held_out[1::2], target_recall, thumbnails, clip, records,
                     round(time.time() - started, 3))


class _BuildShard(beam.DoFn):
    """Adds one shard's vectors to copies of the trained indexes and makes its thumbnails."""

    def __init__(self, plan: IndexPlan):
        self.plan = plan

    def process(self, element):
        number, parts = element
        work = files.join(self.plan.index_dir, WORK)
        built = {"shard": number, "rows": sum(p.rows for p in parts), "indexes": {}}
        for modality in self.plan.modalities:
            index = read_index(self.plan.trained[modality])
            add_parts(index, parts, MODALITIES[modality])
            built["indexes"][modality] = files.join(work, f"shard_{number:05d}.{modality}.index")
            write_index(index, built["indexes"][modality])
        counter(STAGE, "rows_added").inc(built["rows"])
        if self.plan.thumbnails:
            built["thumbnails"] = (files.join(work, f"shard_{number:05d}.thumbnails"),
                                   files.join(work, f"shard_{number:05d}.lengths.npy"))
            yield from self._thumbnails(parts, *built["thumbnails"])
        yield built

    def _thumbnails(self, parts: list[PartPlan], data_path: str, lengths_path: str):
        lengths = []
        with files.PendingFile(data_path) as pending:
            out = pending.file
            for part in parts:
                table = read_parquet(part.metadata)
                thumbs, problems = thumbnails_for(list(zip(_column(table, "shard"), _column(table, "key"))))
                urls = _column(table, "URL")
                for row, reason, detail in problems:
                    yield beam.pvalue.TaggedOutput(ERRORS, count_error(error_record(
                        STAGE, reason, source=part.metadata, offset=row, url=urls[row] or "", detail=detail)))
                for thumb in thumbs:
                    out.write(thumb or b"")
                    lengths.append(len(thumb or b""))
                present = sum(t is not None for t in thumbs)
                counter(STAGE, "thumbnails").inc(present)
                counter(STAGE, "without_thumbnail").inc(len(thumbs) - present)
        write_npy(lengths_path, np.array(lengths, dtype=np.int64))


def _column(table: pa.Table, name: str) -> list:
    """A metadata column as a list, or nulls when the scoring output has no such column."""
    return table[name].to_pylist() if name in table.column_names else [None] * table.num_rows


class _MergeShards(beam.DoFn):
    """Finishes INDEX_DIR from every shard: index_info.json is written last."""

    def __init__(self, plan: IndexPlan):
        self.plan = plan

    def process(self, shards: list[dict]):
        plan, out = self.plan, self.plan.index_dir
        started = time.time()
        shards = sorted(shards, key=lambda s: s["shard"])
        if len(shards) != len(plan.shards):
            raise RuntimeError(f"{len(shards)} of {len(plan.shards)} index shards were built")
        rows = write_metadata(plan.parts, files.join(out, METADATA))
        indexes, index_bytes = {}, {}
        for modality in plan.modalities:
            merged = merge_indexes([s["indexes"][modality] for s in shards])
            index_bytes[modality] = write_index(merged, index_path(out, modality))
            write_vectors(plan.parts, MODALITIES[modality], plan.choice.dim, vectors_path(out, modality))
            vectors = RowReader(plan.parts, MODALITIES[modality])  # the rows just written, from the parts
            search = VectorSearch(merged, vectors)
            params, recall = tune_search(search, vectors[plan.tune_ids], vectors[plan.test_ids], plan.target_recall)
            indexes[modality] = {"file": files.split(index_path(out, modality))[1],
                                 "vectors": files.split(vectors_path(out, modality))[1],
                                 "search": params.as_dict(), **recall}
            counter(STAGE, f"recall_at_10_permille_{modality}").inc(int(recall["recall_at_10"] * 1000))
        with_thumbnails = 0
        if plan.thumbnails:
            with_thumbnails = pack_thumbnails([s["thumbnails"] for s in shards], files.join(out, THUMBNAILS),
                                              files.join(out, THUMBNAIL_OFFSETS))
        files.delete(files.join(out, WORK))
        info = {
            "format": 1,
            "source": os.path.abspath(plan.score_dir) if files.is_local(plan.score_dir) else plan.score_dir,
            "rows": rows,
            "dim": plan.choice.dim,
            "index_type": plan.choice.factory,
            "exact": plan.choice.exact,
            "memory_bytes_estimate": plan.choice.memory_bytes,
            "index_bytes": index_bytes,
            "train_rows": plan.choice.train_rows,
            "train_seconds": plan.train_seconds,
            "merge_seconds": round(time.time() - started, 3),
            "shards": len(shards),
            "parts": [p.number for p in plan.parts],
            "thumbnails": with_thumbnails,
            "thumbnail_size": THUMBNAIL_SIZE,
            "clip": plan.clip,
            "indexes": indexes,
        }
        write_info(out, info)
        yield info


class BuildIndex(beam.PTransform):
    """The index stage: shards built in parallel, merged into INDEX_DIR. Returns
    {"info": the index_info dict, "errors": error records}."""

    def __init__(self, plan: IndexPlan):
        super().__init__()
        self.plan = plan

    def expand(self, pbegin):
        plan = self.plan
        built = (pbegin
                 | "Shards" >> beam.Create(list(enumerate(plan.shards)))
                 | "Spread" >> beam.Reshuffle()
                 | "BuildShard" >> beam.ParDo(_BuildShard(plan)).with_outputs(ERRORS, main="shards"))
        info = (built.shards
                | "AllShards" >> beam.combiners.ToList()
                | "MergeShards" >> beam.ParDo(_MergeShards(plan)))
        left_out = (pbegin
                    | "PartsLeftOut" >> beam.Create(plan.problems)
                    | "CountLeftOut" >> beam.Map(count_error))
        errors = (built[ERRORS], left_out) | "Errors" >> beam.Flatten()
        return {"info": info, "errors": errors}
