"""`crawl2clip remove`: applies removal lists to a finished `crawl2clip run` folder, in place or
into a cleaned copy, so a published dataset can be cleaned without running it again.

    plan (the audit)  ->  every unit rewritten (transforms/remove)  ->  indexes rebuilt  ->  report

Resumable: the plan, the units' done markers and the index list live in
`removed/.remove-<digest>/` of the output until the end, where `removed/_remove-<digest>.json`
(the summary) is written and the progress folder deleted. `<digest>` names the lists (their
bytes), the pHash distance and the dataset, so a rerun with the same lists resumes, and is a
no-op once finished.
"""

import hashlib
import json
import os
import shutil
import time

import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import StandardOptions

from crawl2clip.pipelines.options import Crawl2ClipOptions
from crawl2clip.pipelines.report import PLOTS, REPORT_HTML, REPORT_JSON, write_report
from crawl2clip.pipelines.run import run_pipeline
from crawl2clip.transforms.consent.audit import REMOVED
from crawl2clip.transforms.consent.blocklists import BlocklistSettings, ListSpec, counter_name, load_blocklists
from crawl2clip.transforms.download.shards import PARQUET, shard_file
from crawl2clip.transforms.index.store import INFO as INDEX_INFO
from crawl2clip.transforms.remove.rewrite import RunDirs, Unit, list_units, totals

