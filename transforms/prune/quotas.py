"""How many rows each cluster keeps: DBP's quadratic program, solved exactly.

The reference (`prune.py`, `pruning_qp`) asks OSQP for

    minimise ||x - N P||^2   subject to  sum x = N,  lo_j <= x_j <= |cluster_j|

with P = softmax(C / tau), then rounds with `np.rint` (so its total drifts from N). The
constraint set is a capped simplex, and the minimiser is x_j = clip(N P_j - lambda, lo_j, hi_j)
for the one lambda where the sum is N (the KKT conditions); the sum falls piecewise-linearly in
lambda, so a binary search over the 2k breakpoints and one linear solve give it exactly. The
result is then rounded by largest remainders, within the bounds, to a total of exactly N.

lo_j, as the reference sets it: min(m, |cluster_j| - 1) with m = 1, or with the reference's
cluster-balance ratio r > 0, m = int(N / k x r); never below 0 (an empty cluster has bounds
[0, 0]). The "- 1" only keeps lo below the size; a cluster of one may lose its member. When
N is below the sum of the lower bounds (a tiny target), the lower bounds are dropped.
"""

import numpy as np


def keep_probabilities(complexity: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(C / tau), computed stably."""
    z = np.asarray(complexity, dtype=np.float64) / temperature
    z = np.exp(z - z.max())
    return z / z.sum()


def lower_bounds(sizes: np.ndarray, target: int, balance: float) -> np.ndarray:
    sizes = np.asarray(sizes, dtype=np.int64)
    minimum = int(target / len(sizes) * balance) if balance > 0 else 1
    return np.maximum(np.minimum(minimum, sizes - 1), 0)


def project_capped_simplex(v: np.ndarray, lo: np.ndarray, hi: np.ndarray, total: float) -> np.ndarray:
    """The point of {sum x = total, lo <= x <= hi} nearest to v (least squares)."""
    v, lo, hi = (np.asarray(a, dtype=np.float64) for a in (v, lo, hi))
    if np.any(lo > hi) or not lo.sum() <= total <= hi.sum():
        raise ValueError(f"no x with sum {total} within the bounds (sum lo {lo.sum()}, sum hi {hi.sum()})")

    def total_at(lam: float) -> float:
        return float(np.clip(v - lam, lo, hi).sum())

    if hi.sum() == total:
        return hi.copy()
    # total_at falls from sum hi at the first breakpoint to sum lo at the last: find two
    # neighbouring breakpoints around the total
    breakpoints = np.unique(np.concatenate([v - hi, v - lo]))
    left, right = 0, len(breakpoints) - 1
    while right - left > 1:
        middle = (left + right) // 2
        if total_at(breakpoints[middle]) >= total:
            left = middle
        else:
            right = middle
    a, b = breakpoints[left], breakpoints[right]
    # between a and b every x_j is fixed at a bound or free (v_j - lambda): one linear equation
    x_mid = v - (a + b) / 2
    free = (x_mid > lo) & (x_mid < hi)
    fixed_sum = np.where(x_mid <= lo, lo, 0.0).sum() + np.where(x_mid >= hi, hi, 0.0).sum()
    lam = (v[free].sum() + fixed_sum - total) / free.sum() if free.any() else a
    x = np.clip(v - lam, lo, hi)
    x[free] = v[free] - lam
    return x


def round_to_total(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, total: int) -> np.ndarray:
    """Integers within [lo, hi], each floor(x_j) or floor(x_j) + 1, summing to `total`: the
    largest fractional parts round up (ties to the lower cluster id)."""
    lo, hi = np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)
    base = np.clip(np.floor(np.asarray(x, dtype=np.float64) + 1e-9).astype(np.int64), lo, hi)
    fraction = np.asarray(x, dtype=np.float64) - base
    missing = int(total - base.sum())
    if missing > 0:
        order = np.lexsort((np.arange(len(x)), -fraction))
        order = order[base[order] < hi[order]][:missing]
        base[order] += 1
    elif missing < 0:
        order = np.lexsort((np.arange(len(x)), fraction))
        order = order[base[order] > lo[order]][:-missing]
        base[order] -= 1
    if base.sum() != total:
        raise ValueError(f"cannot round to a total of {total} within the bounds")
    return base


def cluster_quotas(sizes: np.ndarray, complexity: np.ndarray, target: int, temperature: float,
                   balance: float) -> tuple[np.ndarray, np.ndarray]:
    """(P, integer quotas summing to `target`) for clusters of the given sizes."""
    sizes = np.asarray(sizes, dtype=np.int64)
    probabilities = keep_probabilities(complexity, temperature)
    lo = lower_bounds(sizes, target, balance)
    if lo.sum() > target:
        lo = np.zeros_like(lo)
    x = project_capped_simplex(target * probabilities, lo, sizes, target)
    return probabilities, round_to_total(x, lo, sizes, target)
