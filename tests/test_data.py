"""Tests for gradreg_optax/experiments/data.py."""

import os
import pickle
import sys

import chex
import jax
import numpy as np
import pytest

from gradreg_optax.experiments import data


def write_cifar10(directory, per_batch=4, seed=0):
  """Writes the six files of CIFAR-10's python format with random content."""
  rng = np.random.RandomState(seed)
  os.makedirs(directory, exist_ok=True)
  contents = {}
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    d = {b"data": rng.randint(0, 256, size=(per_batch, 3072)).astype(np.uint8),
         b"labels": rng.randint(0, 10, size=per_batch).tolist(),
         b"batch_label": name.encode()}
    with open(os.path.join(directory, name), "wb") as f:
      pickle.dump(d, f)
    contents[name] = d
  return contents


def test_digits_split_is_a_stratified_partition():
  from sklearn import datasets
  ref = datasets.load_digits()
  d = data.load_digits()
  x = np.concatenate([d.x_train, d.x_test])
  y = np.concatenate([d.y_train, d.y_test])
  assert x.shape == (1797, 8, 8, 1) and x.dtype == np.float32
  assert 0.0 <= x.min() and x.max() <= 1.0
  # Same multiset of (image, label) pairs as scikit-learn's, each once.
  key = lambda imgs, labels: sorted(
      (tuple(i.ravel().tolist()), int(l)) for i, l in zip(imgs, labels))
  assert key(x * 16, y) == key(ref.images, ref.target)
  test_share = np.bincount(d.y_test, minlength=10) / np.bincount(
      ref.target, minlength=10)
  np.testing.assert_allclose(test_share, 0.2, atol=0.02)
  again = data.load_digits()
  np.testing.assert_array_equal(again.y_train, d.y_train)


@pytest.mark.parametrize("nested", [False, True])
def test_cifar10_python_format(tmp_path, nested):
  directory = tmp_path / "cifar-10-batches-py" if nested else tmp_path
  contents = write_cifar10(str(directory), per_batch=3)
  d = data.load_cifar10(str(tmp_path))
  assert d.x_train.shape == (15, 32, 32, 3) and d.x_test.shape == (3, 32, 32, 3)
  assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
  labels = sum((contents[f"data_batch_{i}"][b"labels"] for i in range(1, 6)),
               [])
  np.testing.assert_array_equal(d.y_train, labels)
  np.testing.assert_array_equal(d.y_test, contents["test_batch"][b"labels"])
  # Row layout of the format: 1024 red, then green, then blue values, each
  # row-major over the 32x32 image.
  raw = contents["data_batch_2"][b"data"]
  for i, h, w, c in [(0, 0, 0, 0), (1, 5, 17, 1), (2, 31, 2, 2)]:
    value = raw[i, c * 1024 + h * 32 + w] / 255.0
    expected = (value - data.CIFAR10_MEAN[c]) / data.CIFAR10_STD[c]
    np.testing.assert_allclose(d.x_train[3 + i, h, w, c], expected, rtol=1e-5)


def test_cifar10_missing_files(tmp_path):
  write_cifar10(str(tmp_path))
  os.remove(tmp_path / "data_batch_3")
  with pytest.raises(FileNotFoundError, match="data_batch_3"):
    data.load_cifar10(str(tmp_path))


def test_synthetic_is_seeded_and_learnable():
  a = data.synthetic(64, 32, (4, 4, 3), num_classes=3, noise=0.1, seed=1)
  b = data.synthetic(64, 32, (4, 4, 3), num_classes=3, noise=0.1, seed=1)
  c = data.synthetic(64, 32, (4, 4, 3), num_classes=3, noise=0.1, seed=2)
  np.testing.assert_array_equal(a.x_train, b.x_train)
  assert not np.array_equal(a.x_train, c.x_train)
  # Low noise: nearest class mean of the training set classifies the test set.
  means = np.stack([a.x_train[a.y_train == k].mean(0) for k in range(3)])
  dist = ((a.x_test[:, None] - means[None]) ** 2).sum(axis=(2, 3, 4))
  np.testing.assert_array_equal(dist.argmin(1), a.y_test)