def digest(settings: BlocklistSettings, dataset: str) -> str:
    """12 hex digits naming one removal: the lists' kinds and bytes, the pHash distance, the dataset."""
    h = hashlib.sha256(f"{os.path.abspath(dataset)}\0{settings.phash_distance}".encode())
    for value in settings.specs:
        spec = ListSpec.parse(value)
        h.update(f"\0{spec.kind}\0".encode())
        with FileSystems.open(spec.path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


def index_dirs(run_dir: str) -> list[str]:
    """The folders of DIR (relative) holding a `crawl2clip index` output."""
    return sorted(name for name in os.listdir(run_dir) if os.path.isfile(os.path.join(run_dir, name, INDEX_INFO)))


def removed_counts(audit: str) -> dict[str, int]:
    """`remove:removed_<kind>`: the pairs the plan names, by list kind."""
    counts: dict[str, int] = {}
    for reason in pq.read_table(audit, columns=["reason"]).column("reason").to_pylist():
        key = f"remove:{counter_name(reason)}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def scan_sources(units: list[Unit], needs_phash: bool) -> list[tuple]:
    """Where listed rows can be found: every table of pairs, and the shards' images for pHashes."""
    sources = []
    for unit in units:
        if unit.kind in ("table", "part"):
            sources.append(("rows", os.path.join(unit.source, unit.name)))
        elif unit.kind == "shard":
            tar = os.path.join(unit.source, unit.name)
            parquet = shard_file(os.path.join(unit.source, unit.dirs.download), unit.number, PARQUET)
            sources.append(("rows", parquet))
            if needs_phash:
                sources.append(("images", tar, parquet))
    return sources


def validate(stage: Crawl2ClipOptions) -> list[str]:
    problems = stage.validate_remove()
    if problems:
        return problems
    if not stage.output_dir:
        stage.output_dir = stage.dataset  # no --output: clean the dataset in place
    source, target = os.path.abspath(stage.dataset), os.path.abspath(stage.output_dir)
    if source != target and (target + os.sep).startswith(source + os.sep):
        return [f"--output {stage.output_dir}: inside --dataset; give a folder outside it, or none to clean in place"]
    if not any(os.path.isdir(os.path.join(source, name)) for name in ("extract", "download", "score")):
        return [f"--dataset {stage.dataset}: no extract/, download/ or score/ folder (not a crawl2clip run)"]
    return []


def execute(options: Crawl2ClipOptions, stage: Crawl2ClipOptions) -> dict:
    from crawl2clip.pipelines.end_to_end import stage_dir  # the run's layout (imports the stages)
    from crawl2clip.transforms.remove.transform import RemoveListedRows

    started = time.time()
    source, target = stage.dataset, stage.output_dir
    settings = stage.blocklist_settings()
    name = f"remove-{digest(settings, source)}"
    audit = os.path.join(target, REMOVED, f"{name}.parquet")
    summary_path = os.path.join(target, REMOVED, f"_{name}.json")  # `_`: parquet readers of removed/ skip it
    work = os.path.join(target, REMOVED, f".{name}")
    runner = options.view_as(StandardOptions).runner
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
        print(f"crawl2clip remove: these lists were applied already ({summary_path})")
        return {"runner": runner, "seconds": 0.0, "counters": summary["counters"]}
    dirs = RunDirs(*(os.path.relpath(stage_dir(source, s), source) for s in ("download", "score", "prune")))
    indexes = _index_plan(source, work)
    skip = {*indexes, REPORT_JSON, REPORT_HTML, PLOTS, os.path.join(REMOVED, f".{name}"),
            os.path.join(REMOVED, f"{name}.parquet")}
    units = list_units(source, target, dirs, skip)
    lists = load_blocklists(settings)
    scan = scan_sources(units, lists.needs_phash)
    run_pipeline(options, lambda p: p | "Remove" >> RemoveListedRows(scan, units, audit, work, settings), work)
    # Totals from the files, not this attempt's counters: an earlier attempt may have done part of it.
    counters = {**totals(work), **removed_counts(audit)}
    for relative, info in indexes.items():
        counters.update(_rebuild_index(stage, os.path.join(target, relative), os.path.join(target, dirs.score), info,
                                       os.path.join(work, "done", f"index__{relative}")))
    page = write_report(target)
    summary = {"dataset": os.path.abspath(source), "output": os.path.abspath(target), "lists": list(settings.specs),
               "phash_distance": settings.phash_distance, "audit": os.path.abspath(audit),
               "indexes_rebuilt": sorted(indexes), "report": page, "finished": time.time(),
               "seconds": round(time.time() - started, 3), "counters": counters}
    with open(summary_path + ".tmp", "w") as f:
        json.dump(summary, f, indent=2)
    os.replace(summary_path + ".tmp", summary_path)
    shutil.rmtree(work, ignore_errors=True)
    return {"runner": runner, "seconds": summary["seconds"], "counters": counters}


def _index_plan(source: str, work: str) -> dict[str, dict]:
    """relative index folder -> its index_info, remembered in the progress folder so a rerun still
    knows an index whose folder a crash left half swapped."""
    path = os.path.join(work, "indexes.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    plan = {}
    for relative in index_dirs(source):
        with open(os.path.join(source, relative, INDEX_INFO)) as f:
            plan[relative] = json.load(f)
    os.makedirs(work, exist_ok=True)
    with open(path, "w") as f:
        json.dump(plan, f)
    return plan


def _rebuild_index(stage: Crawl2ClipOptions, final: str, score_dir: str, info: dict, done: str) -> dict[str, int]:
    """The index built again from the cleaned scoring output, with its old modalities, thumbnails
    and query CLIP, and the index options `remove` was given; swapped in when whole."""
    from crawl2clip.pipelines.end_to_end import stage_options
    from crawl2clip.pipelines.index import build_index

    if os.path.exists(done):
        return {}
    os.makedirs(os.path.dirname(done), exist_ok=True)
    building, old = final + ".rebuilding", final + ".old"
    shutil.rmtree(building, ignore_errors=True)
    clip = info.get("clip") or {}
    options = stage_options(stage, embeddings=score_dir, output_dir=building,
                            index_text="text" in info.get("indexes", {}), no_thumbnails=not info.get("thumbnails"),
                            query_model=clip.get("model"), query_pretrained=clip.get("pretrained"))
    report = run_pipeline(options, lambda p: build_index(p, options), building)
    if os.path.exists(final):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(building, final)
    shutil.rmtree(old, ignore_errors=True)
    with open(done, "w") as f:
        json.dump(report["counters"], f)
    return report["counters"]
