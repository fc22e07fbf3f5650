"""Shared pieces of the digits experiments: data and a small tanh MLP."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def load(seed: int = 0, n_train: int | None = None):
  """scikit-learn digits (bundled, no download), scaled to [0, 1], split 70/30."""
  from sklearn.datasets import load_digits
  x, y = load_digits(return_X_y=True)
  rng = np.random.default_rng(seed)
  idx = rng.permutation(len(y))
  x, y = x[idx] / 16.0, y[idx]
  cut = int(0.7 * len(y))
  tr = slice(0, cut if n_train is None else min(n_train, cut))
  return ((jnp.asarray(x[tr], jnp.float32), jnp.asarray(y[tr])),
          (jnp.asarray(x[cut:], jnp.float32), jnp.asarray(y[cut:])))


def init(key, sizes=(64, 32, 10)):
  params = []
  for k, (a, b) in zip(jax.random.split(key, len(sizes) - 1),
                       zip(sizes[:-1], sizes[1:])):
    params.append({"w": jax.random.normal(k, (a, b)) / np.sqrt(a),
                   "b": jnp.zeros(b)})
  return params


def logits(params, x):
  for layer in params[:-1]:
    x = jnp.tanh(x @ layer["w"] + layer["b"])
  return x @ params[-1]["w"] + params[-1]["b"]


def loss(params, batch):
  x, y = batch
  lp = jax.nn.log_softmax(logits(params, x))
  return -jnp.mean(jnp.take_along_axis(lp, y[:, None], axis=1))


def accuracy(params, batch):
  x, y = batch
  return jnp.mean(jnp.argmax(logits(params, x), -1) == y)
