"""Beam's filesystem flags for the commands that build no pipeline (serve, subset, report), so
they read and write hdfs:// and s3:// paths as the stage commands do: the same flags
(`--hdfs_host`, `--hdfs_port`, `--hdfs_user`, `--s3_endpoint_url`, ...), handed to
transforms/files.py, and each path's filesystem probed before any work. gs:// takes its
credentials from the environment.
"""

import argparse

from apache_beam.options.pipeline_options import HadoopFileSystemOptions, PipelineOptions, S3Options

from crawl2clip.transforms import files

_OPTIONS = (HadoopFileSystemOptions, S3Options)


def _destinations() -> set[str]:
    parser = argparse.ArgumentParser(add_help=False)
    for options in _OPTIONS:
        options._add_argparse_args(parser)
    return {action.dest for action in parser._actions}


def add_filesystem_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filesystems", "where a path is hdfs:// or s3:// (as for the stage commands)")
    for options in _OPTIONS:
        options._add_argparse_args(group)


def use_filesystems(args: argparse.Namespace, paths: dict[str, str | None]) -> str | None:
    """Hands the parsed filesystem flags to transforms/files.py; then why the filesystem of a
    path ({flag: path}) cannot be used, naming the flag, or None when every one answers."""
    given = {name: getattr(args, name) for name in _destinations() if getattr(args, name, None) is not None}
    files.configure(PipelineOptions(flags=[], **given))
    for flag, path in paths.items():
        if path and (why := files.unreachable(path)):
            return f"{flag} {path}: {why}"
    return None
