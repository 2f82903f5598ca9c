"""Image embeddings of a scoring output as numbered rows, read in bounded blocks from memory maps.

Every row of DIR (parts in increasing N, rows in order) gets a global index: the part's offset
plus its row. Pruning works on these indices only, and reads vectors when it needs them: a block
of consecutive rows, or the rows of one cluster gathered part by part. A memory map is opened for
each read and dropped after it, so resident memory stays at what one read holds, whatever the
size of the dataset. Vectors come back as float32, normalised again (the layout stores float16).
A part on a remote filesystem (hdfs://, s3://) is read from a local copy made once per process
(`load_embeddings`, through files.local_copy).
"""

from dataclasses import dataclass

import numpy as np

from crawl2clip.transforms.embeddings import list_parts, load_embeddings
from crawl2clip.transforms.errors import error_record
from crawl2clip.transforms.tables import row_count

STAGE = "prune"
MIN_NORM = 1e-6  # an embedding shorter than this has no direction: it is an error, not a point


@dataclass(frozen=True)
class PartRows:
    number: int
    img_emb: str
    metadata: str
    offset: int  # global index of the part's first row
    rows: int


@dataclass(frozen=True)
class Block:
    part: PartRows
    start: int  # rows [start, stop) of the part
    stop: int


@dataclass(frozen=True)
class Plan:
    """The readable parts of a scoring output and the blocks that cover them."""

    parts: tuple[PartRows, ...]
    dim: int
    errors: tuple[dict, ...]  # parts that cannot be read, as error records

    @property
    def rows(self) -> int:
        return sum(part.rows for part in self.parts)

    def blocks(self, block_rows: int) -> list[Block]:
        return [Block(part, start, min(start + block_rows, part.rows))
                for part in self.parts for start in range(0, part.rows, block_rows)]

    def locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position of the part in `parts`, row in that part) of each global index."""
        offsets = np.array([part.offset for part in self.parts], dtype=np.int64)
        where = np.searchsorted(offsets, indices, side="right") - 1
        return where, indices - offsets[where]


def plan_parts(directory: str) -> Plan:
    """Checks each part's header (shape, rows aligned with its metadata) without reading vectors;
    a part that fails is left out and reported."""
    parts, errors, dims = [], [], set()
    offset = 0
    for part in list_parts(directory):
        try:
            shape = load_embeddings(part.img_emb).shape
            meta_rows = row_count(part.metadata)
        except (OSError, ValueError) as exc:
            errors.append(error_record(STAGE, "unreadable_part", source=part.img_emb, detail=str(exc)))
            continue
        if len(shape) != 2 or shape[0] != meta_rows:
            errors.append(error_record(STAGE, "misaligned_part", source=part.img_emb,
                                       detail=f"embeddings {shape}, metadata {meta_rows} rows"))
            continue
        if dims and shape[1] not in dims:
            errors.append(error_record(STAGE, "dimension_mismatch", source=part.img_emb,
                                       detail=f"dimension {shape[1]}, earlier parts {min(dims)}"))
            continue
        dims.add(shape[1])
        parts.append(PartRows(part.number, part.img_emb, part.metadata, offset, shape[0]))
        offset += shape[0]
    if not parts:
        raise ValueError(f"{directory}: no readable img_emb/metadata parts (not a scoring output?)")
    return Plan(tuple(parts), dims.pop(), tuple(errors))


def normalise(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 unit rows, and a mask of the usable ones (finite, not zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.linalg.norm(vectors, axis=1)
    usable = np.isfinite(norms) & (norms > MIN_NORM)
    out = np.zeros_like(vectors)
    out[usable] = vectors[usable] / norms[usable, None]
    return out, usable


def read_block(block: Block) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(global indices, unit vectors) of a block's usable rows, and an error record per other row."""
    stored = load_embeddings(block.part.img_emb)
    vectors, usable = normalise(stored[block.start:block.stop])
    del stored
    errors = []
    for row in np.flatnonzero(~usable):
        errors.append(error_record(STAGE, "unusable_embedding", source=block.part.img_emb,
                                   offset=block.start + int(row), detail="zero or non-finite vector"))
    indices = np.arange(block.part.offset + block.start, block.part.offset + block.stop, dtype=np.int64)
    return indices[usable], vectors[usable], errors


def gather(plan: Plan, indices: np.ndarray) -> np.ndarray:
    """Unit vectors of the given global indices (of usable rows), in the order given."""
    indices = np.asarray(indices, dtype=np.int64)
    out = np.empty((len(indices), plan.dim), dtype=np.float32)
    order = np.argsort(indices, kind="stable")
    where, rows = plan.locate(indices[order])
    bounds = np.flatnonzero(np.diff(where)) + 1
    for chunk in np.split(np.arange(len(order)), bounds):
        if not len(chunk):
            continue
        stored = load_embeddings(plan.parts[where[chunk[0]]].img_emb)
        out[order[chunk]] = normalise(stored[rows[chunk]])[0]
        del stored
    return out
