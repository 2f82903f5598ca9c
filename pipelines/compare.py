"""`crawl2clip compare`: does filtering and pruning help? The same model, trained with the same
compute on variants of one finished run, evaluated on the same held-out data.

    crawl2clip compare --run DIR --variants raw,clip,clip+safe,dbp:0.5 --output OUT
        [--steps N | --samples-seen N] [--batch-size B] [--epochs E] [--seed S] [--model NAME]
        [--zero-shot-dir DIR] [--held-out-fraction F] ...

OUT/
    compare.json            the settings the folder is bound to (a rerun with others is refused)
    held-out/               the held-out pairs (rows.parquet, NNNNN.tar), taken out before any variant
    variants/VARIANT/       its training shards (NNNNN.tar), rows.parquet, variant.json
    prune/VARIANT/          the prune of dbp:F when the run has none with that keep fraction
    train/VARIANT/          open_clip_train's folder: params.txt, out.log, checkpoints/, console.log
    eval/VARIANT.json       the checkpoint's evaluation
    comparison.{json,parquet,html}, comparison-plots/*.png, errors/errors.parquet

Every step of every variant is skipped when its output exists, so a rerun resumes; a variant whose
training did not finish is trained again from the start. Files are committed whole through
transforms/files.py; RUN and OUT are local folders all the same: open_clip_train reads its
shards from local paths and writes its logs and checkpoints beside them.
"""

import argparse
import json
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from crawl2clip.pipelines.cli import output_problem
from crawl2clip.pipelines.report import UNSAFE_THRESHOLD, WATERMARK_THRESHOLD
from crawl2clip.transforms.compare import variants as sel
from crawl2clip.transforms.compare.evaluate import (
    ClassFolders,
    evaluate,
    load_zero_shot,
    read_class_folders,
    read_held_out,
)
from crawl2clip.transforms.compare.pairs import STAGE, read_downloaded, split_held_out
from crawl2clip.transforms.compare.shards import ROWS, TRAIN_SHARD, brace_pattern, write_shards
from crawl2clip.transforms.compare.train import TrainSettings, checkpoint_path, precision, read_training, train
from crawl2clip.transforms.compare.variants import Variant, parse_variants
from crawl2clip.transforms import files
from crawl2clip.transforms.download.shards import finished_shards
from crawl2clip.transforms.prune.outputs import KEPT, SUMMARY, output_path, read_summary
from crawl2clip.transforms.prune.settings import PruneSettings
from crawl2clip.transforms.schema import ERROR_SCHEMA, UID
from crawl2clip.transforms.score.settings import SCORING_JSON

SETTINGS = "compare.json"
COMPARISON = "comparison"
DONE = "_SUCCESS"
ERRORS_FILE = "errors.parquet"
DEFAULT_VARIANTS = "raw,clip,clip+safe,dbp"
LAION_CUTOFFS = {"punsafe": UNSAFE_THRESHOLD, "pwatermark": WATERMARK_THRESHOLD}
RECALL_KS = (1, 5, 10)


@dataclass(frozen=True)
class Plan:
    """A checked comparison: what to build, train and evaluate, and where."""
    run_dir: str
    output: str
    variants: list[Variant]
    training: TrainSettings
    held_out_fraction: float
    held_out_seed: int
    held_out_max_images: int
    zero_shot: ClassFolders | None
    prunes: dict[str, str]  # dbp variant name -> its kept.parquet (the run's, or one to compute)

    def record(self) -> dict:
        return {"run": os.path.abspath(self.run_dir), "training": self.training.record(),
                "held_out": {"fraction": self.held_out_fraction, "seed": self.held_out_seed,
                             "max_images": self.held_out_max_images, "by": "image sha256"},
                "zero_shot_dir": os.path.abspath(self.zero_shot.root) if self.zero_shot else None}


