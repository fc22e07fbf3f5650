"""Method specs of the command lines: ``name[:key=value,...]``.

One grammar for every experiment. ``name`` is a key of ``gro.METHODS`` or
``adamw`` (SGD's method with the AdamW optimizer); each ``key`` is

* a hyperparameter of the method (``gro.METHODS[name].hyperparameters``),
  ``lr`` (learning rate) or ``wd`` (weight decay), given a value (fixed) or a
  range ``lo..hi`` (searched, on a log scale, by the studies that tune);
* ``every_k``: amortize the method's correction over ``every_k`` steps
  (``gro.amortized``);
* ``budget``: train for ``budget`` times the study's epochs (SGD given the
  gradient evaluations of a costlier method);
* ``opt``: the optimizer, ``sgd`` (with momentum) or ``adamw``.

>>> s = parse("sam:rho=0.01..0.5,every_k=2")
>>> s.method, s.ranges, s.every_k
('sam', {'rho': (0.01, 0.5)}, 2)
>>> parse("adamw").optimizer, parse("sgd:budget=2,lr=0.1").fixed
('adamw', {'lr': 0.1})
"""

from __future__ import annotations

import math
from typing import NamedTuple

import gradreg_optax as gro

OPTIMIZERS = ("sgd", "adamw")
BASE = ("lr", "wd")  # the optimizer's own hyperparameters


class Spec(NamedTuple):
  """A parsed method spec.

  Attributes:
    text: the spec as written (its label in tables).
    method: the key in ``gro.METHODS``.
    optimizer: ``"sgd"`` or ``"adamw"``.
    fixed: hyperparameter (or ``lr``, ``wd``) -> value.
    ranges: hyperparameter (or ``lr``, ``wd``) -> ``(lo, hi)``.
    every_k: recompute the correction every ``every_k`` steps.
    budget: the multiple of the study's epochs to train for.
  """

  text: str
  method: str
  optimizer: str = "sgd"
  fixed: dict[str, float] = {}
  ranges: dict[str, tuple[float, float]] = {}
  every_k: int = 1
  budget: float = 1.0

  @property
  def registry(self) -> gro.Method:
    return gro.METHODS[self.method]

  def gradients_per_step(self, extra: int | None = None) -> float:
    """Gradient evaluations per step, on average over an amortized period."""
    extra = self.registry.extra_gradients if extra is None else extra
    return 1.0 + extra / self.every_k

  @property
  def label(self) -> str:
    return self.text


def _number(text: str, item: str, spec: str) -> float:
  try:
    value = float(text)
  except ValueError:
    value = math.nan
  if not math.isfinite(value):
    raise ValueError(f"{item!r} in {spec!r} is not a number")
  return value


def parse(text: str) -> Spec:
  """Parses ``text`` (see the module's docstring).

  Raises:
    ValueError: one line naming what is wrong with ``text``.
  """
  name, _, options = text.partition(":")
  method, optimizer = (("sgd", "adamw") if name == "adamw" else (name, "sgd"))
  if method not in gro.METHODS:
    raise ValueError(f"unknown method {name!r} in {text!r}; expected one of "
                     f"{', '.join(gro.METHODS)}, adamw")
  hyper = gro.METHODS[method].hyperparameters
  fixed, ranges, every_k, budget = {}, {}, 1, 1.0
  for item in filter(None, options.split(",")):
    key, eq, value = item.partition("=")
    if not eq or key not in (*hyper, *BASE, "every_k", "budget", "opt"):
      raise ValueError(
          f"expected name=value with a hyperparameter of {method!r} "
          f"({', '.join((*hyper, *BASE)) or 'none'}), every_k, budget or opt "
          f"in {text!r}, got {item!r}")
    if key == "opt":
      if value not in OPTIMIZERS:
        raise ValueError(f"{item!r} in {text!r}: expected opt=sgd or adamw")
      optimizer = value
    elif key == "every_k":
      if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{item!r} in {text!r}: every_k must be an integer "
                         ">= 1")
      every_k = int(value)
      if every_k > 1 and not gro.METHODS[method].transforms:
        raise ValueError(f"{item!r} in {text!r}: {method!r} has no "
                         "correction to amortize")
    elif key == "budget":
      budget = _number(value, item, text)
      if budget <= 0:
        raise ValueError(f"{item!r} in {text!r}: budget must be > 0")
    elif ".." in value:
      lo, hi = (_number(v, item, text) for v in value.split("..", 1))
      if not 0 < lo <= hi:
        raise ValueError(f"{item!r} in {text!r}: a range lo..hi needs "
                         "0 < lo <= hi (it is searched on a log scale)")
      ranges[key] = (lo, hi)
    else:
      fixed[key] = _number(value, item, text)
      if key == "lr" and fixed[key] <= 0:
        raise ValueError(f"{item!r} in {text!r}: lr must be > 0")
      if key == "wd" and fixed[key] < 0:
        raise ValueError(f"{item!r} in {text!r}: wd must be >= 0")
      if key in hyper and not hyper[key].contains(fixed[key]):
        words = hyper[key].describe()
        raise ValueError(f"{item!r} in {text!r}: expected {key} "
                         f"{'to be ' * words.startswith('a ')}{words}, got "
                         f"{value}")
  return Spec(text, method, optimizer, fixed, ranges, every_k, budget)
