"""crawl2clip: web crawls in, CLIP training data out.

The project's folders (`pipelines/`, `transforms/`, `models/`) are installed under this one
import root (see setup.py), so `import crawl2clip.transforms.extract` works installed, editable
and on remote Beam workers without claiming generic top-level names like `models`.
"""

__version__ = "0.1.0"