def _parser() -> argparse.ArgumentParser:
    defaults = TrainSettings()
    parser = argparse.ArgumentParser(
        prog="crawl2clip compare",
        description="Train the same CLIP with the same compute (open_clip's trainer) on variants of one finished "
                    "run and evaluate each on the same held-out pairs (retrieval) and a zero-shot dataset.")
    parser.add_argument("--run", help="a finished crawl2clip run (download/, score/, prune/)")
    parser.add_argument("--output", help="the comparison folder")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS,
                        help="comma-separated: raw, clip, clip+safe, dbp (the run's prune) or dbp:F (keep fraction F) "
                             "(default: %(default)s)")
    compute = parser.add_mutually_exclusive_group()
    compute.add_argument("--steps", type=int, help=f"optimizer steps of every variant (default {defaults.steps})")
    compute.add_argument("--samples-seen", type=int, help="samples every variant trains on: steps x batch size")
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--epochs", type=int, default=defaults.epochs,
                        help="the steps split into this many trainer epochs (a checkpoint each)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="initial weights and data order")
    parser.add_argument("--model", default=defaults.model,
                        help="an open_clip model name or config file, trained from scratch (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--warmup", type=int, help="warm-up steps (default: a tenth of the steps)")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="the trainer's data-loading processes")
    parser.add_argument("--device", default=defaults.device, help="auto (a GPU when present), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=defaults.threads,
                        help="CPU threads for training and evaluation (default: %(default)s)")
    parser.add_argument("--held-out-fraction", type=float, default=0.1, help="share of images held out (default: 0.1)")
    parser.add_argument("--held-out-seed", type=int, default=0)
    parser.add_argument("--held-out-max-images", type=int, default=5000,
                        help="at most this many held-out images (default: %(default)s, as COCO's test set)")
    parser.add_argument("--zero-shot-dir", help="a folder of class folders of images (templates.txt: its prompts)")
    parser.add_argument("--demo", action="store_true",
                        help="build a bigger, noisier sample crawl, run the pipeline on it and compare its variants")
    return parser


def _training(args) -> TrainSettings:
    steps = TrainSettings.steps if args.steps is None else args.steps
    if args.samples_seen is not None:
        steps = args.samples_seen // args.batch_size if args.batch_size > 0 else 0
    return TrainSettings(model=args.model, steps=steps, batch_size=args.batch_size, epochs=args.epochs,
                         seed=args.seed, lr=args.lr, warmup=args.warmup, workers=args.workers, device=args.device,
                         threads=args.threads)


def _device_problem(device: str) -> str | None:
    import torch

    if device == "auto" or device == "cpu":
        return None
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        return None if torch.cuda.is_available() else f"--device {device}: no GPU here"
    return f"--device {device}: choose auto, cpu, cuda or cuda:N"


def _run_prune(run_dir: str) -> dict | None:
    """The prune summary of the run's `--prune` (None when the run has no finished prune)."""
    prune_dir = os.path.join(run_dir, "prune")
    if not all(files.exists(output_path(prune_dir, name)) for name in (KEPT, SUMMARY)):
        return None
    return read_summary(prune_dir)


