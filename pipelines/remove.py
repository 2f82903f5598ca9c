"""`crawl2clip remove`: applies removal lists to a finished `crawl2clip run` folder, in place or
into a cleaned copy, so a published dataset can be cleaned without running it again. The run may
be local or on any Beam filesystem: every file goes through transforms/files.py.

    plan (the audit)  ->  every unit rewritten (transforms/remove)  ->  indexes rebuilt  ->  report

Resumable: the plan, the units' done markers and the index list live in
`removed/.remove-<digest>/` of the output until the end, where `removed/_remove-<digest>.json`
(the summary) is written and the progress folder deleted. `<digest>` names the lists (their
bytes), the pHash distance, the dataset and the output, so a rerun with the same lists resumes,
and is a no-op once finished.
"""

import hashlib
import time

from apache_beam.options.pipeline_options import StandardOptions

from crawl2clip.pipelines.options import Crawl2ClipOptions
from crawl2clip.pipelines.report import PLOTS, REPORT_HTML, REPORT_JSON, write_report
from crawl2clip.pipelines.run import PipelineFailed, run_pipeline
from crawl2clip.transforms import files
from crawl2clip.transforms.consent.audit import REMOVED
from crawl2clip.transforms.consent.blocklists import BlocklistSettings, ListSpec, counter_name, load_blocklists
from crawl2clip.transforms.download.shards import PARQUET, shard_file
from crawl2clip.transforms.index.store import INFO as INDEX_INFO
from crawl2clip.transforms.tables import read_table
from crawl2clip.transforms.remove import rewrite
from crawl2clip.transforms.remove.rewrite import (
    RunDirs,
    Unit,
    inside,
    list_units,
    normalised,
    relative,
    same_folder,
    totals,
)

STAGE_FOLDERS = ("extract", "download", "score")  # one of them makes a folder a crawl2clip run
REBUILDING, OLD = ".rebuilding", ".old"  # an index folder's new build, and the one it replaces
UNREADABLE = "unreadable.parquet"  # in the progress folder: the files a search could not read


def digest(settings: BlocklistSettings, dataset: str, output: str) -> str:
    """12 hex digits naming one removal: the lists' kinds and bytes, the pHash distance, the dataset
    and the output (a copy of a dataset cleaned in place by the same lists names the in-place
    removal's audit and summary differently)."""
    h = hashlib.sha256(f"{normalised(dataset)}\0{normalised(output)}\0{settings.phash_distance}".encode())
    for value in settings.specs:
        spec = ListSpec.parse(value)
        h.update(f"\0{spec.kind}\0".encode())
        with files.open_read(spec.path) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


def index_dirs(run_dir: str) -> list[str]:
    """The folders of DIR (relative) holding a `crawl2clip index` output."""
    top = {relative(path, run_dir).split("/", 1)[0] for path in files.match(files.join(run_dir, "**"))}
    return sorted(name for name in top if files.exists(files.join(run_dir, name, INDEX_INFO)))


def unreadable_message(path: str) -> str:
    """What a remove that could not search every file says (the table at `path` names them)."""
    sources = read_table(path, columns=["source"]).column("source").to_pylist()
    shown = ", ".join(sources[:5]) + (f" and {len(sources) - 5} more" if len(sources) > 5 else "")
    return (f"{len(sources)} file(s) of the dataset could not be read, so nothing was removed (a listed pair "
            f"may have rows in them): {shown}. The reasons are in {path}. Mend or delete these files, "
            "then run the same command again.")


def removed_counts(audit: str) -> dict[str, int]:
    """`remove:removed_<kind>`: the pairs the plan names, by list kind."""
    counts: dict[str, int] = {}
    for reason in read_table(audit, columns=["reason"]).column("reason").to_pylist():
        key = f"remove:{counter_name(reason)}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def scan_sources(units: list[Unit], needs_phash: bool) -> list[tuple]:
    """Where listed rows can be found: every table of pairs, and the shards' images for pHashes."""
    sources = []
    for unit in units:
        if unit.kind in ("table", "part"):
            sources.append(("rows", unit.path(unit.source)))
        elif unit.kind == "shard":
            parquet = shard_file(files.join(unit.source, unit.dirs.download), unit.number, PARQUET)
            sources.append(("rows", parquet))
            if needs_phash:
                sources.append(("images", unit.path(unit.source), parquet))
    return sources


