"""The `crawl2clip` command.

    crawl2clip extract --input GLOB [GLOB ...] --output DIR [any Beam pipeline option]
    crawl2clip download --input PARQUET_GLOB --output DIR [options]   # images -> webdataset shards
    crawl2clip demo [--output DIR]          # builds the sample crawl and extracts it
    crawl2clip sample-crawl --output FILE   # only writes the sample crawl
    crawl2clip run --template NAME --set KEY=VALUE ... [Beam options]   # a deploy/templates job
    crawl2clip templates                    # lists the templates
    crawl2clip flex-metadata [--output FILE]   # Dataflow Flex Template metadata.json

Stage options are parsed by Beam (`Crawl2ClipOptions`), so runner flags pass straight through.
"""

import argparse
import logging
import os
import sys

from crawl2clip.pipelines.config import ConfigError, expand_config_flag
from crawl2clip.pipelines.download import build_download
from crawl2clip.pipelines.extract import build_extract
from crawl2clip.pipelines.options import Crawl2ClipOptions, output_flag_to_output_dir
from crawl2clip.pipelines.run import PipelineFailed, run_pipeline, with_default_runner
from crawl2clip.pipelines.sample_crawl import write_sample_crawl
from crawl2clip.pipelines.templates import (
    flex_template_metadata_json,
    parse_assignments,
    render,
    template_names,
)

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


def _run_stage(command: str, description: str, argv: list[str], validate, build, outputs) -> int:
    """The shared life of a stage command: help, options, fail-fast checks, run, report."""
    if "-h" in argv or "--help" in argv:
        _stage_help(command, description)
        return 0
    options = Crawl2ClipOptions(with_default_runner(output_flag_to_output_dir(argv)))
    stage = options.view_as(Crawl2ClipOptions)
    problems = validate(stage)
    if problems:
        print(f"crawl2clip {command}: " + "; ".join(problems), file=sys.stderr)
        return 2
    try:
        report = run_pipeline(options, lambda p: build(p, stage), stage.output_dir)
    except (PipelineFailed, ValueError) as exc:
        print(f"crawl2clip {command}: {exc}", file=sys.stderr)
        return 1
    _print_report(report, outputs(stage.output_dir))
    return 0


def _extract_outputs(out: str) -> dict[str, str]:
    return {"Candidate pairs": os.path.join(out, "pairs", "pairs-*.parquet"),
            "Errors": os.path.join(out, "errors", "errors-*.parquet"),
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
    )


def demo(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="crawl2clip demo",
                                     description="Build the sample crawl and run extract on it.")
    parser.add_argument("--output", default=DEMO_OUTPUT, help="demo folder (default: %(default)s)")
    args, beam_args = parser.parse_known_args(argv)
    crawl = os.path.join(args.output, "sample-crawl.warc.gz")
    summary = write_sample_crawl(crawl)
    print(f"Sample crawl: {crawl} ({summary['pages']} pages, {summary['records']} records)")
    return extract(["--input", crawl, "--output", os.path.join(args.output, "extract"), *beam_args])


def sample_crawl(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="crawl2clip sample-crawl",
                                     description="Write the project's sample crawl (a gzip WARC).")
    parser.add_argument("--output", required=True, help="the .warc.gz file to write")
    parser.add_argument("--pages", type=int, default=200, help="number of HTML pages (default: %(default)s)")
    args = parser.parse_args(argv)
    print(write_sample_crawl(args.output, pages=args.pages))
    return 0


def run_template(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="crawl2clip run", epilog="Other flags go to Beam (--runner, ...).",
                                     description="Run a templated batch job (Beam YAML + Jinja variables).")
    parser.add_argument("--template", required=True, help=f"a name ({', '.join(template_names())}) or a YAML file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a template variable; VALUE is read as YAML (numbers, true/false, [lists])")
    args, beam_args = parser.parse_known_args(argv)
    # Imported here: Beam YAML's providers are slow to import and only this command needs them.
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
    try:
        report = run_pipeline(options, lambda p: yaml_transform.expand_pipeline(p, spec), variables["output"])
    except PipelineFailed as exc:
        print(f"crawl2clip run: {exc}", file=sys.stderr)
        return 1
    _print_report(report, _extract_outputs(variables["output"]))
    return 0


def list_templates(argv: list[str]) -> int:
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


COMMANDS = {
    "extract": extract,
    "download": download,
    "demo": demo,
    "sample-crawl": sample_crawl,
    "run": run_template,
    "templates": list_templates,
    "flex-metadata": flex_metadata,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(__doc__.strip(), file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        args = expand_config_flag(argv[1:])
    except ConfigError as exc:
        print(f"crawl2clip {argv[0]}: {exc}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](args)


if __name__ == "__main__":
    sys.exit(main())