def plan(args) -> tuple[Plan | None, list[str]]:
    """The comparison the flags ask for, or the problems that stop it before any work."""
    problems = []
    if not args.run or not args.output:
        return None, ["give --run DIR and --output DIR (or --demo)"]
    try:
        variants = parse_variants(args.variants)
    except ValueError as exc:
        return None, [str(exc)]
    training = _training(args)
    problems += training.problems()
    if args.samples_seen is not None and args.batch_size > 0 and args.samples_seen % args.batch_size:
        problems.append(f"--samples-seen {args.samples_seen} is not a multiple of --batch-size {args.batch_size}")
    if problem := _device_problem(args.device):
        problems.append(problem)
    if not 0.0 < args.held_out_fraction < 1.0:
        problems.append("--held-out-fraction must be in (0, 1)")
    if args.held_out_max_images < 1:
        problems.append("--held-out-max-images must be >= 1")
    download_dir, score_dir = os.path.join(args.run, "download"), os.path.join(args.run, "score")
    if not os.path.isdir(download_dir) or not finished_shards(download_dir):
        problems.append(f"--run {args.run}: no finished download shards in {download_dir}")
    needs_score = [v.name for v in variants if v.kind != sel.RAW]
    if needs_score and not os.path.exists(os.path.join(score_dir, SCORING_JSON)):
        problems.append(f"--run {args.run}: {', '.join(needs_score)} need the score stage's output ({score_dir})")
    elif needs_score and sel.read_scoring(score_dir).get("thresholds", {}).get("score_only"):
        problems.append(f"--run {args.run} was scored with --score-only: no pair was CLIP-filtered "
                        f"({', '.join(needs_score)} would be raw)")
    run_prune = _run_prune(args.run)
    prunes = {}
    for variant in (v for v in variants if v.kind == sel.DBP):
        run_fraction = run_prune["settings"]["keep_fraction"] if run_prune else None
        if variant.keep_fraction is None and run_prune is None:
            problems.append("--variants dbp: the run has no prune (prune/kept.parquet); name a keep fraction: dbp:0.5")
        elif variant.keep_fraction is None or variant.keep_fraction == run_fraction:
            prunes[variant.name] = os.path.join(args.run, "prune", "kept.parquet")
        else:
            prunes[variant.name] = os.path.join(args.output, "prune", variant.slug, "kept.parquet")
    zero_shot = None
    if args.zero_shot_dir:
        try:
            zero_shot = read_class_folders(args.zero_shot_dir)
        except ValueError as exc:
            problems.append(str(exc))
    if not problems and (problem := output_problem(args.output)):
        problems.append(problem)
    result = Plan(args.run, args.output, variants, training, args.held_out_fraction, args.held_out_seed,
                  args.held_out_max_images, zero_shot, prunes)
    settings_path = os.path.join(args.output, SETTINGS)
    if not problems and os.path.exists(settings_path):
        earlier = files.read_marker(settings_path)
        if earlier != result.record():
            changed = sorted(k for k in result.record() if earlier.get(k) != result.record()[k])
            problems.append(f"--output {args.output} holds a comparison with other settings ({', '.join(changed)}); "
                            f"use another folder")
    return (None if problems else result), problems


def _say(text: str) -> None:
    print(text, flush=True)


def _write_errors(path: str, records: list[dict]) -> None:
    table = pa.Table.from_pylist(records, schema=ERROR_SCHEMA)
    files.write_atomic(path, lambda f: pq.write_table(table, f))


def _write_json(path: str, value: dict) -> None:
    files.write_atomic(path, json.dumps(value, indent=2).encode())


def _held_out(p: Plan) -> tuple[pa.Table, dict]:
    """The training pool (downloaded pairs minus the held-out ones); the held-out shards are
    written once, before any variant."""
    held_dir = os.path.join(p.output, "held-out")
    pairs, errors = read_downloaded(os.path.join(p.run_dir, "download"))
    if not os.path.exists(os.path.join(held_dir, DONE)):
        shutil.rmtree(held_dir, ignore_errors=True)
        _, held = split_held_out(pairs, p.held_out_seed, p.held_out_fraction, p.held_out_max_images)
        written, shard_errors = write_shards(held, held_dir)
        _write_errors(os.path.join(held_dir, ERRORS_FILE), errors + shard_errors)
        _write_json(os.path.join(held_dir, DONE), {"pairs": written.num_rows, "downloaded": pairs.num_rows})
    held_uids = pq.read_table(os.path.join(held_dir, ROWS), columns=[UID])[UID]
    pool = pairs.filter(pc.invert(pc.is_in(pairs[UID], value_set=held_uids)))
    return pool, files.read_marker(os.path.join(held_dir, DONE))


def _selection(p: Plan, variant: Variant) -> tuple[set[str] | None, dict, list[dict]]:
    """The uids a variant selects (None: every downloaded pair), what it is, error records."""
    score_dir = os.path.join(p.run_dir, "score")
    if variant.kind == sel.RAW:
        return None, {"selects": "every downloaded pair"}, []
    if variant.kind == sel.CLIP:
        return set(sel.clip_kept(score_dir)[UID].to_pylist()), {"selects": "the pairs the run's CLIP kept"}, []
    if variant.kind == sel.CLIP_SAFE:
        limits, notes = sel.safe_limits(sel.read_scoring(score_dir), LAION_CUTOFFS)
        kept = sel.under_limits(sel.clip_kept(score_dir), limits)
        return set(kept[UID].to_pylist()), {"selects": "the CLIP-kept pairs under the tag limits", "tags": notes}, []
    kept_path = p.prunes[variant.name]
    info = {"selects": "the prune's kept rows (SemDeDup + DBP of the CLIP-kept pairs)", "kept": kept_path}
    if os.path.dirname(kept_path) == os.path.join(p.run_dir, "prune"):
        info["prune"] = _run_prune(p.run_dir)["settings"]
    else:
        info["prune"] = _prune(p, variant, score_dir)
    uids, errors = sel.kept_by_prune(kept_path, score_dir)
    return uids, info, errors


