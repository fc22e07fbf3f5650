"""Every method by name, with its default hyperparameters.

The one table that command lines, experiments, benchmarks and tests build
methods from:

>>> import jax.numpy as jnp, optax
>>> import gradreg_optax as gro
>>> loss_fn = lambda p, b: jnp.sum((b * p) ** 2)
>>> sorted(gro.METHODS["forward"].defaults.items())
[('eps', 0.1), ('gamma', 0.05)]
>>> tx, train_loss = gro.METHODS["sam"](loss_fn, rho=0.1)
>>> tx = optax.chain(tx, optax.sgd(0.1))  # differentiate `train_loss`
"""

from __future__ import annotations

import types
from typing import Any, Callable, Mapping, NamedTuple

import optax

from gradreg_optax import losses
from gradreg_optax import regularization
from gradreg_optax import sam as sam_lib
from gradreg_optax._transform import LossFn


class Regularized(NamedTuple):
  """A method made ready for a training loop.

  Attributes:
    tx: the transformation to put first in the chain (the identity, which
      accepts and ignores extra arguments, for the methods that only change
      the loss).
    loss_fn: the loss to differentiate (the flooded loss for flooding, else
      the given one).
  """

  tx: optax.GradientTransformationExtraArgs
  loss_fn: LossFn


class Method(NamedTuple):
  """One method of the registry; call it to build it.

  Attributes:
    name: the key in :data:`METHODS` (and the command-line name).
    label: a short display name.
    summary: the update in one line, and the paper.
    defaults: its hyperparameters and their default values.
    extra_gradients: gradient evaluations per step beyond the caller's own
      (the exact methods cost about two).
    transforms: whether it adds a transformation (false for SGD and
      flooding, which only change the loss); only those take ``mask``,
      ``axis_name``, ``per_device_perturbation`` and amortization.
    make: ``make(loss_fn, has_aux, options, **hyperparameters)``.
  """

  name: str
  label: str
  summary: str
  defaults: Mapping[str, float]
  extra_gradients: int
  transforms: bool
  make: Callable[..., Regularized]

  def __call__(self, loss_fn: LossFn, *, has_aux: bool = False,
               **kwargs: Any) -> Regularized:
    """Builds the method; ``kwargs`` override hyperparameters or give options.

    Args:
      loss_fn: ``loss_fn(params, batch)`` (``(loss, aux)`` with ``has_aux``).
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
      **kwargs: hyperparameters (see :attr:`defaults`) and, for the methods
        that transform, ``mask``, ``axis_name`` and
        ``per_device_perturbation``.

    Returns:
      A :class:`Regularized` pair ``(tx, loss_fn)``.
    """
    options = {k: kwargs.pop(k) for k in _OPTIONS if k in kwargs}
    unknown = sorted(set(kwargs) - set(self.defaults))
    if unknown or (options and not self.transforms):
      given = unknown or sorted(options)
      accepted = sorted(self.defaults) + (list(_OPTIONS) if self.transforms
                                          else [])
      raise TypeError(f"gradreg_optax.METHODS[{self.name!r}] takes "
                      f"{accepted or 'no arguments'} besides loss_fn and "
                      f"has_aux; got {given}.")
    return self.make(loss_fn, has_aux, options, **{**self.defaults, **kwargs})


_OPTIONS = ("mask", "axis_name", "per_device_perturbation")


def _gr(method: str) -> Callable[..., Regularized]:
  def make(loss_fn, has_aux, options, gamma, eps=0.1):
    return Regularized(regularization.gradient_regularization(
        loss_fn, gamma, method=method, eps=eps, has_aux=has_aux, **options),
        loss_fn)
  return make


def _sam(loss_fn, has_aux, options, rho):
  return Regularized(sam_lib.sam(loss_fn, rho, has_aux=has_aux, **options),
                     loss_fn)


def _asam(loss_fn, has_aux, options, rho, adaptive_eta):
  return Regularized(sam_lib.sam(loss_fn, rho, adaptive=True,
                                 adaptive_eta=adaptive_eta, has_aux=has_aux,
                                 **options), loss_fn)


def _norm_penalty(loss_fn, has_aux, options, alpha, r):
  return Regularized(sam_lib.gradient_norm_penalty(
      loss_fn, alpha, r, has_aux=has_aux, **options), loss_fn)


def _identity():
  return optax.with_extra_args_support(optax.identity())


def _sgd(loss_fn, has_aux, options):
  del has_aux, options
  return Regularized(_identity(), loss_fn)


def _flooding(loss_fn, has_aux, options, b):
  del options
  return Regularized(_identity(), losses.flooding(loss_fn, b, has_aux=has_aux))


_FD = {"gamma": 0.05, "eps": 0.1}
_EXACT = {"gamma": 0.05}
_KARAKIDA = "Karakida et al., ICML 2023"

METHODS: Mapping[str, Method] = types.MappingProxyType({m.name: m for m in (
    Method("sgd", "SGD", "g (no regularization)", {}, 0, False, _sgd),
    Method("forward", "F-GR", "g + gamma (grad L(theta + eps g) - g) / eps; "
           + _KARAKIDA, _FD, 1, True, _gr("forward")),
    Method("backward", "B-GR", "g + gamma (g - grad L(theta - eps g)) / eps; "
           + _KARAKIDA, _FD, 1, True, _gr("backward")),
    Method("central", "central GR", "g + gamma (grad L(theta + eps g) - grad "
           "L(theta - eps g)) / (2 eps)", _FD, 2, True, _gr("central")),
    Method("double_backprop", "GR (double backprop)", "g + gamma grad <grad L,"
           " g>; Drucker & LeCun 1992, " + _KARAKIDA, _EXACT, 2, True,
           _gr("double_backprop")),
    Method("jvp", "GR (jvp)", "g + gamma jvp(grad L, g); Pearlmutter 1994",
           _EXACT, 2, True, _gr("jvp")),
    Method("sam", "SAM", "grad L(theta + rho g / ||g||); Foret et al., ICLR "
           "2021", {"rho": 0.05}, 1, True, _sam),
    Method("asam", "ASAM", "grad L(theta + rho T^2 g / ||T g||), T = |theta| "
           "+ eta; Kwon et al., ICML 2021", {"rho": 0.5, "adaptive_eta": 0.01},
           1, True, _asam),
    Method("gradient_norm_penalty", "norm penalty", "(1 - alpha) g + alpha "
           "grad L(theta + r g / ||g||); Zhao et al., ICML 2022",
           {"alpha": 0.8, "r": 0.1}, 1, True, _norm_penalty),
    Method("flooding", "flooding", "grad |L - b| + b; Ishida et al., ICML "
           "2020", {"b": 0.02}, 0, False, _flooding),
)})
"""The methods by name: ``METHODS[name](loss_fn, **hyperparameters)``."""
