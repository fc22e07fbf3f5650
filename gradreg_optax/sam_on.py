"""SAM-ON: sharpness-aware minimization of the normalization layers only."""

from __future__ import annotations

import re
from typing import Any

import jax
import optax

# A module's name in a Linen parameter dict (``BatchNorm_0``, ``LayerNorm_1``,
# ``GroupNorm_0``, ``RMSNorm_0``) or an attribute name in NNX (``norm1``,
# ``bn``, ``ln_f``, ``gn2``).
_NORM_NAME = re.compile(r"norm|^(bn|ln|gn)(_|\d|$)", re.IGNORECASE)


def _key(entry: Any) -> str:
  for attribute in ("key", "name", "idx"):
    if hasattr(entry, attribute):
      return str(getattr(entry, attribute))
  return str(entry)


def normalization_layers(params: optax.Params) -> Any:
  """Mask of the normalization layers' parameters, for SAM-ON.

  Mueller, Vlaar, Rolnick & Hein, *Normalization Layers Are All That
  Sharpness-Aware Minimization Needs*, NeurIPS 2023: SAM that perturbs
  only the scale and offset of the normalization layers (BatchNorm,
  LayerNorm, GroupNorm, ...) generalizes as well as or better than SAM on
  all parameters. Pass this as a method's ``mask``:
  ``gro.sam(loss_fn, rho, mask=gro.normalization_layers)``; only those
  parameters are displaced, enter the gradient's norm and get SAM's
  gradient, the others get the incoming gradient.

  A parameter is selected where its module is a normalization layer: a
  module that holds a parameter named ``scale`` (Flax's normalization
  layers, Linen and NNX, are the only standard layers with one), or whose
  name looks like one, so that a layer without a scale is found too: a name
  containing ``norm`` (Linen's automatic names ``BatchNorm_0``,
  ``LayerNorm_1``, ``GroupNorm_0``, ``RMSNorm_0``, or NNX attributes such as
  ``norm1``), or ``bn``, ``ln``, ``gn`` alone or followed by a digit or
  ``_``. Its ``scale`` and ``bias`` are selected, nothing else. Give a mask
  of your own for modules named otherwise.

  Args:
    params: the parameters: a Linen parameter dict (``variables["params"]``)
      or the ``nnx.State`` of ``nnx.Optimizer`` (``gro.nnx_step``).

  Returns:
    A pytree of Python bools with the structure of ``params``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> import flax.linen as nn
    >>> import gradreg_optax as gro
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     return nn.Dense(2)(nn.LayerNorm()(nn.Dense(4)(x)))
    >>> params = Net().init(jax.random.PRNGKey(0), jnp.ones((1, 3)))["params"]
    >>> mask = gro.normalization_layers(params)
    >>> [jax.tree_util.keystr(path) for path, selected in
    ...  jax.tree_util.tree_flatten_with_path(mask)[0] if selected]
    ["['LayerNorm_0']['bias']", "['LayerNorm_0']['scale']"]
  """
  paths = [tuple(_key(k) for k in path) for path, _ in
           jax.tree_util.tree_flatten_with_path(params)[0]]
  with_scale = {path[:-1] for path in paths if path[-1] == "scale"}

  def selected(path, _):
    path = tuple(_key(k) for k in path)
    module = path[:-1]
    is_norm = module in with_scale or bool(module and _NORM_NAME.search(
        module[-1]))
    return is_norm and path[-1] in ("scale", "bias")

  return jax.tree_util.tree_map_with_path(selected, params)
