"""The per-element logic of pruning, without Beam: SemDeDup, sampling, k-means, statistics,
complexity, selection."""

import numpy as np
import pytest

from crawl2clip.transforms.prune.complexity import ClusterStats, complexities, inter_cluster_distances
from crawl2clip.transforms.prune.kmeans import (
    SmallestPriorities,
    assign,
    fit_spherical_kmeans,
    priorities,
    split_by_cluster,
)
from crawl2clip.transforms.prune.select import select_members
from crawl2clip.transforms.prune.semdedup import deduplicate, hardest_first


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def greedy_reference(vectors, eps):
    """SemDeDup with the rule as written, one row at a time against every kept row."""
    kept = []
    for i, v in enumerate(vectors):
        if not kept or max(float(vectors[j] @ v) for j in kept) <= 1 - eps:
            kept.append(i)
    return kept


def cluster_with_duplicates(rng, m=300, d=48, groups=25):
    base = unit(rng.standard_normal((m, d)) * 0.3 + 1.0)  # one cluster: every pair fairly close
    copies = []
    for g in range(groups):  # groups of 2-4 near-copies of a row
        source = base[rng.integers(m)]
        copies.append(unit(source + 0.01 * rng.standard_normal((int(rng.integers(1, 4)), d))))
    vectors = np.concatenate([base, *copies])
    return vectors[rng.permutation(len(vectors))]


@pytest.mark.parametrize("chunk_rows", [None, 1, 7, 64])
def test_semdedup_matches_the_rule_row_by_row_whatever_the_chunking(chunk_rows):
    rng = np.random.default_rng(3)
    vectors = cluster_with_duplicates(rng)
    result = deduplicate(vectors, eps=0.05, chunk_rows=chunk_rows)
    assert np.flatnonzero(result.kept).tolist() == greedy_reference(vectors, 0.05)


def test_semdedup_guarantees_and_the_kept_row_each_removed_row_duplicates():
    rng = np.random.default_rng(4)
    vectors = cluster_with_duplicates(rng)
    result = deduplicate(vectors, eps=0.05, chunk_rows=16)
    kept, removed = np.flatnonzero(result.kept), np.flatnonzero(~result.kept)
    assert len(removed) > 20
    sims = vectors @ vectors.T
    # no two kept rows are duplicates; every removed row has an earlier kept duplicate...
    kept_sims = sims[np.ix_(kept, kept)]
    np.fill_diagonal(kept_sims, -1)
    assert kept_sims.max() <= 0.95
    for r in removed:
        earlier_kept = kept[kept < r]
        best = earlier_kept[np.argmax(sims[r, earlier_kept])]
        # ...and duplicate_of names the most similar of them
        assert result.duplicate_of[r] == best
        assert result.similarity[r] == pytest.approx(sims[r, best], abs=1e-6)
        assert result.similarity[r] > 0.95
    assert np.all(result.duplicate_of[kept] == -1)


def test_semdedup_keeps_the_member_farthest_from_the_centroid():
    rng = np.random.default_rng(5)
    centroid = unit(rng.standard_normal(16))
    near = unit(centroid + 0.5 * unit(rng.standard_normal(16)))
    far_copy = unit(near + 0.02 * unit(rng.standard_normal(16)))
    vectors = np.stack([near, far_copy])
    similarities = vectors @ centroid
    order = hardest_first(np.array([10, 11]), similarities)
    result = deduplicate(vectors[order], eps=0.05)
    survivor = np.array([10, 11])[order][result.kept]
    assert len(survivor) == 1
    assert survivor[0] == [10, 11][int(np.argmin(similarities))]


def test_hardest_first_breaks_ties_by_index():
    order = hardest_first(np.array([7, 3, 5]), np.array([0.5, 0.5, 0.2], dtype=np.float32))
    assert np.array([7, 3, 5])[order].tolist() == [5, 3, 7]


def test_the_sample_does_not_depend_on_blocks_or_merge_order():
    indices = np.arange(10_000)
    whole = SmallestPriorities(300).add(priorities(indices, seed=1), indices).sample()
    rng = np.random.default_rng(0)
    pieces = np.split(rng.permutation(indices), [1000, 1100, 5000, 9999])
    partial = [SmallestPriorities(300).add(priorities(p, seed=1), p) for p in pieces]
    merged = SmallestPriorities(300)
    for p in reversed(partial):
        merged.merge(p)
    assert merged.sample().tolist() == whole.tolist()
    other_seed = SmallestPriorities(300).add(priorities(indices, seed=2), indices).sample()
    assert len(set(whole) & set(other_seed)) < 60  # a different seed, a different sample


