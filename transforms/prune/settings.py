"""The knobs of a prune run, in one frozen value both paths (single machine and Beam) share."""

from dataclasses import dataclass

KEEP_MODES = ("hard", "easy", "random")


@dataclass(frozen=True)
class PruneSettings:
    """Defaults are the papers': SemDeDup's eps 0.07 (LAION-440M -> 280M, the set DBP started
    from), DBP's k = 500 and l = 20 on LAION, softmax temperature 0.1, keep the hard members."""

    keep_fraction: float = 0.5  # target N = floor(keep_fraction x valid input rows)
    dedup_eps: float = 0.07  # near-duplicates: cosine similarity > 1 - eps
    # SemDeDup k = ceil(rows / this). The reference ran 50,000 clusters on LAION-440M (8,800 rows
    # each); its cost is rows x this x dim, and 5,000 halves it: on bench/prune_speed.py's 100k
    # rows, 10,000 / 5,000 / 2,500 rows per cluster removed 2,831 / 2,837 / 2,853 duplicates.
    dedup_cluster_size: int = 5_000
    clusters: int = 500  # DBP k
    neighbours: int = 20  # DBP l: d_inter over this many nearest other centroids
    temperature: float = 0.1  # DBP tau
    balance: float = 0.0  # the reference's cls_bal_ratio: lower bound floor(balance x N / k) per cluster
    keep: str = "hard"  # which members fill a cluster's quota: hard (far), easy (near), random
    seed: int = 0
    kmeans_iterations: int = 20
    points_per_centroid: int = 256  # k-means fits on a sample of k x this rows (faiss's default cap)
    block_rows: int = 32_768  # rows read, assigned and held at once

    def problems(self) -> list[str]:
        """What makes these settings unusable, as messages for the user."""
        problems = []
        if not 0.0 < self.keep_fraction <= 1.0:
            problems.append("--keep-fraction must be in (0, 1]")
        if not 0.0 <= self.dedup_eps < 1.0:
            problems.append("--dedup-eps must be in [0, 1)")
        if self.dedup_cluster_size < 1:
            problems.append("--dedup-cluster-size must be >= 1")
        if self.clusters < 1:
            problems.append("--prune-clusters must be >= 1")
        if self.neighbours < 1:
            problems.append("--prune-neighbours must be >= 1")
        if self.temperature <= 0:
            problems.append("--prune-temperature must be > 0")
        if not 0.0 <= self.balance <= 1.0:
            problems.append("--prune-balance must be in [0, 1]")
        if self.keep not in KEEP_MODES:
            problems.append(f"--prune-keep must be one of {', '.join(KEEP_MODES)}")
        if self.kmeans_iterations < 1 or self.points_per_centroid < 1:
            problems.append("--kmeans-iterations and --kmeans-points-per-centroid must be >= 1")
        return problems
