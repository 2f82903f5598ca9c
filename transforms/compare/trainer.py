"""The trainer process: open_clip's own trainer (`open_clip_train.main`), with the project's
model configs (models/assets: `crawl2clip-tiny`) and an optional config file known by name.

    python -m crawl2clip.transforms.compare.trainer [--model-config FILE.json] -- OPEN_CLIP_TRAIN_ARGS

A process of its own: the trainer sets up the root logger, its threads and its device for the
whole process, and a variant's training must not inherit the previous one's.
"""

import argparse
import sys

import open_clip

from crawl2clip.models.clip import register_project_models


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, trainer_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else ([], argv)
    parser = argparse.ArgumentParser(prog="python -m crawl2clip.transforms.compare.trainer")
    parser.add_argument("--model-config", help="an open_clip model config (JSON) to register by its file name")
    args = parser.parse_args(ours)
    register_project_models()
    if args.model_config:
        open_clip.add_model_config(args.model_config)
    from open_clip_train.main import main as train  # imported late: it sets up torch and logging

    return 1 if train(trainer_args) == -1 else 0  # -1: the trainer refused (its message is logged)


if __name__ == "__main__":
    raise SystemExit(main())
