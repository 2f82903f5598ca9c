"""The `crawl2clip` command.

    crawl2clip extract --input GLOB [GLOB ...] --output DIR [any Beam pipeline option]
    crawl2clip download --input PARQUET_GLOB --output DIR [options]   # images -> webdataset shards
    crawl2clip score --input DOWNLOAD_DIR --output DIR [options]      # CLIP embeddings, similarity, tags
    crawl2clip prune --input SCORE_DIR --output DIR --keep-fraction F   # SemDeDup + DBP -> kept.parquet
    crawl2clip prune-apply --kept DIR/kept.parquet --input SCORE_DIR --output PRUNED_DIR [--shards DOWNLOAD_DIR]
    crawl2clip index --input SCORE_DIR --output INDEX_DIR [--max-memory 4GB] [options]
    crawl2clip serve INDEX_DIR [--host 127.0.0.1 --port 8765]   # search API + web page
    crawl2clip subset --index INDEX_DIR (--query TEXT ... | --filter EXPR ...) --output FILE.parquet
    crawl2clip train-head --embeddings SCORE_DIR_or_.npy --labels PARQUET --label-column COL --output HEAD.npz
    crawl2clip demo [--output DIR]          # the whole pipeline on the project's own sample crawl
    crawl2clip sample-crawl --output FILE   # only writes the sample crawl
    crawl2clip run --input WARC_GLOB --output DIR [--prune --keep-fraction F] [options]   # every stage
    crawl2clip run --template NAME --set KEY=VALUE ... [Beam options]   # a deploy/templates job
    crawl2clip report DIR                   # DIR/report.html + report.json of a run (or of stages run alone)
    crawl2clip remove --dataset DIR --blocklist [KIND:]FILE [--output DIR2]   # clean a finished run
    crawl2clip compare --run DIR --variants raw,clip,clip+safe,dbp:0.5 --output DIR [--steps N]   # train, evaluate
    crawl2clip compare --demo [--output DIR]   # a bigger, noisier sample crawl, its run, its comparison
    crawl2clip templates                    # lists the templates
    crawl2clip flex-metadata [--output FILE]   # Dataflow Flex Template metadata.json

Stage options are parsed by Beam (`Crawl2ClipOptions`), so runner flags pass straight through.
Every command also takes `--config FILE` (YAML/JSON, keys are the option names).
"""

import argparse
import contextlib
import logging
import os
import sys
import tempfile
import time

from apache_beam.options.pipeline_options import PipelineOptions

from crawl2clip.pipelines.config import ConfigError, expand_config_flag
from crawl2clip.pipelines.download import build_download
from crawl2clip.pipelines.extract import build_extract, input_patterns
from crawl2clip.pipelines.filesystem_flags import add_filesystem_flags, use_filesystems
from crawl2clip.pipelines.flags import FlagError, check_flags
from crawl2clip.pipelines.options import Crawl2ClipOptions, output_flag_to_output_dir
from crawl2clip.pipelines.progress import ProgressDisplay
from crawl2clip.pipelines.run import METRICS_FILE, PipelineFailed, run_built, run_pipeline, with_default_runner
from crawl2clip.pipelines.replay import replay_proxy
from crawl2clip.pipelines.resume import finished_work
from crawl2clip.pipelines.sample_crawl import write_sample_crawl
from crawl2clip.pipelines.templates import (
    flex_template_metadata_json,
    parse_assignments,
    render,
    template_names,
)
from crawl2clip.transforms import files
from crawl2clip.transforms.errors import error_parts
from crawl2clip.transforms.progress import PROGRESS_FOLDER
from crawl2clip.transforms.score.settings import SCORING_JSON

DEMO_OUTPUT = os.path.join("output", "demo")


def _stage_help(command: str, description: str) -> None:
    parser = argparse.ArgumentParser(prog=f"crawl2clip {command}", description=description,
                                     epilog="Any Apache Beam pipeline option is accepted too "
                                            "(--runner, --flink_master, --direct_num_workers, ...).")
    Crawl2ClipOptions._add_argparse_args(parser)
    parser.print_help()


def _print_report(report: dict, outputs: dict[str, str]) -> None:
    print(f"\nFinished on {report['runner']} in {report['seconds']:.1f} s. Counters:")
    for name, value in report["counters"].items():
        print(f"  {name:<45} {value:>12,}")
    print()
    for label, path in outputs.items():
        print(f"{label + ':':<17}{path}")


