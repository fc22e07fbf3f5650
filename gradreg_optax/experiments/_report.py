"""Recording what an experiment printed, with the command that printed it."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Any, Sequence


def command_line(module: str, argv: Sequence[str] | None) -> str:
  """The shell command that runs ``module`` with ``argv`` (or sys.argv)."""
  args = sys.argv[1:] if argv is None else argv
  return f"python -m {module} " + " ".join(shlex.quote(a) for a in args)


def save(out: str, result: dict[str, Any], text: str) -> None:
  """Writes ``out.json`` (the numbers) and ``out.md`` (the printed text)."""
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out + ".json", "w") as f:
    json.dump(result, f, indent=2)
  with open(out + ".md", "w") as f:
    f.write(f"Command: `{result['command']}`\n\n{text}\n")


class Parser(argparse.ArgumentParser):
  """Reports a bad option in one line on stderr, with exit status 2."""

  def error(self, message: str):
    message = " ".join(message.split())
    self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _seed(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    value = -1
  if value < 0:
    raise argparse.ArgumentTypeError(
        f"expected a non-negative integer, got {text!r}")
  return value


def experiment_parser(description: str, *, out: str = "docs/results",
                      figures: str = "docs/figures",
                      seeds_help: str = "data seeds") -> Parser:
  """The shared options: ``--out``, ``--figures``, ``--quick``, ``--seeds``.

  ``--seeds`` takes one or more non-negative integers (``None`` when not
  given, so that the caller picks its default).
  """
  p = Parser(description=description)
  p.add_argument("--out", default=out, help="folder for the result files")
  p.add_argument("--figures", default=figures, help="folder for the figures")
  p.add_argument("--quick", action="store_true", help="a tiny run")
  p.add_argument("--seeds", type=_seed, nargs="+", default=None,
                 help=seeds_help)
  return p
