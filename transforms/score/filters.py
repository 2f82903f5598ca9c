"""What the scoring stage drops: pairs under their split's CLIP similarity threshold and,
only when asked, pairs over a content-tag threshold. The first reason that applies is recorded."""

from dataclasses import replace

import numpy as np

from crawl2clip.transforms.score.scoring import ScoredShard, pair_routes
from crawl2clip.transforms.score.settings import TAG_COLUMNS, TOXIC_COLUMN, UNSAFE, WATERMARK, Thresholds

LOW_SIMILARITY = "low_similarity"

TAG_REASONS = {TAG_COLUMNS[UNSAFE]: "unsafe", TAG_COLUMNS[WATERMARK]: "watermark", TOXIC_COLUMN: "toxic"}


def drop_reasons(routes: list[str], similarity: np.ndarray, tags: dict[str, np.ndarray],
                 thresholds: Thresholds) -> list[str | None]:
    """Per pair, why it is dropped (None: kept)."""
    reasons: list[str | None] = [None] * len(routes)
    if thresholds.score_only:
        return reasons
    minimum = np.array([thresholds.min_similarity[route] for route in routes], np.float32)
    checks = [(similarity < minimum, LOW_SIMILARITY)]
    for column, limit in thresholds.max_tags.items():
        if tags.get(column) is None:  # refused before the run; here it would be a bug
            raise ValueError(f"--max-{column}: {column} was not computed")
        checks.append((tags[column] > limit, TAG_REASONS[column]))
    for failed, reason in reversed(checks):  # the first check's reason wins
        for i in np.flatnonzero(failed):
            reasons[i] = reason
    return reasons


def filter_shard(shard: ScoredShard, thresholds: Thresholds) -> ScoredShard:
    routes = pair_routes(shard.table) if len(shard) else []
    return replace(shard, drop_reasons=drop_reasons(routes, shard.similarity, shard.tags, thresholds))
