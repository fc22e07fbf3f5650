"""Models used by the experiments and benchmarks.

Flax Linen modules for the training recipes, and a small tanh MLP as pure
functions of a plain parameter pytree for the theory experiments, which
differentiate, penalize and measure ``loss(params, batch)`` directly.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


class MLP(nn.Module):
  """``depth`` dense layers (``depth - 1`` hidden, ReLU), biases included.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = MLP(width=8, depth=3, num_classes=4)
    >>> variables = model.init(jax.random.PRNGKey(0), jnp.ones((2, 5)))
    >>> model.apply(variables, jnp.ones((2, 5))).shape
    (2, 4)
  """

  width: int = 256
  depth: int = 3
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train
    x = x.reshape((x.shape[0], -1))
    for _ in range(self.depth - 1):
      x = nn.relu(nn.Dense(self.width)(x))
    return nn.Dense(self.num_classes)(x)


class SmallCNN(nn.Module):
  """Two 3x3 convolutions with max pooling, then a dense classifier.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = SmallCNN(num_classes=10)
    >>> variables = model.init(jax.random.PRNGKey(0), jnp.ones((2, 8, 8, 1)))
    >>> model.apply(variables, jnp.ones((2, 8, 8, 1))).shape
    (2, 10)
  """

  features: Sequence[int] = (32, 64)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train
    for f in self.features:
      x = nn.relu(nn.Conv(f, (3, 3))(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(128)(x))
    return nn.Dense(self.num_classes)(x)


def conv1d_as_products(lhs, rhs, window_strides, padding, *,
                       lhs_dilation=None, rhs_dilation=None,
                       dimension_numbers=None, feature_group_count=1,
                       precision=None, **unused):
  """``lax.conv_general_dilated`` for 1-D ``NWC`` inputs and ``WIO`` kernels,
  as one matrix product over the stacked windows.

  For ``nn.Conv(..., conv_general_dilated=conv1d_as_products)``: the same
  parameters and result as a convolution, but many runs ``vmap``-ed over
  their own kernels become one batched product, where XLA's CPU backend
  would run a grouped convolution with a slow generic loop.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> x = jax.random.normal(jax.random.key(0), (2, 9, 3))
    >>> w = jax.random.normal(jax.random.key(1), (3, 3, 4))
    >>> args = (x, w, (2,), "SAME")
    >>> dn = ("NWC", "WIO", "NWC")
    >>> want = jax.lax.conv_general_dilated(*args, dimension_numbers=dn)
    >>> bool(jnp.allclose(conv1d_as_products(*args), want, atol=1e-5))
    True
  """
  del unused, dimension_numbers  # NWC, WIO (what nn.Conv passes for 1-D)
  if (lhs.ndim != 3 or feature_group_count != 1
      or any(d not in (None, 1) for d in (*(lhs_dilation or ()),
                                          *(rhs_dilation or ())))):
    raise ValueError("conv1d_as_products: 1-D inputs (N, W, C), no "
                     "dilation and no feature groups only.")
  (stride,), (width, _, _) = window_strides, rhs.shape
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:2], (width,),
                                      window_strides, padding)
  x = jnp.pad(lhs, ((0, 0), tuple(padding[0]), (0, 0)))
  length = (x.shape[1] - width) // stride + 1
  windows = jnp.stack([x[:, i:i + stride * (length - 1) + 1:stride]
                       for i in range(width)], axis=2)
  return jnp.einsum("nlkc,kco->nlo", windows, rhs, precision=precision)


class CNN1D(nn.Module):
  """1-D convolutions (stride 2, ReLU), then a dense classifier.

  For signals of shape ``(N, length, channels)`` such as MNIST-1D's; the
  defaults follow the shape of its authors' CNN (three strided convolutions,
  kernel 5 then 3, about 25 channels). The convolutions are taken as matrix
  products (:func:`conv1d_as_products`), so that runs ``vmap``-ed over
  their parameters train fast on a CPU.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = CNN1D(num_classes=10)
    >>> variables = model.init(jax.random.PRNGKey(0), jnp.ones((2, 40, 1)))
    >>> model.apply(variables, jnp.ones((2, 40, 1))).shape
    (2, 10)
  """

  features: Sequence[int] = (32, 32, 32)
  kernels: Sequence[int] = (5, 3, 3)
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    del train
    for f, k in zip(self.features, self.kernels):
      x = nn.relu(nn.Conv(f, (k,), strides=(2,),
                          conv_general_dilated=conv1d_as_products)(x))
    x = x.reshape((x.shape[0], -1))
    return nn.Dense(self.num_classes)(x)


class _BasicBlock(nn.Module):
  features: int
  strides: int = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9)
    y = nn.Conv(self.features, (3, 3), (self.strides, self.strides),
                use_bias=False)(x)
    y = nn.relu(norm()(y))
    y = nn.Conv(self.features, (3, 3), use_bias=False)(y)
    y = norm()(y)
    if x.shape != y.shape:
      x = nn.Conv(self.features, (1, 1), (self.strides, self.strides),
                  use_bias=False)(x)
      x = norm()(x)
    return nn.relu(x + y)


class ResNet18(nn.Module):
  """ResNet-18 for 32x32 images (3x3 stem, no max pooling), with BatchNorm.

  Call with ``train=True`` and ``mutable=["batch_stats"]`` while training.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> model = ResNet18(num_classes=10, width=8)
    >>> x = jnp.ones((2, 32, 32, 3))
    >>> variables = model.init(jax.random.PRNGKey(0), x)  # doctest: +SKIP
    >>> sorted(variables)  # doctest: +SKIP
    ['batch_stats', 'params']
    >>> model.apply(variables, x).shape  # doctest: +SKIP
    (2, 10)

  (Skipped as a doctest for its compile time; ``tests/test_train.py`` trains
  it with BatchNorm.) ``stages`` sets the residual blocks per stage: ResNet-18
  has ``(2, 2, 2, 2)``; shorter tuples give small residual networks with the
  same building blocks (for tests that compile many steps).
  """

  num_classes: int = 10
  width: int = 64
  stages: tuple[int, ...] = (2, 2, 2, 2)

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = nn.Conv(self.width, (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    for stage, blocks in enumerate(self.stages):
      for block in range(blocks):
        strides = 2 if stage > 0 and block == 0 else 1
        x = _BasicBlock(self.width * 2**stage, strides)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


# --- A tanh MLP as pure functions ---------------------------------------------


def tanh_mlp_init(key: jax.Array, sizes: Sequence[int] = (64, 32, 10)
                  ) -> list[dict[str, jax.Array]]:
  """Parameters of a tanh MLP: ``w ~ N(0, 1/fan_in)``, zero biases.

  Example:
    >>> import jax
    >>> params = tanh_mlp_init(jax.random.key(0))
    >>> [p["w"].shape for p in params]
    [(64, 32), (32, 10)]
  """
  params = []
  for k, (a, b) in zip(jax.random.split(key, len(sizes) - 1),
                       zip(sizes[:-1], sizes[1:])):
    params.append({"w": jax.random.normal(k, (a, b)) / np.sqrt(a),
                   "b": jnp.zeros(b)})
  return params


def tanh_mlp(params: Sequence[dict[str, jax.Array]], x: jax.Array
             ) -> jax.Array:
  """Logits of the MLP of :func:`tanh_mlp_init`; ``x`` is flattened per row."""
  x = x.reshape((x.shape[0], -1))
  for layer in params[:-1]:
    x = jnp.tanh(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def tanh_mlp_loss(params: Any, batch: tuple[jax.Array, jax.Array]
                  ) -> jax.Array:
  """Mean softmax cross-entropy of :func:`tanh_mlp` on ``(x, labels)``.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> params = tanh_mlp_init(jax.random.key(0), (4, 3, 2))
    >>> float(tanh_mlp_loss(params, (jnp.zeros((5, 4)), jnp.zeros(5, int))))
    0.693...
  """
  x, y = batch
  return optax.softmax_cross_entropy_with_integer_labels(
      tanh_mlp(params, x), y).mean()


def tanh_mlp_accuracy(params: Any, batch: tuple[jax.Array, jax.Array]
                      ) -> jax.Array:
  """Share of ``(x, labels)`` that :func:`tanh_mlp` classifies correctly."""
  x, y = batch
  return jnp.mean(jnp.argmax(tanh_mlp(params, x), -1) == y)