def _prune(p: Plan, variant: Variant, score_dir: str) -> dict:
    """Prunes the run's scoring output at the variant's keep fraction (the run's other prune
    settings when it has a prune) into OUT/prune/VARIANT/, once."""
    from crawl2clip.transforms.prune.single_machine import prune_single_machine

    prune_dir = os.path.join(p.output, "prune", variant.slug)
    run_prune = _run_prune(p.run_dir)
    settings = replace(PruneSettings(**run_prune["settings"]) if run_prune else PruneSettings(),
                       keep_fraction=variant.keep_fraction)
    if not os.path.exists(os.path.join(prune_dir, DONE)):
        _say(f"  {variant.name}: pruning the run's scoring output (keep fraction {variant.keep_fraction:g})")
        shutil.rmtree(prune_dir, ignore_errors=True)
        prune_single_machine(score_dir, prune_dir, settings)
        _write_json(os.path.join(prune_dir, DONE), asdict(settings))
    return asdict(settings)


def _build(p: Plan, variant: Variant, pool: pa.Table) -> dict:
    """The variant's training shards, once: its selection within the training pool."""
    out = os.path.join(p.output, "variants", variant.slug)
    summary_path = os.path.join(out, "variant.json")
    if os.path.exists(summary_path):
        return files.read_marker(summary_path)
    shutil.rmtree(out, ignore_errors=True)
    uids, info, errors = _selection(p, variant)
    rows = pool if uids is None else pool.filter(pc.is_in(pool[UID], value_set=pa.array(sorted(uids), pa.string())))
    written, shard_errors = write_shards(rows, out)
    shards = sorted(set(written[TRAIN_SHARD].to_pylist()))
    per_shard = [written.filter(pc.equal(written[TRAIN_SHARD], path)).num_rows for path in shards]
    summary = {"variant": variant.name, **info, "rows": written.num_rows, "shards": len(shards),
               "rows_per_shard": per_shard, "train_data": brace_pattern(out, len(shards)) if shards else None}
    _write_errors(os.path.join(out, ERRORS_FILE), errors + shard_errors)
    _write_json(summary_path, summary)
    return summary


def _too_small(built: dict, training: TrainSettings) -> str | None:
    """Why the trainer cannot draw a full batch from every loader worker's shards, if it cannot."""
    workers = max(1, training.workers)
    per_shard = built["rows_per_shard"]
    if not per_shard:
        return "no training pairs"
    if len(per_shard) < workers:
        return f"{len(per_shard)} shards for {workers} loader workers"
    smallest = min(sum(per_shard[w::workers]) for w in range(workers))
    if smallest < training.batch_size:
        return f"{built['rows']} rows: a loader worker gets {smallest}, under one batch of {training.batch_size}"
    return None


