"""The statistics of the experiments: spreads, paired differences, Holm.

One place for what every study reports, so that they agree on small samples:
sample standard deviations use ``ddof=1``; with one seed there is no spread,
no interval and no test, and the fields say so (``None``, printed "n/a")
rather than a made-up number.

>>> d = paired([0.92, 0.93, 0.95], [0.90, 0.92, 0.92])
>>> round(d.mean, 4), round(d.std, 4), d.n, (d.better, d.equal, d.worse)
(0.02, 0.01, 3, (3, 0, 0))
>>> round(d.low, 4), round(d.high, 4), round(d.p, 3)
(-0.0048, 0.0448, 0.074)
>>> paired([0.9], [0.8]).text(scale=100)
'+10.00 (n/a, 1 seed)'
>>> holm([0.01, 0.04, 0.03])
[0.03, 0.06, 0.06]
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np


def std(values: Sequence[float]) -> float | None:
  """The sample standard deviation (``ddof=1``); ``None`` for fewer than 2.

  >>> std([1.0, 2.0, 3.0]), std([1.0])
  (1.0, None)
  """
  values = np.asarray(values, np.float64)
  return float(np.std(values, ddof=1)) if values.size > 1 else None


def summary(values: Sequence[float | None]) -> dict[str, float | int | None]:
  """``n``, ``mean``, ``std`` (:func:`std`), ``min`` and ``max`` of the
  values that are not ``None`` (a diverged run, say); ``None`` where there
  are too few values for the field.

  >>> summary([1.0, None, 3.0])
  {'n': 2, 'mean': 2.0, 'std': 1.4142135623730951, 'min': 1.0, 'max': 3.0}
  >>> summary([2.0])["std"], summary([])["mean"]
  (None, None)
  """
  v = np.array([x for x in values if x is not None], np.float64)
  if not v.size:
    return dict(n=0, mean=None, std=None, min=None, max=None)
  return dict(n=int(v.size), mean=float(v.mean()), std=std(v),
              min=float(v.min()), max=float(v.max()))


def text_or_na(value: float | None, fmt: str) -> str:
  """``value`` in ``fmt``, or ``"n/a"`` when there is none (the spread of
  one seed, a test with one seed)."""
  return "n/a" if value is None else format(value, fmt)


def t_quantile(confidence: float, dof: int) -> float:
  """The two-sided Student t quantile: ``P(|T| <= q) = confidence``.

  >>> round(t_quantile(0.95, 9), 3)
  2.262
  """
  from scipy import stats  # pylint: disable=import-outside-toplevel
  return float(stats.t.ppf(0.5 + confidence / 2, dof))


class Difference(NamedTuple):
  """Paired differences ``a - b`` (one per seed) and their t statistics.

  Attributes:
    differences: the differences, seed by seed.
    n: how many.
    mean: their mean.
    std: their sample standard deviation (``None`` for ``n < 2``).
    low, high: the ``confidence`` t interval of the mean (``None`` for
      ``n < 2``; the mean itself when every difference is equal).
    p: the two-sided p-value of the paired t test of mean 0 (``None`` for
      ``n < 2``; 1 or 0 when every difference is equal, to 0 or not).
    better, equal, worse: how many differences are > 0, == 0, < 0.
    confidence: the level of the interval.
  """

  differences: tuple[float, ...]
  n: int
  mean: float
  std: float | None
  low: float | None
  high: float | None
  p: float | None
  better: int
  equal: int
  worse: int
  confidence: float = 0.95

  def text(self, scale: float = 1.0, digits: int = 2) -> str:
    """``"+1.20 [+0.31, +2.09]"``, or ``"+1.20 (n/a, 1 seed)"`` for one."""
    f = lambda x: f"{scale * x:+.{digits}f}"
    if self.low is None:
      return f"{f(self.mean)} (n/a, {self.n} seed{'s' * (self.n != 1)})"
    return f"{f(self.mean)} [{f(self.low)}, {f(self.high)}]"

  def as_dict(self) -> dict[str, object]:
    return {**self._asdict(), "differences": list(self.differences)}

  @classmethod
  def from_dict(cls, d: dict[str, object]) -> "Difference":
    """The inverse of :meth:`as_dict` (other keys are ignored)."""
    fields = {k: d[k] for k in cls._fields if k in d}
    return cls(**{**fields, "differences": tuple(d["differences"])})


def paired(a: Sequence[float], b: Sequence[float],
           confidence: float = 0.95) -> Difference:
  """The paired comparison of ``a`` and ``b`` (same seeds, same order).

  Args:
    a, b: one value per seed each.
    confidence: the level of the t interval.

  Returns:
    A :class:`Difference` of ``a - b``.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1 or a.size == 0:
    raise ValueError(f"paired: `a` and `b` must be non-empty vectors of the "
                     f"same length, got shapes {a.shape} and {b.shape}.")
  d = a - b
  n, mean, s = d.size, float(d.mean()), std(d)
  counts = int(np.sum(d > 0)), int(np.sum(d == 0)), int(np.sum(d < 0))
  if s is None:
    return Difference(tuple(d.tolist()), n, mean, None, None, None, None,
                      *counts, confidence)
  if s == 0:
    return Difference(tuple(d.tolist()), n, mean, 0.0, mean, mean,
                      1.0 if mean == 0 else 0.0, *counts, confidence)
  se = s / math.sqrt(n)
  half = t_quantile(confidence, n - 1) * se
  from scipy import stats  # pylint: disable=import-outside-toplevel
  p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
  return Difference(tuple(d.tolist()), n, mean, s, mean - half, mean + half,
                    p, *counts, confidence)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
  """Holm's step-down adjustment of ``pvalues`` (``None`` stays ``None``).

  Reject where the adjusted value is below the level: this controls the
  family-wise error over the non-``None`` p-values.
  """
  known = [(p, i) for i, p in enumerate(pvalues) if p is not None]
  m = len(known)
  adjusted: list[float | None] = [None] * len(pvalues)
  running = 0.0
  for rank, (p, i) in enumerate(sorted(known)):
    running = max(running, min(1.0, (m - rank) * p))
    adjusted[i] = running
  return adjusted


def binomial_se(accuracy: float, n: int) -> float:
  """The standard error of an accuracy measured on ``n`` test examples.

  The test set's own sampling error, ``sqrt(acc (1 - acc) / n)``: a second
  test set of the same size would move the accuracy by about this much.

  >>> round(binomial_se(0.9, 359), 4)
  0.0158
  """
  return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / n)


def mean_std_text(values: Sequence[float], scale: float = 100.0,
                  digits: int = 2) -> str:
  """``"93.10 ± 1.30"``; ``"93.10 ± n/a"`` for one value."""
  s = std(values)
  spread = "n/a" if s is None else f"{scale * s:.{digits}f}"
  return f"{scale * float(np.mean(values)):.{digits}f} ± {spread}"