def test_cluster_stats_merge_exactly_in_any_order():
    rng = np.random.default_rng(1)
    distances = rng.random(100_000).astype(np.float32)
    pieces = np.array_split(distances, 37)
    forward = ClusterStats()
    for p in pieces:
        forward = forward.merge(ClusterStats().add(p))
    backward = ClusterStats()
    for p in reversed(pieces):
        backward = backward.merge(ClusterStats().add(p))
    assert forward.count == backward.count == len(distances)
    assert forward.mean == backward.mean
    assert forward.mean == pytest.approx(float(distances.astype(np.float64).mean()), abs=1e-9)


def test_inter_cluster_distance_is_the_mean_over_the_nearest_other_centroids():
    rng = np.random.default_rng(2)
    centroids = unit(rng.standard_normal((40, 8)))
    d_inter = inter_cluster_distances(centroids, neighbours=5, rows_at_once=7)
    for j in range(40):
        others = np.delete(1 - centroids @ centroids[j], j)
        assert d_inter[j] == pytest.approx(np.sort(others)[:5].mean(), abs=1e-6)
    assert np.all(np.isnan(inter_cluster_distances(centroids[:1], 20)))


def test_clusters_too_small_to_measure_get_the_mean_complexity():
    c = complexities(np.array([10, 1, 0, 10]), np.array([0.2, 0.0, np.nan, 0.4]), np.array([1.0, 1.0, 1.0, 0.5]))
    assert c.tolist() == pytest.approx([0.2, 0.2, 0.2, 0.2])
    assert complexities(np.array([5]), np.array([0.3]), np.array([np.nan])).tolist() == [1.0]


def test_selection_modes():
    indices = np.array([40, 10, 30, 20, 50])
    distances = np.array([0.1, 0.5, 0.3, 0.5, 0.2], dtype=np.float32)
    hard = indices[select_members(indices, distances, 3, "hard", 0, 0)]
    easy = indices[select_members(indices, distances, 2, "easy", 0, 0)]
    assert sorted(hard) == [10, 20, 30]
    assert sorted(easy) == [40, 50]
    shuffled = np.random.default_rng(0).permutation(5)
    a = indices[select_members(indices, distances, 3, "random", 9, 4)]
    b = indices[shuffled][select_members(indices[shuffled], distances[shuffled], 3, "random", 9, 4)]
    assert sorted(a) == sorted(b)  # the arrival order does not matter
    draws = {tuple(sorted(indices[select_members(indices, distances, 3, "random", s, 4)])) for s in range(20)}
    assert len(draws) > 3  # the seed does


def test_kmeans_finds_separated_clusters_and_is_deterministic():
    recovered = 0
    for data_seed in range(10):
        rng = np.random.default_rng(data_seed)
        centres = unit(rng.standard_normal((5, 32)))
        labels = rng.integers(0, 5, size=2000)
        vectors = unit(centres[labels] + 0.05 * rng.standard_normal((2000, 32)))
        a = fit_spherical_kmeans(vectors, 5, iterations=20, seed=3)
        assert np.array_equal(a, fit_spherical_kmeans(vectors, 5, iterations=20, seed=3))
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
        nearest, similarity = assign(vectors, a)
        np.testing.assert_allclose(similarity, np.max(vectors @ a.T, axis=1))
        # each true cluster on one centroid of its own
        recovered += len(set(nearest)) == 5 and all(len(set(nearest[labels == j])) == 1 for j in range(5))
    assert recovered >= 7  # k-means is a local search: a start can still put two centroids in one cluster
    assert len(fit_spherical_kmeans(vectors[:3], 5, iterations=5, seed=0)) == 3


def test_split_by_cluster_keeps_input_order_within_a_cluster():
    clusters = np.array([2, 0, 2, 1, 0])
    out = {c: cols[0].tolist() for c, cols in split_by_cluster(clusters, np.array([9, 8, 7, 6, 5]))}
    assert out == {0: [8, 5], 1: [6], 2: [9, 7]}
