"""`crawl2clip compare --demo`: does filtering help on a crawl where we know the truth?

It writes a sample crawl bigger and noisier than `crawl2clip demo`'s (pipelines/sample_crawl.py:
4,000 pictures, half of the gallery captions describing another picture, every 7th picture
watermarked, one gallery image in six a near-duplicate of one of 20 popular pictures), runs the
whole pipeline on it through the replay proxy (tiny CLIP, its watermark head, SemDeDup + DBP),
renders a zero-shot dataset the crawl never held (scenes of another seed, one class folder per
shape colour, prompts naming the colour with each shape), and compares raw, clip, clip+safe and
dbp:0.5, each the tiny CLIP architecture trained from scratch with the same compute.

    crawl2clip compare --demo [--output output/compare-demo] [any compare flag]
    -> DIR/sample-crawl.warc.gz, DIR/run/ (with its report), DIR/zero-shot/, DIR/compare/ (the comparison)

Every part is kept between runs: a rerun skips the crawl, the finished stages, and the variants
already trained and evaluated.
"""

import os

from crawl2clip.models.scenes import COLORS, SHAPES, render_example
from crawl2clip.pipelines.sample_crawl import Gallery, write_sample_crawl

DEMO_OUTPUT = os.path.join("output", "compare-demo")
PAGES = 1500
GALLERY = Gallery(pictures=4000, misaligned=0.5, near_duplicates=1 / 6, popular=20, copies=6)
# crawl2clip demo's run settings, with more DBP clusters for the bigger crawl
RUN_FLAGS = ["--prune-clusters", "40"]
# every variant: the tiny CLIP's architecture from scratch, a few CPU minutes each
TRAINING_FLAGS = ["--steps", "300", "--batch-size", "128", "--lr", "2e-3"]
VARIANTS = "raw,clip,clip+safe,dbp:0.5"
ZERO_SHOT_SEED = 70_000  # scenes no tiny model was trained on (the multilingual check uses them) nor the crawl holds
ZERO_SHOT_PER_CLASS = 40
ZERO_SHOT_SIZE = 96
_PLURALS = {"cross": "crosses"}


def write_zero_shot_folders(root: str, per_class: int = ZERO_SHOT_PER_CLASS, seed: int = ZERO_SHOT_SEED) -> int:
    """ROOT/<colour>/NNNN.png: rendered scenes of `seed` by the colour of their shapes, and
    ROOT/templates.txt: one prompt per shape ("a photo of a {c} star", "{c} stars on a
    background"). Returns the number of images."""
    counts = {color: 0 for color in COLORS}
    index = 0
    while min(counts.values()) < per_class:
        image, scene = render_example(seed, index, ZERO_SHOT_SIZE)
        index += 1
        if counts[scene.color] >= per_class:
            continue
        folder = os.path.join(root, scene.color)
        os.makedirs(folder, exist_ok=True)
        image.save(os.path.join(folder, f"{counts[scene.color]:04d}.png"))
        counts[scene.color] += 1
    with open(os.path.join(root, "templates.txt"), "w") as f:
        for shape in SHAPES:
            f.write(f"a photo of a {{c}} {shape}\n{{c}} {_PLURALS.get(shape, shape + 's')} on a background\n")
    return sum(counts.values())


def _given(argv: list[str], *flags: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv for flag in flags)


def run_demo(args, argv: list[str]) -> int:
    from crawl2clip.pipelines.cli import DEMO_FLAGS, output_problem, run_end_to_end
    from crawl2clip.pipelines.compare import main as compare
    from crawl2clip.pipelines.replay import replay_proxy

    if _given(argv, "--run", "--zero-shot-dir"):
        print("crawl2clip compare --demo: the demo makes its own --run and --zero-shot-dir", flush=True)
        return 2
    output = args.output or DEMO_OUTPUT
    if problem := output_problem(output):
        print(f"crawl2clip compare --demo: {problem}", flush=True)
        return 2
    crawl = os.path.join(output, "sample-crawl.warc.gz")
    if not os.path.exists(crawl):
        summary = write_sample_crawl(crawl + ".tmp", pages=PAGES, gallery=GALLERY)
        os.replace(crawl + ".tmp", crawl)
        print(f"Sample crawl: {crawl} ({summary['pages']} pages, {summary['pictures']} pictures)", flush=True)
    run_dir = os.path.join(output, "run")
    with replay_proxy(crawl, max_requests=1_000_000) as (proxy, _):
        code = run_end_to_end(["--input", crawl, "--output", run_dir, "--proxy", proxy, *DEMO_FLAGS, *RUN_FLAGS])
    if code != 0:
        return code
    zero_shot = os.path.join(output, "zero-shot")
    if not os.path.exists(os.path.join(zero_shot, "templates.txt")):
        print(f"Zero-shot set: {write_zero_shot_folders(zero_shot)} rendered images in {zero_shot}", flush=True)
    rest = _without(argv, "--demo", "--output")
    defaults = [] if _given(argv, "--steps", "--samples-seen") else TRAINING_FLAGS[:2]
    defaults += [flag for name, value in zip(TRAINING_FLAGS[2::2], TRAINING_FLAGS[3::2]) if not _given(argv, name)
                 for flag in (name, value)]
    variants = [] if _given(argv, "--variants") else ["--variants", VARIANTS]
    return compare(["--run", run_dir, "--zero-shot-dir", zero_shot, "--output", os.path.join(output, "compare"),
                    *variants, *defaults, *rest])


def _without(argv: list[str], flag: str, valued: str) -> list[str]:
    """argv less `flag` and less `valued` with its value (`--output X` or `--output=X`)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == valued:
            skip = True
        elif arg != flag and not arg.startswith(valued + "="):
            kept.append(arg)
    return kept
