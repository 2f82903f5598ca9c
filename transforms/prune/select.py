"""Which members fill a cluster's quota (the reference's `get_paths`, `--which-to-keep`).

hard (the paper's choice): the farthest from the centroid; easy: the nearest; random: a seeded
draw. Members are first put in global-index order, so the choice never depends on the order
in which a runner delivered them; distance ties go to the lower index.
"""

import numpy as np

from crawl2clip.transforms.prune.settings import KEEP_MODES


def select_members(indices: np.ndarray, distances: np.ndarray, quota: int, keep: str, seed: int,
                   cluster: int) -> np.ndarray:
    """Positions (into the given arrays) of the `quota` members a cluster keeps, ascending."""
    if keep not in KEEP_MODES:
        raise ValueError(f"keep must be one of {KEEP_MODES}, not {keep!r}")
    quota = min(int(quota), len(indices))
    canonical = np.argsort(indices, kind="stable")
    if keep == "random":
        rng = np.random.default_rng([seed, cluster])
        chosen = canonical[rng.choice(len(canonical), size=quota, replace=False)]
    else:
        d = np.asarray(distances)[canonical]
        by_distance = np.lexsort((np.arange(len(d)), -d if keep == "hard" else d))
        chosen = canonical[by_distance[:quota]]
    return np.sort(chosen)
