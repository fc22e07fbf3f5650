"""Tests for gradreg_optax/experiments/spec.py."""

import pytest

import gradreg_optax as gro
from gradreg_optax.experiments import spec


@pytest.mark.parametrize("name", list(gro.METHODS))
def test_every_registry_method_parses_by_name(name):
  s = spec.parse(name)
  assert (s.method, s.optimizer, s.every_k, s.budget) == (name, "sgd", 1, 1.0)
  assert s.gradients_per_step() == 1 + gro.METHODS[name].extra_gradients


def test_options():
  s = spec.parse("forward:gamma=0.1,eps=0.01..0.2,every_k=5,lr=0.05,"
                 "opt=adamw")
  assert s.fixed == {"gamma": 0.1, "lr": 0.05}
  assert s.ranges == {"eps": (0.01, 0.2)}
  assert (s.every_k, s.optimizer) == (5, "adamw")
  assert s.gradients_per_step() == pytest.approx(1.2)
  assert spec.parse("sgd:budget=2").budget == 2.0
  a = spec.parse("adamw")
  assert (a.method, a.optimizer, a.text) == ("sgd", "adamw", "adamw")


@pytest.mark.parametrize("text, message", [
    ("adam", "unknown method 'adam'"),
    ("sam:radius=1", "expected name=value"),
    ("sam:rho", "expected name=value"),
    ("sam:rho=x", "is not a number"),
    ("sam:rho=0.5..0.1", "0 < lo <= hi"),
    ("sam:rho=0..0.1", "0 < lo <= hi"),
    ("sam:every_k=0", "every_k must be an integer"),
    ("flooding:every_k=2", "no correction to amortize"),
    ("sgd:budget=-1", "budget must be > 0"),
    ("sgd:lr=0", "lr must be > 0"),
    ("sgd:opt=lion", "opt=sgd or adamw"),
])
def test_errors_are_one_line_naming_the_spec(text, message):
  with pytest.raises(ValueError, match=message) as e:
    spec.parse(text)
  assert "\n" not in str(e.value)
