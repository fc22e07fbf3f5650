"""Recording what an experiment printed, with the command that printed it."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from typing import Any, Callable, Sequence


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


class ArgumentParser(argparse.ArgumentParser):
  """Reports a bad option in one line on stderr, with exit status 2."""

  def error(self, message: str):
    message = " ".join(message.split())  # one line, whatever the message
    self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def number(kind: type, *, positive: bool = True) -> Callable[[str], Any]:
  """An argparse type: a ``kind`` (int or float) that is > 0 (or >= 0)."""

  def parse(text: str):
    try:
      value = kind(text)
    except ValueError:
      raise argparse.ArgumentTypeError(
          f"expected {'an integer' if kind is int else 'a number'}, got "
          f"{text!r}") from None
    if not (value > 0 if positive else value >= 0):
      raise argparse.ArgumentTypeError(
          f"must be {'> 0' if positive else '>= 0'}, got {text}")
    return value

  return parse


def save_figure(fig: Any, path: str) -> None:
  """Writes a Matplotlib figure to ``path`` (creating its folder), closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
