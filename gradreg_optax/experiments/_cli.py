"""Command lines of the experiments: one-line errors, typed options, help.

Every experiment builds its parser here, so that a bad option gets one line
on stderr naming the option and what is expected, and exit status 2, as
argparse does for its own errors; never a traceback.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Any, Callable, NoReturn


class Parser(argparse.ArgumentParser):
  """An ``ArgumentParser`` whose errors are one line (no usage block)."""

  def error(self, message: str) -> NoReturn:
    message = " ".join(message.split())  # one line, whatever the message
    self.exit(2, f"{self.prog}: error: {message}\n")


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
  """Adds the default to help lines that do not state one already."""

  def _get_help_string(self, action: argparse.Action) -> str:
    text = action.help or ""
    if "default" in text or action.default is argparse.SUPPRESS:
      return text
    return text + (" (default: none)" if action.default is None
                   else " (default: %(default)s)")


def parser(module: str, description: str) -> Parser:
  """The parser of ``python -m module``, with every default in the help."""
  return Parser(prog=f"python -m {module}", description=description,
                formatter_class=_Formatter)


def number(kind: Callable[[str], Any], minimum: float | None = None, *,
           strict: bool = False, nonzero: bool = False
           ) -> Callable[[str], Any]:
  """An argparse ``type``: a finite ``kind`` (>= or > ``minimum``)."""
  bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
  expected = (f"{'an integer' if kind is int else 'a number'}{bound}"
              + (" other than 0" if nonzero else ""))

  def convert(text: str) -> Any:
    try:
      value = kind(text)
    except ValueError:
      value = None
    if (value is None or not math.isfinite(value)
        or (minimum is not None and (value < minimum
                                     or (strict and value == minimum)))
        or (nonzero and value == 0)):
      raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value

  convert.__name__ = kind.__name__  # argparse names the type in its errors
  return convert


POSITIVE_INT = number(int, 1)
NONNEGATIVE = number(float, 0)
POSITIVE = number(float, 0, strict=True)


def warn(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr, flush=True)
