"""Templated batch runs: Beam YAML pipelines with Jinja variables (deploy/templates/*.yaml), and
the Dataflow Flex Template metadata derived from `Crawl2ClipOptions`."""

import argparse
import importlib.resources
import json
import os

import yaml

from crawl2clip.pipelines.options import Crawl2ClipOptions

TEMPLATE_PACKAGE = "crawl2clip.templates"  # deploy/templates/, installed by setup.py


def template_names() -> list[str]:
    files = importlib.resources.files(TEMPLATE_PACKAGE).iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".yaml"))


def template_text(name_or_path: str) -> str:
    """A template by name (deploy/templates/NAME.yaml) or by file path."""
    if os.path.isfile(name_or_path):
        with open(name_or_path) as f:
            return f.read()
    resource = importlib.resources.files(TEMPLATE_PACKAGE) / f"{name_or_path}.yaml"
    if not resource.is_file():
        raise ValueError(f"no template {name_or_path!r}; known: {', '.join(template_names())}")
    return resource.read_text()


def parse_assignments(assignments: list[str]) -> dict:
    """`key=value` pairs; each value is read as YAML, so `5`, `true` and `[a, b]` keep their types."""
    variables = {}
    for assignment in assignments:
        key, equals, value = assignment.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"--set takes KEY=VALUE, not {assignment!r}")
        variables[key.strip()] = yaml.safe_load(value) if value.strip() else ""
    return variables


def render(name_or_path: str, variables: dict) -> dict:
    """The pipeline spec of a template with its variables filled in (undefined ones are errors)."""
    # Beam YAML takes half a second to import (js2py, pandas): only template runs pay for it.
    from apache_beam.yaml import yaml_transform

    text = yaml_transform.expand_jinja(template_text(name_or_path), variables)
    return yaml.load(text, Loader=yaml_transform.SafeLineLoader)


# Flex Template parameter validation: what each option's type accepts.
_REGEX_BY_TYPE = {int: r"^[0-9]+$", float: r"^[0-9]*\.?[0-9]+$"}
_BOOLEAN_REGEX = r"^(true|false)$"
_REQUIRED = {"output_dir"}


def flex_template_metadata() -> dict:
    """Dataflow Flex Template `metadata.json`: one parameter per crawl2clip option, with its
    help text and a validation regex where the type allows one."""
    parser = argparse.ArgumentParser()
    Crawl2ClipOptions._add_argparse_args(parser)
    parameters = []
    for action in parser._actions:
        if action.dest == "help":
            continue
        parameter = {
            "name": action.dest,
            "label": action.dest.replace("_", " ").capitalize(),
            "helpText": action.help,
            "isOptional": action.dest not in _REQUIRED,
        }
        if isinstance(action, argparse._StoreTrueAction):
            parameter["regexes"] = [_BOOLEAN_REGEX]
        elif action.type in _REGEX_BY_TYPE:
            parameter["regexes"] = [_REGEX_BY_TYPE[action.type]]
        parameters.append(parameter)
    return {
        "name": "crawl2clip",
        "description": "Common Crawl to CLIP training data: (image URL, alt text) candidates from "
                       "WARC/ARC/WAT archives, language split, image download, CLIP scoring and content "
                       "tags, SemDeDup + DBP pruning.",
        "parameters": parameters,
    }


def flex_template_metadata_json() -> str:
    return json.dumps(flex_template_metadata(), indent=2, ensure_ascii=False) + "\n"
