"""DBP's quota step: the capped-simplex projection and its rounding, against brute-force references."""

import itertools

import numpy as np
import pytest

from crawl2clip.transforms.prune.quotas import (
    cluster_quotas,
    keep_probabilities,
    lower_bounds,
    project_capped_simplex,
    round_to_total,
)


def qp_by_enumeration(v, lo, hi, total):
    """The QP min ||x - v||^2, sum x = total, lo <= x <= hi, solved by trying every face: each
    coordinate at lo, at hi, or free; on a face the minimiser is v - lambda on the free ones."""
    best, best_x = np.inf, None
    for states in itertools.product((0, 1, 2), repeat=len(v)):
        states = np.array(states)
        free = states == 2
        x = np.where(states == 0, lo, hi).astype(float)
        if free.any():
            lam = (v[free].sum() + x[~free].sum() - total) / free.sum()
            x[free] = v[free] - lam
        if abs(x.sum() - total) > 1e-7 or np.any(x < lo - 1e-9) or np.any(x > hi + 1e-9):
            continue
        cost = float(((x - v) ** 2).sum())
        if cost < best - 1e-12:
            best, best_x = cost, x
    return best_x


def integer_optimum(v, lo, hi, total):
    """Smallest ||x - v||^2 over the integer points of the same set, by listing them."""
    best = np.inf
    for x in itertools.product(*(range(int(a), int(b) + 1) for a, b in zip(lo, hi))):
        if sum(x) == total:
            best = min(best, float(((np.array(x) - v) ** 2).sum()))
    return best


def random_case(rng, k):
    hi = rng.integers(0, 7, size=k)
    lo = np.minimum(rng.integers(0, 3, size=k), hi)
    total = int(rng.integers(lo.sum(), hi.sum() + 1))
    p = rng.dirichlet(np.full(k, 0.5))
    return total * p, lo, hi, total


@pytest.mark.parametrize("seed", range(60))
def test_projection_equals_the_qp_solved_by_enumeration(seed):
    rng = np.random.default_rng(seed)
    v, lo, hi, total = random_case(rng, int(rng.integers(2, 7)))
    x = project_capped_simplex(v, lo, hi, total)
    reference = qp_by_enumeration(v, lo, hi, total)
    np.testing.assert_allclose(x, reference, atol=1e-9)
    assert x.sum() == pytest.approx(total)


@pytest.mark.parametrize("seed", range(40))
def test_rounding_gives_the_integer_least_squares_point_with_the_exact_total(seed):
    rng = np.random.default_rng(1000 + seed)
    v, lo, hi, total = random_case(rng, int(rng.integers(2, 6)))
    x = project_capped_simplex(v, lo, hi, total)
    rounded = round_to_total(x, lo, hi, total)
    assert rounded.sum() == total
    assert np.all(rounded >= lo) and np.all(rounded <= hi)
    assert np.all(np.abs(rounded - x) < 1)
    assert float(((rounded - v) ** 2).sum()) == pytest.approx(integer_optimum(v, lo, hi, total), abs=1e-9)


def test_projection_on_many_clusters_meets_the_kkt_conditions():
    rng = np.random.default_rng(7)
    sizes = rng.integers(0, 5000, size=5000)
    target = int(sizes.sum() * 0.3)
    v = target * rng.dirichlet(np.full(len(sizes), 0.3))
    lo = lower_bounds(sizes, target, 0.0)
    x = project_capped_simplex(v, lo, sizes, target)
    assert x.sum() == pytest.approx(target)
    # KKT: one lambda; free coordinates sit at v - lambda, the others at the bound v - lambda passed
    free = (x > lo + 1e-9) & (x < sizes - 1e-9)
    lam = (v - x)[free]
    assert np.ptp(lam) < 1e-6
    assert np.all(v[x <= lo + 1e-9] - lam[0] <= lo[x <= lo + 1e-9] + 1e-6)
    assert np.all(v[x >= sizes - 1e-9] - lam[0] >= sizes[x >= sizes - 1e-9] - 1e-6)


def test_an_infeasible_total_is_refused():
    with pytest.raises(ValueError):
        project_capped_simplex(np.array([1.0, 1.0]), np.array([0, 0]), np.array([1, 1]), 3)


def test_lower_bounds_follow_the_reference():
    sizes = np.array([0, 1, 2, 50, 500])
    # cls_bal_ratio 0: at least one row, never more than size - 1, never negative
    assert lower_bounds(sizes, 100, 0.0).tolist() == [0, 0, 1, 1, 1]
    # cls_bal_ratio r: int(N / k x r)
    assert lower_bounds(sizes, 100, 0.5).tolist() == [0, 0, 1, 10, 10]


def test_quotas_follow_complexity_and_hit_the_target():
    sizes = np.array([100, 100, 100, 100])
    complexity = np.array([0.1, 0.2, 0.3, 0.4])
    probabilities, quotas = cluster_quotas(sizes, complexity, 170, temperature=0.1, balance=0.0)
    assert quotas.sum() == 170
    assert np.all(np.diff(quotas) >= 0) and quotas[-1] > quotas[0]
    np.testing.assert_allclose(probabilities, keep_probabilities(complexity, 0.1))
    assert probabilities.sum() == pytest.approx(1.0)
    # a huge temperature means the same share for every cluster
    _, flat = cluster_quotas(sizes, complexity, 170, temperature=1e6, balance=0.0)
    assert flat.max() - flat.min() <= 1


def test_a_target_below_the_lower_bounds_drops_them():
    sizes = np.array([10, 10, 10, 10])
    _, quotas = cluster_quotas(sizes, np.array([1.0, 0.0, 0.0, 0.0]), 2, temperature=0.1, balance=0.0)
    assert quotas.sum() == 2 and quotas[0] == 2