def output_problem(path: str, flag: str = "--output") -> str | None:
    """Why a local output folder cannot be written (None when it can): it is a file, or it
    cannot be created or written in. Creates the folder. (Remote folders: filesystem_problems.)"""
    if not files.is_local(path):
        return None
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{flag} {path}: a file is there, not a folder"
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        return f"{flag} {path}: cannot write there ({exc.strerror or exc})"
    return None


def _run_stage(command: str, description: str, argv: list[str], validate, build, outputs,
               progress=None, finish=None, execute=None, carried=None) -> int:
    """The shared life of a stage command: help, flags, options, fail-fast checks, run, report.
    `execute(options, stage)` runs the job and returns its report (default: one pipeline built
    by `build`); `carried(stage)` gives the counters of the work an earlier run finished in the
    output (pipelines/resume.py); `progress(stage)` gives a display to show while the job runs;
    `finish(stage, report)` does what comes after it and returns more outputs to print."""
    if "-h" in argv or "--help" in argv:
        _stage_help(command, description)
        return 0
    try:
        check_flags(argv, ("--output",))
    except FlagError as exc:
        print(f"crawl2clip {command}: {exc}", file=sys.stderr)
        return 2
    options = Crawl2ClipOptions(with_default_runner(output_flag_to_output_dir(argv)))
    stage = options.view_as(Crawl2ClipOptions)
    files.configure(options)  # before anything touches hdfs://, s3://, ...
    problems = stage.filesystem_problems() or validate(stage)
    if not problems and stage.output_dir and (problem := output_problem(stage.output_dir)):
        problems = [problem]
    if problems:
        print(f"crawl2clip {command}: " + "; ".join(problems), file=sys.stderr)
        return 2
    if execute is None:
        def execute(options, stage):
            return run_pipeline(options, lambda p: build(p, stage), stage.output_dir,
                                carried(stage) if carried else None)
    try:
        with progress(stage) if progress else contextlib.nullcontext():
            report = execute(options, stage)
    except (PipelineFailed, ValueError) as exc:
        print(f"crawl2clip {command}: {exc}", file=sys.stderr)
        return 1
    more = finish(stage, report) if finish else {}
    _print_report(report, {**outputs(stage.output_dir), **more})
    return 0


def _extract_outputs(out: str) -> dict[str, str]:
    return {"Candidate pairs": os.path.join(out, "pairs", "pairs-*.parquet"),
            "Errors": error_parts(out),
            "Metrics": os.path.join(out, "metrics.json")}


def extract(argv: list[str]) -> int:
    return _run_stage("extract", "Read web archives and write (image URL, alt text) candidates.", argv,
                      Crawl2ClipOptions.validate_extract, build_extract, _extract_outputs)


def download(argv: list[str]) -> int:
    return _run_stage(
        "download", "Download, check and resize the images of candidate pairs into webdataset "
                    "shards with parquet metadata.", argv,
        Crawl2ClipOptions.validate_download, build_download,
        lambda out: {"Shards": os.path.join(out, "*.tar") + " (+ .parquet, _stats.json)",
                     "Metrics": os.path.join(out, "metrics.json")},
        carried=lambda stage: finished_work("download", stage.output_dir),
    )


def index(argv: list[str]) -> int:
    # Imported here: faiss and the index stack are only needed by this command.
    from crawl2clip.pipelines.index import build_index
    return _run_stage(
        "index", "Build a kNN index (faiss) over the scoring stage's embeddings, with what the "
                 "explorer serves: metadata, vectors, thumbnails.", argv,
        Crawl2ClipOptions.validate_index, build_index,
        lambda out: {"Index": os.path.join(out, "index_info.json"),
                     "Errors": error_parts(out),
                     "Serve it": f"crawl2clip serve {out}"},
    )


def serve(argv: list[str]) -> int:
    # Imported here: the web stack is only needed by these two commands.
    from crawl2clip.explorer.server import main as serve_main
    return serve_main(argv)


def subset(argv: list[str]) -> int:
    from crawl2clip.explorer.subset import main as subset_main
    return subset_main(argv)