class _StepPrinter:
    """Prints a variant's training progress about every tenth of its steps."""

    def __init__(self, prefix: str, steps: int):
        self.prefix, self.steps, self.started, self.shown = prefix, steps, time.time(), 0

    def __call__(self, training: dict) -> None:
        step = training["steps"]
        if step >= self.shown + max(1, self.steps // 10) or (step == self.steps and step > self.shown):
            self.shown = step
            loss = training["final_loss"]
            _say(f"{self.prefix}: step {step}/{self.steps}, loss {loss:.3f}, {time.time() - self.started:.0f} s")


def _train(p: Plan, variant: Variant, built: dict, prefix: str) -> tuple[str, str | None]:
    """Trains the variant unless its final checkpoint exists; (status, note)."""
    logs = os.path.join(p.output, "train")
    log_dir = os.path.join(logs, variant.slug)
    if os.path.exists(checkpoint_path(log_dir, p.training)):
        return "trained", None
    shutil.rmtree(log_dir, ignore_errors=True)  # an unfinished training starts again
    evaluation = os.path.join(p.output, "eval", f"{variant.slug}.json")
    if os.path.exists(evaluation):
        os.remove(evaluation)  # of a checkpoint that is gone
    from crawl2clip.models.clip import resolve_device

    device = resolve_device(p.training.device)
    _say(f"{prefix}: training {p.training.steps} steps x {p.training.batch_size} on {device} "
         f"({precision(device)}), {built['rows']:,} pairs")
    started = time.time()
    code = train(p.training, built["train_data"], logs, variant.slug, _StepPrinter(prefix, p.training.steps))
    if code != 0 or not os.path.exists(checkpoint_path(log_dir, p.training)):
        return "failed", f"the trainer exited with {code}; see {os.path.join(log_dir, 'console.log')}"
    _write_json(os.path.join(log_dir, "seconds.json"), {"seconds": round(time.time() - started, 1)})
    return "trained", None


def _evaluate(p: Plan, variant: Variant, held_out, zero_shot) -> dict:
    from crawl2clip.models.clip import ClipSpec, load_clip, register_project_models

    path = os.path.join(p.output, "eval", f"{variant.slug}.json")
    if os.path.exists(path):
        return files.read_marker(path)
    if p.training.model.endswith(".json"):
        import open_clip

        register_project_models()
        open_clip.add_model_config(p.training.model)
    log_dir = os.path.join(p.output, "train", variant.slug)
    model = load_clip(ClipSpec(p.training.model_name, checkpoint_path(log_dir, p.training), device=p.training.device))
    _write_json(path, evaluate(model, held_out, zero_shot))
    return files.read_marker(path)  # as every later run reads it (JSON: recall@k keyed by "k")


def _row(variant: Variant, built: dict, status: str, note: str | None, p: Plan, evaluation: dict | None) -> dict:
    """One variant's line of the comparison, from its files: the trainer's logs, the evaluation."""
    log_dir = os.path.join(p.output, "train", variant.slug)
    logged = read_training(log_dir) if status == "trained" else {"params": {}}
    params = logged["params"]
    seconds_path = os.path.join(log_dir, "seconds.json")
    row = {"variant": variant.name, "status": status, "rows": built["rows"], "shards": built["shards"],
           "steps": logged.get("steps"), "samples_seen": logged.get("samples_seen"),
           "batch_size": int(params["batch_size"]) if "batch_size" in params else None,
           "epochs": int(params["epochs"]) if "epochs" in params else None,
           "seed": int(params["seed"]) if "seed" in params else None,
           "model": params.get("model"), "device": params.get("device"), "precision": params.get("precision"),
           "train_seconds": files.read_marker(seconds_path)["seconds"] if os.path.exists(seconds_path) else None,
           "final_loss": logged.get("final_loss")}
    retrieval = (evaluation or {}).get("retrieval", {})
    for direction in ("image_to_text", "text_to_image"):
        for k in RECALL_KS:
            row[f"{direction}_recall@{k}"] = retrieval.get(direction, {}).get(str(k))
    zero_shot = (evaluation or {}).get("zero_shot", {})
    for name in ("top1", "top5", "mean_per_class_recall"):
        row[f"zero_shot_{name}"] = zero_shot.get(name)
    row["note"] = note
    return row


def _gather_errors(p: Plan, extra: list[dict]) -> dict[str, int]:
    """The error records of the held-out set, of the compared variants' shards and of this run,
    in OUT/errors/; their counts by reason."""
    records = list(extra)
    folders = [os.path.join(p.output, "held-out")] + [os.path.join(p.output, "variants", v.slug) for v in p.variants]
    for folder in folders:
        path = os.path.join(folder, ERRORS_FILE)
        if os.path.exists(path):
            records += pq.read_table(path).to_pylist()
    _write_errors(os.path.join(p.output, "errors", ERRORS_FILE), records)
    return dict(sorted(Counter(f"{r['stage']}:{r['reason']}" for r in records).items()))


def write_comparison(output: str, summary: dict, rows: list[dict]) -> None:
    """comparison.json (settings, held-out set, notes, errors and the rows) and comparison.parquet
    (the rows), each committed whole."""
    _write_json(os.path.join(output, f"{COMPARISON}.json"), {**summary, "variants": rows})
    table = pa.Table.from_pylist(rows)
    files.write_atomic(os.path.join(output, f"{COMPARISON}.parquet"), lambda f: pq.write_table(table, f))


def run_comparison(p: Plan) -> int:
    """Builds, trains and evaluates every variant (skipping finished steps), then writes the
    comparison; 0 when every variant was trained and evaluated, 1 otherwise."""
    import torch

    torch.set_num_threads(p.training.threads)  # evaluation, in this process
    _write_json(os.path.join(p.output, SETTINGS), p.record())
    pool, held_summary = _held_out(p)
    held_out = read_held_out(os.path.join(p.output, "held-out"))
    _say(f"Held out: {held_summary['pairs']:,} of {held_summary['downloaded']:,} downloaded pairs "
         f"({len(held_out.images):,} images); {pool.num_rows:,} pairs left to train on")
    zero_shot = load_zero_shot(p.zero_shot) if p.zero_shot else None
    run_errors = held_out.errors + (zero_shot.errors if zero_shot else [])
    rows, notes = [], []
    for number, variant in enumerate(p.variants, 1):
        prefix = f"[{number}/{len(p.variants)}] {variant.name}"
        built = _build(p, variant, pool)
        _say(f"{prefix}: {built['rows']:,} training pairs in {built['shards']} shards")
        for column, text in built.get("tags", {}).items():
            notes.append(f"{variant.name}: {column} {text}")
        evaluation = None
        if reason := _too_small(built, p.training):
            status, note = "too_small", f"not trained: {reason}"
            run_errors.append({"stage": STAGE, "reason": "variant_too_small", "source": variant.name,
                               "offset": -1, "url": "", "detail": reason})
        else:
            finished = os.path.exists(os.path.join(p.output, "eval", f"{variant.slug}.json"))
            status, note = _train(p, variant, built, prefix)
            if status == "trained":
                evaluation = _evaluate(p, variant, held_out, zero_shot)
                _say(f"{prefix}: {'finished earlier, skipped' if finished else 'evaluated'}: " + _headline(evaluation))
            else:
                run_errors.append({"stage": STAGE, "reason": "training_failed", "source": variant.name,
                                   "offset": -1, "url": "", "detail": note})
                _say(f"{prefix}: {note}")
        rows.append(_row(variant, built, status, note, p, evaluation))
    summary = {"run": os.path.abspath(p.run_dir), "settings": p.record(),
               "held_out": {**held_summary, "images": len(held_out.images), "texts": len(held_out.texts)},
               "zero_shot": ({"dir": os.path.abspath(p.zero_shot.root), "classes": p.zero_shot.classnames,
                              "images": len(zero_shot.images), "prompts": len(p.zero_shot.templates)}
                             if p.zero_shot else None),
               "notes": notes, "errors": _gather_errors(p, run_errors)}
    write_comparison(p.output, summary, rows)
    from crawl2clip.pipelines.compare_report import write_page

    page = write_page(p.output)
    _say(f"\nComparison: {os.path.join(p.output, COMPARISON + '.json')} (+ .parquet)\nPage: {page}")
    return 0 if all(row["status"] == "trained" for row in rows) else 1


def _headline(evaluation: dict) -> str:
    retrieval = evaluation.get("retrieval")
    parts = []
    if retrieval:
        parts.append(f"recall@1 image->text {retrieval['image_to_text']['1']:.3f}, "
                     f"text->image {retrieval['text_to_image']['1']:.3f}")
    if "zero_shot" in evaluation:
        parts.append(f"zero-shot top-1 {evaluation['zero_shot']['top1']:.3f}")
    return "; ".join(parts) or "nothing to evaluate on"


def main(argv: list[str]) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.demo:
        from crawl2clip.pipelines.compare_demo import run_demo

        return run_demo(args, argv)
    p, problems = plan(args)
    if problems:
        print("crawl2clip compare: " + "; ".join(problems), file=sys.stderr)
        return 2
    return run_comparison(p)
