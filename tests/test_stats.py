"""Bootstrap intervals: cover the mean of a known sample, shrink with more data, respect the seed level."""
import numpy as np

from safemeta.evaluation.stats import bootstrap, iqm


def test_interval_covers_the_mean_and_shrinks_with_more_data():
    rng = np.random.default_rng(0)
    small = [rng.normal(3.0, 1.0, size=10) for _ in range(3)]
    large = [rng.normal(3.0, 1.0, size=200) for _ in range(12)]
    a, b = bootstrap(small), bootstrap(large)
    for est, groups in ((a, small), (b, large)):
        assert est.low <= np.mean(np.concatenate(groups)) <= est.high
        assert est.low <= 3.0 <= est.high
    assert (b.high - b.low) < 0.5 * (a.high - a.low)


def test_coverage_is_near_nominal():
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(200):
        groups = [rng.exponential(2.0, size=20) for _ in range(5)]
        est = bootstrap(groups, reps=400, seed=trial)
        hits += est.low <= 2.0 <= est.high
    assert 0.85 <= hits / 200 <= 0.99


def test_seed_level_variation_widens_the_interval():
    rng = np.random.default_rng(2)
    same = [rng.normal(0.0, 1.0, size=50) for _ in range(4)]
    shifted = [g + off for g, off in zip(same, (-2.0, -1.0, 1.0, 2.0))]  # seeds disagree
    a, b = bootstrap(same), bootstrap(shifted)
    assert (b.high - b.low) > 2 * (a.high - a.low)


def test_iqm_ignores_the_tails():
    x = np.array([0.0] * 25 + [1.0] * 50 + [100.0] * 25)
    assert iqm(x) == 1.0
    assert bootstrap([x], statistic=iqm).value == 1.0