def score(argv: list[str]) -> int:
    # Imported here: torch and open_clip take seconds to import and only this command needs them.
    from crawl2clip.pipelines.score import build_score
    return _run_stage(
        "score", "Score downloaded pairs with CLIP: embeddings, similarity, content tags; drop the "
                 "pairs under the similarity thresholds.", argv,
        Crawl2ClipOptions.validate_score, build_score,
        lambda out: {"Embeddings": os.path.join(out, "img_emb") + ", " + os.path.join(out, "text_emb"),
                     "Metadata": os.path.join(out, "metadata", "metadata_*.parquet"),
                     "Dropped pairs": os.path.join(out, "dropped", "dropped_*.parquet"),
                     "Settings": os.path.join(out, SCORING_JSON),
                     "Metrics": os.path.join(out, "metrics.json")},
        carried=lambda stage: finished_work("score", stage.output_dir),
    )


_PRUNE_DESCRIPTION = ("Prune a scoring output: SemDeDup (near-duplicates), then Density-Based Pruning "
                      "(keep more of complex concept clusters); writes the kept ids.")


def _prune_outputs(out: str) -> dict[str, str]:
    from crawl2clip.transforms.prune.outputs import CLUSTERS, DUPLICATES, KEPT, PLOT, SUMMARY, output_path
    return {"Kept ids": output_path(out, KEPT),
            "Clusters": output_path(out, CLUSTERS) + ", " + output_path(out, PLOT),
            "Duplicates": output_path(out, DUPLICATES),
            "Summary": output_path(out, SUMMARY)}


def prune(argv: list[str]) -> int:
    # Imported here: faiss and matplotlib are only needed by the prune commands.
    from crawl2clip.pipelines.prune import build_prune
    from crawl2clip.transforms.prune.single_machine import prune_single_machine

    def execute(options, stage: Crawl2ClipOptions) -> dict:
        if not stage.prune_single_machine:
            return run_pipeline(options, lambda p: build_prune(p, stage), stage.output_dir)
        started = time.time()
        totals = prune_single_machine(stage.input[0], stage.output_dir, stage.prune_settings())
        return {"runner": "this process (--prune-single-machine)", "seconds": time.time() - started,
                "counters": totals}

    return _run_stage("prune", _PRUNE_DESCRIPTION, argv, Crawl2ClipOptions.validate_prune, build_prune,
                      _prune_outputs, execute=execute)


def prune_apply(argv: list[str]) -> int:
    from crawl2clip.pipelines.prune import build_prune_apply
    return _run_stage(
        "prune-apply", "Write the pruned dataset: the rows of kept.parquet as an embeddings layout "
                       "(and, with --shards DOWNLOAD_DIR, as webdataset shards).", argv,
        Crawl2ClipOptions.validate_prune_apply, build_prune_apply,
        lambda out: {"Pruned embeddings": os.path.join(out, "metadata", "metadata_*.parquet"),
                     "Pruned shards": os.path.join(out, "shards", "*.tar") + " (with --shards)",
                     "Errors": error_parts(out)},
    )


def remove(argv: list[str]) -> int:
    from crawl2clip.pipelines.remove import execute, validate
    return _run_stage(
        "remove", "Apply removal lists to a finished crawl2clip run: the listed pairs leave every stage's "
                  "files (shards, parquet, embeddings, prune lists), the index is rebuilt, each removal is "
                  "audited. In place, or into --output DIR2.", argv,
        validate, None,
        lambda out: {"Cleaned run": out, "Audit": os.path.join(out, "removed", "remove-*.parquet"),
                     "Report": os.path.join(out, "report.html")},
        execute=execute)


# The demo's settings: the project's tiny CLIP (trained on rendered scenes, where matched pairs
# score 0.55-0.85 and mismatched ones under 0.35: LAION's 0.28 is for ViT-B/32), a small prune.
# Its multilingual tower is distilled onto the English text tower (held-out cosine 0.995), so
# both splits share one threshold. The sample crawl's 160-pixel renders weigh 2-16 KB: keep them
# all (--min-image-bytes 0).
DEMO_FLAGS = ["--tiny-clip", "--min-similarity-en", "0.45", "--min-similarity-multi", "0.45",
              "--image-size", "128", "--shard-size", "100", "--min-image-bytes", "0",
              "--prune", "--keep-fraction", "0.5", "--prune-clusters", "8"]


