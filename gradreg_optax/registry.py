"""Every method by name, with its default hyperparameters.

The one table that command lines, experiments, benchmarks and tests build
methods from:

>>> import jax.numpy as jnp, optax
>>> import gradreg_optax as gro
>>> loss_fn = lambda p, b: jnp.sum((b * p) ** 2)
>>> gro.METHODS["forward"]
Method('forward': F-GR(gamma=0.05, eps=0.1))
>>> gro.METHODS["forward"].hyperparameters["eps"].domain
'(0, inf)'
>>> tx, train_loss = gro.METHODS["sam"](loss_fn, rho=0.1)
>>> tx = optax.chain(tx, optax.sgd(0.1))  # differentiate `train_loss`
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import optax

from gradreg_optax import losses
from gradreg_optax import perturbed
from gradreg_optax import regularization
from gradreg_optax import sam as sam_lib
from gradreg_optax._step import Hyperparameter
from gradreg_optax._transform import LossFn

# The modules, not the functions of the same names that the package exports.
fisher_sam, friendly_sam, gsam, vasso, wsam = (
    importlib.import_module(f"gradreg_optax.{name}") for name in (
        "fisher_sam", "friendly_sam", "gsam", "vasso", "wsam"))


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
    hyperparameters: name -> :class:`~gradreg_optax.Hyperparameter` (default,
      domain, help), in the order of the constructor's arguments.
    extra_gradients: gradient evaluations per step beyond the caller's own
      (the exact methods cost about two).
    transformation: ``transformation(loss_fn, **hyperparameters, has_aux=,
      mask=, axis_name=, per_device_perturbation=)``, the constructor of its
      gradient transformation; ``None`` for the methods that only change the
      loss (SGD, flooding), which take no ``mask``, ``axis_name``,
      ``per_device_perturbation`` or amortization.
    loss: ``loss(loss_fn, has_aux=, **hyperparameters)``, the loss to
      differentiate, for the methods that change it (``None``: the given
      loss).
    reference: a hand-written step for benchmarks and tests,
      ``reference(grad, params, g, **hyperparameters) -> update`` with
      ``grad(p)`` the gradient at ``p`` (pytrees throughout; ``None`` where
      none is written). For a method with state (see
      :attr:`reference_init`), ``reference(grad, params, g, state,
      **hyperparameters) -> (update, state)``.
    reference_init: for a method with state, ``reference_init(params) ->
      state``, the state of :attr:`reference` before the first step
      (``None`` for a method without state).
  """

  name: str
  label: str
  summary: str
  hyperparameters: Mapping[str, Hyperparameter]
  extra_gradients: int
  transformation: Callable[..., optax.GradientTransformationExtraArgs] | None
  loss: Callable[..., LossFn] | None = None
  reference: Callable[..., Any] | None = None
  reference_init: Callable[..., Any] | None = None

  @property
  def defaults(self) -> dict[str, float]:
    """Each hyperparameter's default value."""
    return {k: h.default for k, h in self.hyperparameters.items()}

  @property
  def transforms(self) -> bool:
    """Whether the method adds a transformation to the chain."""
    return self.transformation is not None

  def __call__(self, loss_fn: LossFn, *, has_aux: bool = False,
               **kwargs: Any) -> Regularized:
    """Builds the method; ``kwargs`` override hyperparameters or give options.

    Args:
      loss_fn: ``loss_fn(params, batch)`` (``(loss, aux)`` with ``has_aux``).
      has_aux: whether ``loss_fn`` returns ``(loss, aux)``.
      **kwargs: hyperparameters (see :attr:`hyperparameters`) and, for the
        methods that transform, ``mask``, ``axis_name`` and
        ``per_device_perturbation``.

    Returns:
      A :class:`Regularized` pair ``(tx, loss_fn)``.
    """
    options = {k: kwargs.pop(k) for k in _OPTIONS if k in kwargs}
    unknown = sorted(set(kwargs) - set(self.hyperparameters))
    if unknown or (options and not self.transforms):
      given = unknown or sorted(options)
      accepted = list(self.hyperparameters) + (list(_OPTIONS)
                                               if self.transforms else [])
      raise TypeError(f"gradreg_optax.METHODS[{self.name!r}] takes "
                      f"{accepted or 'no arguments'} besides loss_fn and "
                      f"has_aux; got {given}.")
    hyper = {**self.defaults, **kwargs}
    if self.transformation is None:
      tx = optax.with_extra_args_support(optax.identity())
      train_loss = (loss_fn if self.loss is None
                    else self.loss(loss_fn, has_aux=has_aux, **hyper))
      return Regularized(tx, train_loss)
    return Regularized(self.transformation(loss_fn, **hyper, has_aux=has_aux,
                                           **options), loss_fn)

  def __repr__(self) -> str:
    hyper = ", ".join(f"{k}={v}" for k, v in self.defaults.items())
    return f"Method({self.name!r}: {self.label}({hyper}))"


_OPTIONS = ("mask", "axis_name", "per_device_perturbation")


class _Registry(Mapping[str, Method]):
  """A read-only mapping of the methods by name, with errors that list them.
  """

  def __init__(self, methods: Sequence[Method]):
    self._methods = {m.name: m for m in methods}

  def __getitem__(self, name: str) -> Method:
    try:
      return self._methods[name]
    except KeyError:
      raise KeyError(f"gradreg_optax.METHODS has no method {name!r}; its "
                     f"methods are {', '.join(self._methods)}.") from None

  def __iter__(self) -> Iterator[str]:
    return iter(self._methods)

  def __len__(self) -> int:
    return len(self._methods)

  def __repr__(self) -> str:
    rows = [f"  {m.name:<22} {m.label:<20} "
            + ", ".join(f"{k}={v}" for k, v in m.defaults.items())
            for m in self._methods.values()]
    return "gradreg_optax.METHODS:\n" + "\n".join(rows)


