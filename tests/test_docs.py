"""Runs every ```python block of README.md and docs/ as it is written.

Each block is a complete program: it runs in a fresh interpreter, in an
empty temporary directory, with this checkout's package first on the path.
Examples that are not meant to run are marked ```bash, ```text or
```console. The blocks run a few at a time in the background from the
first test on, so the file takes about as long as its slowest blocks.
"""

from __future__ import annotations

import concurrent.futures
import glob
import os
import re
import subprocess
import sys
import textwrap
from typing import NamedTuple

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
TIMEOUT_S = 300
# A fence opens with ```python (maybe indented, as in a list item) and
# closes with the first ``` at the same indentation or less.
_OPEN = re.compile(r"^(\s*)```python\s*$")
_CLOSE = re.compile(r"^(\s*)```\s*$")


class Block(NamedTuple):
  path: str  # relative to the repository root
  line: int  # of the opening fence, 1-based
  code: str

  @property
  def where(self) -> str:
    return f"{self.path}:{self.line}"


def python_blocks(path: str) -> list[Block]:
  """The ```python blocks of the markdown file at ``path``, in order."""
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  rel = os.path.relpath(path, ROOT)
  blocks, i = [], 0
  while i < len(lines):
    opening = _OPEN.match(lines[i])
    if not opening:
      i += 1
      continue
    j = i + 1
    while j < len(lines) and not (
        _CLOSE.match(lines[j])
        and len(_CLOSE.match(lines[j]).group(1)) <= len(opening.group(1))):
      j += 1
    if j == len(lines):
      raise ValueError(f"{rel}:{i + 1}: unclosed ```python block")
    blocks.append(Block(rel, i + 1,
                        textwrap.dedent("\n".join(lines[i + 1:j])) + "\n"))
    i = j + 1
  return blocks


def _markdown_files() -> list[str]:
  """README.md and every page under docs/ (its subfolders included)."""
  pages = glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True)
  built = os.path.join(ROOT, "docs", "_build") + os.sep
  return [os.path.join(ROOT, "README.md")] + sorted(
      p for p in pages if not p.startswith(built))


BLOCKS = [b for p in _markdown_files() for b in python_blocks(p)]


def _run(block: Block, tmp_dir: str) -> subprocess.CompletedProcess | str:
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
  env.setdefault("MPLBACKEND", "Agg")
  script = os.path.join(tmp_dir, "block.py")
  with open(script, "w", encoding="utf-8") as f:
    f.write(block.code)
  try:
    return subprocess.run([sys.executable, script], cwd=tmp_dir, env=env,
                          capture_output=True, text=True, timeout=TIMEOUT_S,
                          check=False)
  except subprocess.TimeoutExpired:
    return f"timed out after {TIMEOUT_S} s"


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
  """Starts the selected blocks, a few at a time; maps `where` to a future."""
  selected = {item.callspec.params["block"].where
              for item in request.session.items
              if getattr(item, "originalname", None) == "test_block_runs"}
  workers = max(1, min(3, os.cpu_count() or 1))
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    yield {b.where: pool.submit(_run, b, str(tmp_path_factory.mktemp("doc")))
           for b in BLOCKS if b.where in selected}


def test_the_quickstarts_are_found():
  readme = [b for b in BLOCKS if b.path == "README.md"]
  assert len(readme) >= 2


def test_the_pages_are_searched():
  paths = {b.path for b in BLOCKS}
  for page in ("guide", "methods"):
    assert os.path.join("docs", f"{page}.md") in paths


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.where)
def test_block_shows_its_result(block):
  # A reader runs an example to see what it does.
  assert "print(" in block.code, f"{block.where} prints nothing"


def test_blocks_are_extracted_with_their_lines(tmp_path):
  md = tmp_path / "x.md"
  md.write_text("text\n```python\nx = 1\n```\n\n* item\n\n  ```python\n"
                "  y = 2\n  ```\n```bash\nls\n```\n")
  blocks = python_blocks(str(md))
  assert [(b.line, b.code) for b in blocks] == [(2, "x = 1\n"),
                                                 (8, "y = 2\n")]


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.where)
def test_block_runs(block, runs):
  result = runs[block.where].result()
  if isinstance(result, str):
    pytest.fail(f"{block.where}: the ```python block {result}")
  if result.returncode != 0:
    pytest.fail(f"{block.where}: the ```python block exited with status "
                f"{result.returncode} (line n of block.py is line "
                f"{block.line} + n of {block.path}):\n"
                f"{result.stderr[-4000:]}", pytrace=False)
