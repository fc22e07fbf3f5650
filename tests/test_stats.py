"""Tests for gradreg_optax/experiments/stats.py."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from gradreg_optax.experiments import stats


def test_paired_matches_scipy_paired_t_test():
  rng = np.random.default_rng(0)
  a = rng.normal(0.9, 0.02, 10)
  b = a - rng.normal(0.01, 0.01, 10)
  d = stats.paired(a, b)
  ref = scipy_stats.ttest_rel(a, b)
  assert d.p == pytest.approx(ref.pvalue, rel=1e-9)
  diff = a - b
  half = scipy_stats.t.ppf(0.975, 9) * diff.std(ddof=1) / math.sqrt(10)
  assert d.mean == pytest.approx(diff.mean(), rel=1e-12)
  assert (d.low, d.high) == pytest.approx(
      (diff.mean() - half, diff.mean() + half), rel=1e-9)
  assert d.std == pytest.approx(diff.std(ddof=1), rel=1e-12)
  assert d.better + d.equal + d.worse == 10


def test_one_seed_has_no_spread_interval_or_test():
  d = stats.paired([0.9], [0.85])
  assert (d.n, d.std, d.low, d.high, d.p) == (1, None, None, None, None)
  assert d.mean == pytest.approx(0.05)
  assert "n/a" in d.text(100)
  assert stats.std([0.3]) is None
  assert stats.mean_std_text([0.5]) == "50.00 ± n/a"


def test_equal_differences_are_exact():
  same = stats.paired([0.9, 0.8], [0.9, 0.8])
  assert (same.mean, same.std, same.low, same.high, same.p) == (
      0.0, 0.0, 0.0, 0.0, 1.0)
  shifted = stats.paired([0.75, 0.5], [0.5, 0.25])
  assert shifted.p == 0.0 and shifted.low == shifted.high


def test_holm_step_down_by_hand():
  # Sorted 0.01, 0.02, 0.03, 0.2 with m = 4: 0.04, 0.06, 0.06 (monotone),
  # 0.2; None stays out of the family.
  got = stats.holm([0.03, None, 0.01, 0.2, 0.02])
  assert got[1] is None
  np.testing.assert_allclose([got[0], got[2], got[3], got[4]],
                             [0.06, 0.04, 0.2, 0.06])
  assert stats.holm([0.5, 0.9]) == [1.0, 1.0]


def test_binomial_se_and_round_trip():
  assert stats.binomial_se(0.5, 100) == pytest.approx(0.05)
  d = stats.paired([0.9, 0.95, 0.93], [0.9, 0.9, 0.91])
  assert stats.Difference.from_dict({**d.as_dict(), "p_holm": 0.1}) == d


def test_bad_input_names_the_function():
  with pytest.raises(ValueError, match="paired"):
    stats.paired([0.9, 0.8], [0.9])
