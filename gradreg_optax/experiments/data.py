"""Data for the training recipes: digits, MNIST-1D, CIFAR-10, synthetic data.

Images are float32 arrays in NHWC layout and labels int32 vectors, held in
host memory (NumPy); batches are drawn with :func:`batches` and augmented on
the device with :func:`augment`.
"""

from __future__ import annotations

import os
import pickle
from typing import Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Per-channel statistics of the CIFAR-10 training images (scaled to [0, 1]).
CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465], np.float32)
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616], np.float32)


class Dataset(NamedTuple):
  """A classification data set split into training and test parts."""
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  name: str


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
  """scikit-learn's handwritten digits (1797 real 8x8 images), no download.

  The images are scaled to ``[0, 1]`` and split into training and test parts
  by a fixed, seeded, stratified permutation.

  Args:
    test_fraction: the share of each class held out for testing.
    seed: seed of the split.

  Returns:
    A :class:`Dataset` with images of shape ``(N, 8, 8, 1)``.

  Example:
    >>> data = load_digits()
    >>> data.x_train.shape, data.x_test.shape, data.num_classes
    ((1438, 8, 8, 1), (359, 8, 8, 1), 10)
  """
  from sklearn import datasets  # pylint: disable=import-outside-toplevel

  digits = datasets.load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., None]
  y = digits.target.astype(np.int32)
  rng = np.random.RandomState(seed)
  test = np.zeros(len(y), bool)
  for c in np.unique(y):
    idx = rng.permutation(np.flatnonzero(y == c))
    test[idx[:int(round(test_fraction * len(idx)))]] = True
  train_idx = rng.permutation(np.flatnonzero(~test))
  test_idx = np.flatnonzero(test)
  return Dataset(x[train_idx], y[train_idx], x[test_idx], y[test_idx], 10,
                 "digits")


def cache_dir() -> str:
  """Where generated data sets are kept: ``$GRADREG_OPTAX_CACHE``, else
  ``gradreg_optax`` under ``$XDG_CACHE_HOME`` (default ``~/.cache``).

  Copy this folder to run on a machine that cannot generate the data (no
  ``mnist1d`` package) and point ``GRADREG_OPTAX_CACHE`` at the copy.
  """
  explicit = os.environ.get("GRADREG_OPTAX_CACHE")
  if explicit:
    return explicit
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(
      os.path.expanduser("~"), ".cache")
  return os.path.join(base, "gradreg_optax")


# The training size of MNIST-1D's authors (Greydanus & Kobak, 2024); the
# test part is ten times theirs, so that its own sampling error (the binomial
# standard error, at most 0.5 points) is small beside the differences
# between methods.
MNIST1D_TRAIN = 4000
MNIST1D_TEST = 10000


def load_mnist1d(num_train: int = MNIST1D_TRAIN,
                 num_test: int = MNIST1D_TEST, seed: int = 42) -> Dataset:
  """MNIST-1D (Greydanus & Kobak), generated locally and cached.

  The ``mnist1d`` package (``pip install mnist1d``, Apache-2.0) generates
  ``num_train + num_test`` signals of length 40 from its ten templates with
  its default arguments and ``seed`` (nothing is downloaded); the first
  ``num_train`` are the training part. The arrays are cached in
  :func:`cache_dir` as ``mnist1d_{num_train}_{num_test}_{seed}.npz``; a
  cached file is read without importing ``mnist1d``.

  Args:
    num_train: training signals.
    num_test: test signals.
    seed: the generator's seed (42 is the package's default).

  Returns:
    A :class:`Dataset` with signals of shape ``(N, 40, 1)`` (length,
    channels), standardized as the package does.
  """
  name = f"mnist1d_{num_train}_{num_test}_{seed}.npz"
  path = os.path.join(cache_dir(), name)
  if not os.path.exists(path):
    try:
      # pylint: disable-next=import-outside-toplevel
      from mnist1d import data as mnist1d_data
    except ImportError:
      raise FileNotFoundError(
          f"MNIST-1D: {path} is not cached and the mnist1d package is not "
          "installed: pip install mnist1d (it generates the data locally), "
          "or set GRADREG_OPTAX_CACHE to a folder holding a copy of "
          f"{name}.") from None
    args = mnist1d_data.get_dataset_args()
    args.num_samples = num_train + num_test
    args.seed = seed
    d = mnist1d_data.make_dataset(args)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float32)
    y = np.concatenate([d["y"], d["y_test"]]).astype(np.int32)
    if len(y) != num_train + num_test:  # it makes a multiple of 10
      raise ValueError(f"MNIST-1D: num_train + num_test must be a multiple of "
                       f"10, got {num_train} + {num_test}.")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez_compressed(tmp, x=x, y=y)
    os.replace(tmp, path)  # atomic: concurrent runs never read half a file
  with np.load(path) as f:
    x, y = f["x"][..., None], f["y"]
  return Dataset(x[:num_train], y[:num_train], x[num_train:], y[num_train:],
                 10, "mnist1d")


