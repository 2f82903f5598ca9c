"""`--config FILE`: options from a YAML or JSON file instead of a long command line.

Keys are the options' own names, with dashes or underscores (`image-size: 256` is
`--image-size 256`), so every option has one name on the command line and in the file; Beam
runner options work too (`runner: FlinkRunner`). `true` turns a switch on, `false` leaves it off,
a list gives several values. Flags on the command line come after the file's, so they win.
A key that is no option of the command is an error, as a misspelt flag is.
"""

import os
from collections.abc import Callable

import yaml

CONFIG_FLAG = "--config"


class ConfigError(ValueError):
    pass


def config_to_flags(config: dict) -> list[str]:
    flags: list[str] = []
    for key, value in config.items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"option names must be strings, not {key!r}")
        flag = "--" + key.lstrip("-")
        if value is None or value is False:
            continue
        if value is True:
            flags.append(flag)
        elif isinstance(value, list):
            if not value:
                continue
            flags += [flag, *(str(v) for v in value)]
        elif isinstance(value, dict):
            raise ConfigError(f"{key}: a value must be a string, number, true/false or a list, not a mapping")
        else:
            flags += [flag, str(value)]
    return flags


def read_config(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"{CONFIG_FLAG} {path}: no such file")
    with open(path, encoding="utf-8") as f:
        try:
            config = yaml.safe_load(f)  # JSON is YAML too
        except yaml.YAMLError as exc:
            raise ConfigError(f"{CONFIG_FLAG} {path}: not valid YAML/JSON: {exc}") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError(f"{CONFIG_FLAG} {path}: the file must hold a mapping of option names to values")
    return config


def expand_config_flag(argv: list[str], check: Callable[[list[str]], None] | None = None) -> list[str]:
    """argv with `--config FILE` (or `--config=FILE`) replaced by the file's options, placed first.
    `check(flags)` vets each file's flags (raising ValueError for an unknown key)."""
    rest, files = [], []
    args = iter(argv)
    for arg in args:
        if arg == CONFIG_FLAG:
            path = next(args, None)
            if path is None:
                raise ConfigError(f"{CONFIG_FLAG} needs a file")
            files.append(path)
        elif arg.startswith(CONFIG_FLAG + "="):
            files.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    flags = []
    for path in files:
        flags += config_to_flags(read_config(path))
        if check is not None:
            try:
                check(flags)
            except ValueError as exc:
                raise ConfigError(f"{CONFIG_FLAG} {path}: {exc}") from None
    return flags + rest