def demo(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="crawl2clip demo", epilog="Other flags go to crawl2clip run (stage and Beam options).",
        description="Build the sample crawl and run the whole pipeline on it, its images served by a "
                    "local replay proxy (no network), then print where the report is.")
    parser.add_argument("--output", default=DEMO_OUTPUT, help="demo folder (default: %(default)s)")
    parser.add_argument("--pages", type=int, default=200, help="pages in the sample crawl (default: %(default)s)")
    args, run_args = parser.parse_known_args(argv)
    try:
        check_flags(argv, ("--output", "--pages"))
    except FlagError as exc:
        parser.error(str(exc))
    if args.pages < 1:
        parser.error("--pages must be >= 1")
    files.configure(PipelineOptions(run_args))  # an hdfs:// or s3:// --output: its flags are among run's
    if problem := output_problem(args.output) or files.unreachable(args.output):
        parser.error(problem if problem.startswith("--output") else f"--output {args.output}: {problem}")
    with tempfile.TemporaryDirectory() as scratch:
        # The proxy replays a local copy; the run reads the crawl where --output is (a cluster's workers too).
        local_crawl = os.path.join(args.output if files.is_local(args.output) else scratch, "sample-crawl.warc.gz")
        summary = write_sample_crawl(local_crawl, pages=args.pages)
        crawl = local_crawl if files.is_local(args.output) else \
            files.upload(local_crawl, files.join(args.output, "sample-crawl.warc.gz"))
        print(f"Sample crawl: {crawl} ({summary['pages']} pages, {summary['pictures']} pictures, "
              f"{summary['records']} records)")
        with replay_proxy(local_crawl, max_requests=100_000) as (proxy, _):
            print(f"Replaying its responses at {proxy} (the --proxy of the download stage)")
            return run_end_to_end(["--input", crawl, "--output", files.join(args.output, "run"), "--proxy", proxy,
                                   *DEMO_FLAGS, *run_args])


def sample_crawl(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="crawl2clip sample-crawl",
                                     description="Write the project's sample crawl (a gzip WARC).")
    parser.add_argument("--output", required=True, help="the .warc.gz file to write")
    parser.add_argument("--pages", type=int, default=200, help="number of HTML pages (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.pages < 1:
        parser.error("--pages must be >= 1")
    try:
        print(write_sample_crawl(args.output, pages=args.pages))
    except OSError as exc:
        parser.error(f"--output {args.output}: cannot write it ({exc.strerror or exc})")
    return 0


def run(argv: list[str]) -> int:
    if any(arg == "--template" or arg.startswith("--template=") for arg in argv):
        return run_template(argv)
    return run_end_to_end(argv)


def run_end_to_end(argv: list[str]) -> int:
    """Every stage into DIR, one Beam pipeline each, with a progress line and the run report."""
    # Imported only once the options are checked: torch, open_clip and faiss take seconds.
    def execute(options, stage: Crawl2ClipOptions) -> dict:
        from crawl2clip.pipelines.end_to_end import run_end_to_end as run_stages
        return run_stages(options, stage)

    def progress(stage: Crawl2ClipOptions) -> ProgressDisplay:
        from crawl2clip.pipelines.end_to_end import stage_dir

        out = stage.output_dir
        return ProgressDisplay({name: stage_dir(out, name) for name in ("extract", "download", "score")},
                               os.path.join(stage_dir(out, "extract"), PROGRESS_FOLDER),
                               total_files=len(input_patterns(stage)), shard_size=stage.shard_size)

    def finish(stage: Crawl2ClipOptions, report: dict) -> dict[str, str]:
        from crawl2clip.pipelines.report import write_report

        files.delete(files.join(stage.output_dir, "extract", PROGRESS_FOLDER))
        return {"Report": write_report(stage.output_dir)}

    return _run_stage(
        "run", "Run every stage, one pipeline each: extract, language, download, CLIP score and content "
               "tags, optionally SemDeDup + DBP prune; write the run report.", argv,
        Crawl2ClipOptions.validate_run, None,
        lambda out: {"Run folder": out, "Metrics": os.path.join(out, "metrics.json")},
        progress=progress, finish=finish, execute=execute)


def report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="crawl2clip report",
                                     description="Write DIR/report.json and DIR/report.html (funnel, histograms, "
                                                 "errors, throughput, samples) from a run's folders.")
    parser.add_argument("run_dir", metavar="DIR", help="the --output of crawl2clip run (extract/, download/, ...)")
    add_filesystem_flags(parser)
    args = parser.parse_args(argv)
    if problem := use_filesystems(args, {"DIR": args.run_dir}):
        parser.error(problem)
    if not files.exists(args.run_dir):
        print(f"crawl2clip report: {args.run_dir}: no such folder", file=sys.stderr)
        return 2
    from crawl2clip.pipelines.report import write_report

    print(write_report(args.run_dir))
    return 0


