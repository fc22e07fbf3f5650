"""The wheel ships what a user's tools need: the package and ``py.typed``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import setuptools

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


def _version(text: str) -> tuple[int, ...]:
  return tuple(int(part) for part in text.split(".")[:2])


@pytest.mark.skipif(_version(setuptools.__version__) < (70, 1),
                    reason="setuptools < 70.1 builds wheels only with `wheel`"
                    " (the test extra installs a newer one)")
def test_the_wheel_ships_py_typed(tmp_path):
  # A copy of what the wheel is built from, so that the build leaves nothing
  # in the checkout.
  source = tmp_path / "src"
  shutil.copytree(os.path.join(ROOT, "gradreg_optax"),
                  source / "gradreg_optax",
                  ignore=shutil.ignore_patterns("__pycache__"))
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(ROOT, name), source / name)
  # The build backend itself, as pip or build would call it (and without
  # either, or the network).
  build = ("import sys\nfrom setuptools import build_meta\n"
           "build_meta.build_wheel(sys.argv[1])\n")
  result = subprocess.run(
      [sys.executable, "-c", build, str(tmp_path / "dist")], cwd=source,
      capture_output=True, text=True, check=False, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  (wheel,) = (tmp_path / "dist").glob("gradreg_optax-*.whl")
  with zipfile.ZipFile(wheel) as z:
    names = set(z.namelist())
  assert "gradreg_optax/py.typed" in names
  assert "gradreg_optax/__init__.py" in names
  assert "gradreg_optax/experiments/train.py" in names
