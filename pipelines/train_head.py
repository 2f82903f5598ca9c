"""`crawl2clip train-head`: fit a content head (models/heads.py) from labelled embeddings.

Embeddings come from a scoring output (SCORE_DIR: its img_emb or text_emb parts, with labels
joined on a key column, `uid` by default) or from one .npy file (labels in the same row order).
Rows whose label is null are left out and counted. No Beam: a head trains in seconds on one
machine from embeddings that fit in memory.
"""

import argparse
import os
import sys

import numpy as np
import pyarrow.parquet as pq

from crawl2clip.models.heads import roc_auc, save_head, train_head
from crawl2clip.pipelines.index import clip_from_scoring
from crawl2clip.transforms.embeddings import list_parts, load_embeddings, read_metadata

_DESCRIPTION = ("Fit a content head (e.g. punsafe, pwatermark, a text toxicity head) on labelled CLIP "
                "embeddings and save it as .npz for `crawl2clip score --unsafe-head/--watermark-head/"
                "--aesthetic-head/--toxicity-model`.")


def labelled_embeddings(embeddings: str, labels_path: str, label_column: str, input_kind: str,
                        key_column: str) -> tuple[np.ndarray, np.ndarray, int]:
    """(embeddings, 0/1 labels, rows left out for a null or missing label)."""
    labels = pq.read_table(labels_path)
    for column in (label_column,) + ((key_column,) if os.path.isdir(embeddings) else ()):
        if column not in labels.column_names:
            raise ValueError(f"{labels_path}: no column {column!r} (has {', '.join(labels.column_names)})")
    if os.path.isdir(embeddings):
        parts = list_parts(embeddings)
        if not parts:
            raise ValueError(f"{embeddings}: no metadata/metadata_N.parquet (not a scoring output)")
        vectors = np.concatenate([load_embeddings(p.img_emb if input_kind == "image" else p.text_emb) for p in parts])
        keys = read_metadata(embeddings, [key_column])[key_column].to_pylist()
        by_key = dict(zip(labels[key_column].to_pylist(), labels[label_column].to_pylist()))
        values = [by_key.get(key) for key in keys]
    else:
        vectors = np.load(embeddings, mmap_mode="r")
        if len(vectors) != labels.num_rows:
            raise ValueError(f"{embeddings} has {len(vectors)} rows but {labels_path} has {labels.num_rows} labels; "
                             "with a .npy file the labels must be in the same row order")
        values = labels[label_column].to_pylist()
    keep = np.array([v is not None for v in values], dtype=bool)
    y = np.array([int(v) for v in values if v is not None])
    if not np.isin(y, (0, 1)).all():
        raise ValueError(f"{label_column!r}: labels must be 0/1 or booleans")
    return np.asarray(vectors[keep], dtype=np.float32), y, int((~keep).sum())


def _clip_model(embeddings: str, given: str | None) -> str:
    if given:
        return given
    found = clip_from_scoring(embeddings) if os.path.isdir(embeddings) else None
    if not found:
        raise ValueError("name the CLIP the embeddings came from with --clip-model (no SCORE_DIR/scoring.json)")
    return found["model"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="crawl2clip train-head", description=_DESCRIPTION)
    parser.add_argument("--embeddings", required=True, help="a scoring output folder (SCORE_DIR) or a .npy file")
    parser.add_argument("--labels", required=True, help="parquet with the label column (and the key column for SCORE_DIR)")
    parser.add_argument("--label-column", required=True, help="0/1 or boolean column; nulls are left out")
    parser.add_argument("--output", required=True, help="the head file to write (.npz)")
    parser.add_argument("--input", dest="input_kind", choices=("image", "text"), default="image",
                        help="train on image embeddings (punsafe, pwatermark) or caption embeddings (toxicity)")
    parser.add_argument("--key-column", default="uid", help="column joining labels to SCORE_DIR rows (default: uid)")
    parser.add_argument("--name", help="the head's name (default: the label column)")
    parser.add_argument("--clip-model", help="the CLIP the embeddings came from (default: SCORE_DIR/scoring.json)")
    parser.add_argument("--hidden", type=int, default=32, help="hidden units; 0 for logistic regression")
    parser.add_argument("--steps", type=int, default=1500, help="Adam steps on batches of 512")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--holdout", type=float, default=0.2, help="fraction kept out to report AUC (0: none)")
    args = parser.parse_args(argv)
    try:
        x, y, unlabelled = labelled_embeddings(args.embeddings, args.labels, args.label_column, args.input_kind,
                                               args.key_column)
        clip_model = _clip_model(args.embeddings, args.clip_model)
        order = np.random.default_rng(args.seed).permutation(len(y))
        held = order[:int(len(y) * args.holdout)]
        train = order[len(held):]
        head = train_head(x[train], y[train], name=args.name or args.label_column, clip_model=clip_model,
                          input_kind=args.input_kind, hidden=args.hidden, steps=args.steps, seed=args.seed)
    except (ValueError, FileNotFoundError) as exc:
        print(f"crawl2clip train-head: {exc}", file=sys.stderr)
        return 2
    evaluation = {"train_rows": len(train), "unlabelled_rows": unlabelled}
    if len(held) and 0 < y[held].sum() < len(held):
        evaluation |= {"held_out_rows": len(held), "held_out_auc": round(roc_auc(y[held], head.predict(x[held])), 4)}
    head.metadata["evaluation"] = evaluation
    save_head(head, args.output)
    print(f"Head {head.name!r} ({args.input_kind} embeddings of {clip_model}, {head.embed_dim}-d): {evaluation}")
    print(f"Written: {args.output}")
    return 0
