"""Which flags a command knows: crawl2clip's options and every Beam pipeline option.

Beam parses options leniently: an unknown flag only logs "Discarding unparseable args" and a
prefix of a known flag is taken for it. So before Beam sees a command line, every flag is checked
against all `PipelineOptions` subclasses (ours and Beam's: runner, filesystem and worker options),
without abbreviations; anything else is an error that names the flag and the closest known one.

One exception: a portable runner's job server (Flink, Spark) has options of its own that Python
does not know (`--checkpointing_interval`); with such a runner, an unknown flag in Beam's
snake_case spelling that is not a near miss of a known option is passed on to it.
"""

import difflib
import re

from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

PORTABLE_RUNNERS = ("FlinkRunner", "SparkRunner", "PortableRunner", "PrismRunner")
_NUMBER = re.compile(r"^-\.?\d")
_SNAKE_CASE = re.compile(r"^--[a-z][a-z0-9_]*$")


class FlagError(ValueError):
    """A command line no option parser should accept; the message names the flag."""


class _StrictParser(_BeamArgumentParser):
    def __init__(self):
        super().__init__(allow_abbrev=False, add_help=False)

    def error(self, message):
        raise FlagError(message)


def _option_classes() -> list[type]:
    """Every PipelineOptions subclass defined so far, the last definition of each name winning
    (as Beam does: a class defined twice would register its flags twice)."""
    found: dict[str, type] = {}
    stack = list(PipelineOptions.__subclasses__())
    while stack:
        cls = stack.pop()
        found[str(cls)] = cls
        stack.extend(cls.__subclasses__())
    return list(found.values())


def _parser(extra_flags: tuple[str, ...]) -> _StrictParser:
    parser = _StrictParser()
    for cls in _option_classes():
        if "_add_argparse_args" in cls.__dict__:
            cls._add_argparse_args(parser)
    for flag in extra_flags:
        parser.add_argument(flag)
    return parser


def _runner(argv: list[str]) -> str:
    runner = ""
    for i, arg in enumerate(argv):
        if arg == "--runner" and i + 1 < len(argv):
            runner = argv[i + 1]
        elif arg.startswith("--runner="):
            runner = arg.split("=", 1)[1]
    return runner.rsplit(".", 1)[-1]


def check_flags(argv: list[str], extra_flags: tuple[str, ...] = ()) -> None:
    """Raises FlagError for the first flag that neither crawl2clip nor Beam knows (or a value
    that a known flag refuses); `extra_flags` are the command's own flags (taking values)."""
    parser = _parser(extra_flags)
    _, unknown = parser.parse_known_args(argv)
    known = sorted(parser._option_string_actions)
    portable = _runner(argv) in PORTABLE_RUNNERS
    for arg in unknown:
        if arg == "--":
            break
        if not arg.startswith("-") or _NUMBER.match(arg):
            continue  # the value of an unknown flag (reported itself) or a stray word (below)
        name = arg.split("=", 1)[0]
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        if portable and _SNAKE_CASE.match(name) and not close:
            continue  # the job server's own option
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise FlagError(f"unknown option {name}{hint}")
    strays = [arg for arg in unknown if not arg.startswith("-")]
    if strays and len(strays) == len(unknown):
        raise FlagError(f"unexpected argument {strays[0]!r} (options are written --name value)")