def _gr(method: str) -> Callable[..., optax.GradientTransformationExtraArgs]:
  return functools.partial(regularization.gradient_regularization,
                           method=method)


def _asam(loss_fn: LossFn, rho: Any = 0.5, adaptive_eta: Any = 0.01, *,
          has_aux: bool = False, mask: Any = None, axis_name: Any = None,
          per_device_perturbation: bool = False
          ) -> optax.GradientTransformationExtraArgs:
  # Explicit arguments: optax.inject_hyperparams binds the signature.
  return sam_lib.sam(loss_fn, rho, adaptive=True, adaptive_eta=adaptive_eta,
                     has_aux=has_aux, mask=mask, axis_name=axis_name,
                     per_device_perturbation=per_device_perturbation)


_KARAKIDA = "Karakida et al., ICML 2023"
_GR = regularization.HYPERPARAMETERS
_ASAM = {"rho": sam_lib.SAM_HYPERPARAMETERS["rho"]._replace(default=0.5),
         "adaptive_eta": perturbed.ADAPTIVE_ETA}
_FLOOD = {"b": losses.FLOOD_LEVEL}

METHODS: Mapping[str, Method] = _Registry((
    Method("sgd", "SGD", "g (no regularization)", {}, 0, None),
    Method("forward", "F-GR", "g + gamma (grad L(theta + eps g) - g) / eps; "
           + _KARAKIDA, _GR, 1, _gr("forward"),
           reference=regularization.forward_reference),
    Method("backward", "B-GR", "g + gamma (g - grad L(theta - eps g)) / eps; "
           + _KARAKIDA, _GR, 1, _gr("backward"),
           reference=regularization.backward_reference),
    Method("central", "central GR", "g + gamma (grad L(theta + eps g) - grad "
           "L(theta - eps g)) / (2 eps)", _GR, 2, _gr("central"),
           reference=regularization.central_reference),
    Method("double_backprop", "GR (double backprop)", "g + gamma grad <grad L,"
           " g>; Drucker & LeCun 1992, " + _KARAKIDA,
           {"gamma": _GR["gamma"]}, 2, _gr("double_backprop"),
           reference=regularization.double_backprop_reference),
    Method("jvp", "GR (jvp)", "g + gamma jvp(grad L, g); Pearlmutter 1994",
           {"gamma": _GR["gamma"]}, 2, _gr("jvp"), reference=regularization.jvp_reference),
    Method("sam", "SAM", "grad L(theta + rho g / ||g||); Foret et al., ICLR "
           "2021", sam_lib.SAM_HYPERPARAMETERS, 1, sam_lib.sam,
           reference=sam_lib.sam_reference),
    Method("asam", "ASAM", "grad L(theta + rho T^2 g / ||T g||), T = |theta| "
           "+ eta; Kwon et al., ICML 2021", _ASAM, 1, _asam,
           reference=sam_lib.asam_reference),
    Method("gradient_norm_penalty", "norm penalty", "(1 - alpha) g + alpha "
           "grad L(theta + r g / ||g||); Zhao et al., ICML 2022",
           sam_lib.NORM_PENALTY_HYPERPARAMETERS, 1,
           sam_lib.gradient_norm_penalty,
           reference=sam_lib.gradient_norm_penalty_reference),
    Method("gsam", "GSAM", "g_p - alpha (g - proj_{g_p} g), g_p = grad "
           "L(theta + rho g / ||g||); Zhuang et al., ICLR 2022",
           gsam.HYPERPARAMETERS, 1, gsam.gsam, reference=gsam.reference),
    Method("wsam", "WSAM", "g + gamma / (1 - gamma) (grad L(theta + rho g / "
           "||g||) - g); Yue et al., KDD 2023", wsam.HYPERPARAMETERS, 1,
           wsam.wsam, reference=wsam.reference),
    Method("friendly_sam", "F-SAM", "grad L(theta + rho d / ||d||), d = g - "
           "sigma m, m <- lam m + (1 - lam) g; Li et al., CVPR 2024",
           friendly_sam.HYPERPARAMETERS, 1, friendly_sam.friendly_sam,
           reference=friendly_sam.reference,
           reference_init=friendly_sam.reference_init),
    Method("vasso", "VaSSO", "grad L(theta + rho d / ||d||), d <- (1 - "
           "theta) d + theta g; Li & Giannakis, NeurIPS 2023",
           vasso.HYPERPARAMETERS, 1, vasso.vasso, reference=vasso.reference,
           reference_init=vasso.reference_init),
    Method("fisher_sam", "Fisher SAM", "grad L(theta + rho F^-1 g / sqrt(g^T "
           "F^-1 g)), F = 1 + eta g^2; Kim et al., ICML 2022",
           fisher_sam.HYPERPARAMETERS, 1, fisher_sam.fisher_sam,
           reference=fisher_sam.reference),
    Method("flooding", "flooding", "grad |L - b| + b; Ishida et al., ICML "
           "2020", _FLOOD, 0, None, loss=losses.flooding),
))
"""The methods by name: ``METHODS[name](loss_fn, **hyperparameters)``."""