def validate(stage: Crawl2ClipOptions) -> list[str]:
    problems = stage.validate_remove()
    if problems:
        return problems
    if not stage.output_dir:
        stage.output_dir = stage.dataset  # no --output: clean the dataset in place
    source, target = stage.dataset, stage.output_dir
    if not same_folder(source, target) and inside(target, source):
        return [f"--output {stage.output_dir}: inside --dataset; give a folder outside it, or none to clean in place"]
    if not any(files.exists(files.join(source, name)) for name in STAGE_FOLDERS):
        return [f"--dataset {stage.dataset}: no {'/, '.join(STAGE_FOLDERS)}/ folder (not a crawl2clip run)"]
    return []


def execute(options: Crawl2ClipOptions, stage: Crawl2ClipOptions) -> dict:
    from crawl2clip.pipelines.end_to_end import stage_dir  # the run's layout (imports the stages)
    from crawl2clip.transforms.remove.transform import RemoveListedRows

    started = time.time()
    source, target = stage.dataset, stage.output_dir
    settings = stage.blocklist_settings()
    name = f"remove-{digest(settings, source, target)}"
    audit = files.join(target, REMOVED, f"{name}.parquet")
    summary_path = files.join(target, REMOVED, f"_{name}.json")  # `_`: parquet readers of removed/ skip it
    work = files.join(target, REMOVED, f".{name}")
    unreadable = files.join(work, UNREADABLE)
    runner = options.view_as(StandardOptions).runner
    if files.exists(summary_path):
        print(f"crawl2clip remove: these lists were applied already ({summary_path})")
        return {"runner": runner, "seconds": 0.0, "counters": files.read_marker(summary_path)["counters"]}
    dirs = RunDirs(*(relative(stage_dir(source, s), source) for s in ("download", "score", "prune")))
    indexes = _index_plan(source, work)
    own = {f"{REMOVED}/.{name}", f"{REMOVED}/{name}.parquet", f"{REMOVED}/_{name}.json"}  # progress, audit, summary
    skip = {*indexes, *(f"{index}{suffix}" for index in indexes for suffix in (REBUILDING, OLD)),
            REPORT_JSON, REPORT_HTML, PLOTS, *own}
    units = list_units(source, target, dirs, skip)
    lists = load_blocklists(settings)
    scan = scan_sources(units, lists.needs_phash)
    files.delete(unreadable)  # an earlier attempt's: this one searches again
    run_pipeline(options, lambda p: p | "Remove" >> RemoveListedRows(scan, units, audit, work, settings, unreadable),
                 work)
    if files.exists(unreadable):
        raise PipelineFailed(unreadable_message(unreadable))
    # Totals from the files, not this attempt's counters: an earlier attempt may have done part of it.
    counters = {**totals(work), **removed_counts(audit)}
    for index, info in indexes.items():
        counters.update(_rebuild_index(stage, files.join(target, index), files.join(target, dirs.score), info,
                                       files.join(work, "done", f"index__{index}.json")))
    page = write_report(target)
    summary = {"dataset": normalised(source), "output": normalised(target), "lists": list(settings.specs),
               "phash_distance": settings.phash_distance, "audit": normalised(audit),
               "indexes_rebuilt": sorted(indexes), "report": page, "finished": time.time(),
               "seconds": round(time.time() - started, 3), "counters": counters}
    files.write_marker(summary_path, summary)
    files.delete(work)
    return {"runner": runner, "seconds": summary["seconds"], "counters": counters}


def _index_plan(source: str, work: str) -> dict[str, dict]:
    """relative index folder -> its index_info, remembered in the progress folder so a rerun still
    knows an index whose folder a crash left half swapped."""
    path = files.join(work, "indexes.json")
    if files.exists(path):
        return files.read_marker(path)
    plan = {index: files.read_marker(files.join(source, index, INDEX_INFO)) for index in index_dirs(source)}
    files.write_marker(path, plan)
    return plan


def _rebuild_index(stage: Crawl2ClipOptions, final: str, score_dir: str, info: dict, done: str) -> dict[str, int]:
    """The index built again from the cleaned scoring output, with its old modalities, thumbnails
    and query CLIP, and the index options `remove` was given; swapped in when whole."""
    from crawl2clip.pipelines.end_to_end import stage_options
    from crawl2clip.pipelines.index import build_index

    if files.exists(done):
        return {}
    building, old = final + REBUILDING, final + OLD
    files.delete(building)
    clip = info.get("clip") or {}
    options = stage_options(stage, embeddings=score_dir, output_dir=building,
                            index_text="text" in info.get("indexes", {}), no_thumbnails=not info.get("thumbnails"),
                            query_model=clip.get("model"), query_pretrained=clip.get("pretrained"))
    report = run_pipeline(options, lambda p: build_index(p, options), building)
    if files.exists(final):
        files.delete(old)
        rewrite.move(final, old)
    rewrite.move(building, final)
    files.delete(old)
    files.write_marker(done, report["counters"])
    return report["counters"]