def _read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
  with open(path, "rb") as f:
    d = pickle.load(f, encoding="bytes")
  data = np.asarray(d[b"data"], np.uint8)
  if data.ndim != 2 or data.shape[1] != 3072:
    raise ValueError(f"{path}: b'data' must have shape (N, 3072), got "
                     f"{data.shape}.")
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, np.asarray(d[b"labels"], np.int32)


def _normalize_cifar(images: np.ndarray) -> np.ndarray:
  return ((images.astype(np.float32) / 255.0 - CIFAR10_MEAN)
          / CIFAR10_STD).astype(np.float32)


def load_cifar10(data_dir: str) -> Dataset:
  """CIFAR-10 from a local directory in its standard Python (pickle) format.

  ``data_dir`` holds ``data_batch_1`` ... ``data_batch_5`` and ``test_batch``
  (as in ``cifar-10-batches-py``), each a pickled dict with ``b"data"`` (uint8,
  ``(N, 3072)``, channel-major rows) and ``b"labels"``. Nothing is downloaded.
  Images are scaled to ``[0, 1]`` and normalized per channel.

  Args:
    data_dir: the directory (or its parent containing ``cifar-10-batches-py``).

  Returns:
    A :class:`Dataset` with images of shape ``(N, 32, 32, 3)``.
  """
  nested = os.path.join(data_dir, "cifar-10-batches-py")
  if not os.path.exists(os.path.join(data_dir, "test_batch")) and (
      os.path.isdir(nested)):
    data_dir = nested
  train_files = [os.path.join(data_dir, f"data_batch_{i}") for i in range(1, 6)]
  test_file = os.path.join(data_dir, "test_batch")
  missing = [p for p in train_files + [test_file] if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(
        "CIFAR-10 (python version) not found; missing " + ", ".join(missing)
        + ". Download cifar-10-python.tar.gz yourself and extract it.")
  parts = [_read_cifar_batch(p) for p in train_files]
  x_train = np.concatenate([p[0] for p in parts])
  y_train = np.concatenate([p[1] for p in parts])
  x_test, y_test = _read_cifar_batch(test_file)
  return Dataset(_normalize_cifar(x_train), y_train, _normalize_cifar(x_test),
                 y_test, 10, "cifar10")


def synthetic(num_train: int = 1024, num_test: int = 256,
              shape: tuple[int, ...] = (32, 32, 3), num_classes: int = 10,
              noise: float = 1.0, seed: int = 0) -> Dataset:
  """Learnable synthetic images: a random template per class plus noise.

  For smoke tests and throughput measurements where no real data is at hand;
  accuracies on it say nothing about real data.

  Example:
    >>> data = synthetic(num_train=8, num_test=4, shape=(4, 4, 3))
    >>> data.x_train.shape, data.y_test.shape
    ((8, 4, 4, 3), (4,))
  """
  rng = np.random.RandomState(seed)
  templates = rng.normal(size=(num_classes,) + tuple(shape)).astype(np.float32)

  def draw(n):
    y = rng.randint(num_classes, size=n).astype(np.int32)
    x = templates[y] + noise * rng.normal(size=(n,) + tuple(shape))
    return x.astype(np.float32), y

  x_train, y_train = draw(num_train)
  x_test, y_test = draw(num_test)
  return Dataset(x_train, y_train, x_test, y_test, num_classes, "synthetic")


def augment(key: jax.Array, images: jax.Array, pad: int = 4) -> jax.Array:
  """Random crop after zero padding by ``pad`` pixels, and horizontal flip.

  The standard CIFAR augmentation, in JAX so that it runs inside the jitted
  step. Each image gets its own crop offset and flip.

  Args:
    key: a PRNG key.
    images: ``(N, H, W, C)``.
    pad: padding on each side before cropping back to ``(H, W)``.

  Returns:
    The augmented images, same shape and dtype.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> augment(jax.random.PRNGKey(0), jnp.ones((2, 32, 32, 3))).shape
    (2, 32, 32, 3)
  """
  n, h, w, _ = images.shape
  crop_key, flip_key = jax.random.split(key)
  offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)
  flips = jax.random.bernoulli(flip_key, 0.5, (n,))
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

  def one(image, offset, flip):
    crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                 (h, w, image.shape[-1]))
    return jnp.where(flip, crop[:, ::-1], crop)

  return jax.vmap(one)(padded, offsets, flips)


def batches(x: np.ndarray, y: np.ndarray, batch_size: int,
            rng: np.random.RandomState | None = None,
            drop_remainder: bool = True
            ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """One pass over ``(x, y)`` in batches, shuffled when ``rng`` is given.

  ``drop_remainder`` keeps every batch the same shape so that a jitted step
  compiles once.

  Example:
    >>> import numpy as np
    >>> x, y = np.arange(10).reshape(5, 2), np.arange(5)
    >>> [b[1].tolist() for b in batches(x, y, 2)]
    [[0, 1], [2, 3]]
  """
  n = len(x)
  order = rng.permutation(n) if rng is not None else np.arange(n)
  stop = n - n % batch_size if drop_remainder else n
  for start in range(0, stop, batch_size):
    idx = order[start:start + batch_size]
    yield x[idx], y[idx]