def run_template(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="crawl2clip run", epilog="Other flags go to Beam (--runner, ...).",
                                     description="Run a templated batch job (Beam YAML + Jinja variables).")
    parser.add_argument("--template", required=True, help=f"a name ({', '.join(template_names())}) or a YAML file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a template variable; VALUE is read as YAML (numbers, true/false, [lists])")
    args, beam_args = parser.parse_known_args(argv)
    try:
        check_flags(beam_args)
    except FlagError as exc:
        parser.error(str(exc))
    # Imported here: Beam YAML's providers are slow to import and only this command needs them.
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.yaml import yaml_transform

    try:
        variables = parse_assignments(args.set)
        if "output" not in variables:
            raise ValueError("give --set output=DIR")
        spec = render(args.template, variables)
    except Exception as exc:  # unknown template, bad --set, undefined variable, bad YAML
        print(f"crawl2clip run: {exc}", file=sys.stderr)
        return 2
    options = PipelineOptions(with_default_runner(beam_args), pickle_library="cloudpickle",
                              **yaml_transform.SafeLineLoader.strip_metadata(spec.get("options", {})))
    files.configure(options)  # before the template's transforms touch hdfs://, s3://, ...
    pipeline = beam.Pipeline(options=options)
    try:
        yaml_transform.expand_pipeline(pipeline, spec)
    except ValueError as exc:  # a config key or value no stage takes, an unknown model: before any work
        print(f"crawl2clip run: {exc}", file=sys.stderr)
        return 2
    try:
        report = run_built(pipeline, variables["output"])
    except PipelineFailed as exc:
        print(f"crawl2clip run: {exc}", file=sys.stderr)
        return 1
    _print_report(report, {"Output": variables["output"], "Metrics": files.join(variables["output"], METRICS_FILE)})
    return 0


def compare(argv: list[str]) -> int:
    from crawl2clip.pipelines.compare import main as compare_main  # torch and open_clip_train: only here
    return compare_main(argv)


def train_head(argv: list[str]) -> int:
    from crawl2clip.pipelines.train_head import main as train_head_main  # numpy only; no Beam
    return train_head_main(argv)


def list_templates(argv: list[str]) -> int:
    argparse.ArgumentParser(prog="crawl2clip templates", description="List the templates.").parse_args(argv)
    print("\n".join(template_names()))
    return 0


def flex_metadata(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="crawl2clip flex-metadata")
    parser.add_argument("--output", help="file to write (default: standard output)")
    args = parser.parse_args(argv)
    text = flex_template_metadata_json()
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


# Commands whose flags are pipeline options (crawl2clip's and Beam's), and the few other keys
# their config files may hold (demo's own flags, run --template's).
OPTION_COMMANDS = ("extract", "download", "score", "prune", "prune-apply", "index", "demo", "run", "remove")
CONFIG_EXTRA_KEYS = ("--output", "--pages", "--template", "--set")

COMMANDS = {
    "extract": extract,
    "download": download,
    "score": score,
    "prune": prune,
    "prune-apply": prune_apply,
    "index": index,
    "serve": serve,
    "subset": subset,
    "train-head": train_head,
    "compare": compare,
    "demo": demo,
    "sample-crawl": sample_crawl,
    "run": run,
    "report": report,
    "remove": remove,
    "templates": list_templates,
    "flex-metadata": flex_metadata,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # A stage command's config keys must be options (crawl2clip's or Beam's); other commands'
    # parsers refuse unknown keys themselves.
    check = (lambda flags: check_flags(flags, CONFIG_EXTRA_KEYS)) if argv[0] in OPTION_COMMANDS else None
    try:
        args = expand_config_flag(argv[1:], check)
    except ConfigError as exc:
        print(f"crawl2clip {argv[0]}: {exc}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](args)


if __name__ == "__main__":
    sys.exit(main())
