"""The reference (docs/) builds without a warning and has every public name.

The build is the README's command, ``python3 -m sphinx -W -b html docs
docs/_build/html``, into a temporary folder.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import gradreg_optax as gro

pytest.importorskip("sphinx", reason="the docs extra is not installed")
pytest.importorskip("myst_parser", reason="the docs extra is not installed")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))


@pytest.fixture(scope="module")
def html(tmp_path_factory) -> str:
  out = tmp_path_factory.mktemp("html")
  result = subprocess.run(
      [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b",
       "html", os.path.join(ROOT, "docs"), str(out)],
      capture_output=True, text=True, check=False, timeout=300)
  assert result.returncode == 0, (
      f"sphinx -W failed:\n{result.stdout[-3000:]}{result.stderr[-6000:]}")
  return str(out)


def _anchors(path: str) -> set[str]:
  with open(path, encoding="utf-8") as f:
    return set(re.findall(r'id="([^"]+)"', f.read()))


def test_every_public_name_is_documented(html):
  anchors = _anchors(os.path.join(html, "api.html"))
  missing = [name for name in gro.__all__
             if f"gradreg_optax.{name}" not in anchors
             and f"module-gradreg_optax.{name}" not in anchors]
  assert not missing, f"not in the API reference: {missing}"


def test_the_pages_and_their_math_are_built(html):
  for page in ("index", "guide", "studies", "dln_theory", "api"):
    assert os.path.isfile(os.path.join(html, f"{page}.html")), page
  with open(os.path.join(html, "api.html"), encoding="utf-8") as f:
    api = f.read()
  assert 'class="math' in api and "mathjax" in api
  # The docstrings' examples are shown (and run as doctests by pytest).
  assert "gradient_regularization(loss_fn, gamma=0.1)" in re.sub(
      r"<[^>]+>", "", api)