@pytest.mark.parametrize("pad", [0, 2])
def test_augment_is_a_crop_of_the_padded_image_maybe_flipped(pad):
  images = np.random.RandomState(0).normal(size=(16, 6, 5, 2)).astype(
      np.float32)
  out = np.asarray(jax.jit(data.augment, static_argnums=2)(
      jax.random.PRNGKey(3), images, pad))
  assert out.shape == images.shape
  padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  flipped = 0
  for i in range(len(images)):
    candidates = [(padded[i, a:a + 6, b:b + 5], f)
                  for a in range(2 * pad + 1) for b in range(2 * pad + 1)
                  for f in (False, True)]
    matches = [f for crop, f in candidates
               if np.array_equal(out[i], crop[:, ::-1] if f else crop)]
    assert matches, i
    flipped += all(matches)
  assert 0 < flipped < len(images)  # both outcomes occur over 16 images
  again = data.augment(jax.random.PRNGKey(3), images, pad)
  chex.assert_trees_all_equal(np.asarray(again), out)


@pytest.mark.parametrize("drop_remainder", [True, False])
def test_batches_cover_a_permutation(drop_remainder):
  x = np.arange(22)[:, None]
  y = np.arange(22)
  got = list(data.batches(x, y, 5, np.random.RandomState(0), drop_remainder))
  assert [len(b[1]) for b in got] == ([5] * 4 if drop_remainder
                                      else [5] * 4 + [2])
  seen = np.concatenate([b[1] for b in got])
  np.testing.assert_array_equal(np.concatenate([b[0][:, 0] for b in got]),
                                seen)
  assert len(set(seen.tolist())) == len(seen)
  if not drop_remainder:
    np.testing.assert_array_equal(np.sort(seen), y)
  assert seen.tolist() != sorted(seen.tolist())  # shuffled


def test_mnist1d_is_generated_once_then_read_from_the_cache(tmp_path,
                                                            monkeypatch):
  pytest.importorskip("mnist1d")
  monkeypatch.setenv("GRADREG_OPTAX_CACHE", str(tmp_path))
  assert data.cache_dir() == str(tmp_path)
  d = data.load_mnist1d(num_train=60, num_test=40, seed=3)
  assert d.x_train.shape == (60, 40, 1) and d.x_test.shape == (40, 40, 1)
  assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
  assert set(np.unique(np.concatenate([d.y_train, d.y_test]))) <= set(
      range(10)) and d.num_classes == 10 and d.name == "mnist1d"
  assert os.listdir(tmp_path) == ["mnist1d_60_40_3.npz"]
  # Generated as the package generates it, split after num_train.
  from mnist1d import data as reference
  args = reference.get_dataset_args()
  args.num_samples, args.seed = 100, 3
  ref = reference.make_dataset(args)
  np.testing.assert_allclose(
      np.concatenate([d.x_train, d.x_test])[..., 0],
      np.concatenate([ref["x"], ref["x_test"]]), rtol=1e-6)
  # A machine without the package reads the cached copy.
  monkeypatch.setitem(sys.modules, "mnist1d", None)
  again = data.load_mnist1d(num_train=60, num_test=40, seed=3)
  np.testing.assert_array_equal(again.x_test, d.x_test)
  with pytest.raises(FileNotFoundError, match="GRADREG_OPTAX_CACHE"):
    data.load_mnist1d(num_train=60, num_test=40, seed=4)


def test_cache_dir_defaults_under_the_user_cache(monkeypatch, tmp_path):
  monkeypatch.delenv("GRADREG_OPTAX_CACHE", raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
  assert data.cache_dir() == os.path.join(str(tmp_path), "gradreg_optax")
