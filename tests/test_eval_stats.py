"""Bootstrap intervals over trajectories: they cover the figure, shrink with data, resample whole
trajectories, and paired differences cancel what two models share."""

from __future__ import annotations

import numpy as np
import pytest

from critstep.evaluation.stats import Ratio, interval, paired_difference, ratio_of, resample_weights


def test_interval_covers_the_value_and_shrinks_with_more_trajectories():
    rng = np.random.default_rng(0)
    small = ratio_of([(rng.binomial(10, 0.4), 10) for _ in range(20)])
    large = ratio_of([(rng.binomial(10, 0.4), 10) for _ in range(500)])
    lo_s, hi_s = interval(small, resample_weights(20))
    lo_l, hi_l = interval(large, resample_weights(500))
    assert lo_s <= small.value <= hi_s and lo_l <= large.value <= hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 3
    assert 0.015 < hi_l - lo_l < 0.045  # ~ 2 x 1.96 x sqrt(0.4 x 0.6 / 5000 steps) for independent trajectories


def test_whole_trajectories_are_resampled():
    """Ten trajectories that are all right or all wrong: the interval must be wide, not the step-level one."""
    ratio = ratio_of([(50, 50)] * 5 + [(0, 50)] * 5)
    lo, hi = interval(ratio, resample_weights(10))
    assert ratio.value == 0.5 and hi - lo > 0.4


def test_ratio_of_sums_weights_long_trajectories_more():
    assert ratio_of([(1, 1), (0, 99)]).value == pytest.approx(0.01)


def test_degenerate_cases():
    assert interval(ratio_of([(3, 4)]), resample_weights(1)) is None  # one trajectory: no interval
    assert interval(Ratio(np.zeros(0), np.zeros(0)), resample_weights(0)) is None
    assert interval(ratio_of([(1, 1), (1, 1)]), resample_weights(2)) == [1.0, 1.0]
    assert resample_weights(5, seed=3).tolist() == resample_weights(5, seed=3).tolist()
    assert resample_weights(5, 100).sum(axis=1).tolist() == [5] * 100


def test_paired_difference_cancels_shared_difficulty():
    rng = np.random.default_rng(1)
    difficulty = rng.uniform(0.05, 0.95, size=60)
    steps = rng.integers(5, 30, size=60)
    a = ratio_of([(round(d * n), n) for d, n in zip(difficulty, steps, strict=True)])
    b = ratio_of([(round(d * n) + (1 if i % 3 == 0 else 0), n) for i, (d, n) in enumerate(zip(difficulty, steps, strict=True))])
    weights = resample_weights(60)
    paired = paired_difference(b, a, weights)
    lo, hi = paired["ci95"]
    assert 0 < lo <= paired["difference"] <= hi  # a small, consistent gain is detected ...
    a_lo, a_hi = interval(a, weights)
    b_lo, b_hi = interval(b, weights)
    assert b_lo < a_hi  # ... though the two separate intervals overlap
    same = paired_difference(a, a, weights)
    assert same["difference"] == 0 and same["ci95"] == [0.0, 0.0]
