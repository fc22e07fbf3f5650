"""Command lines of the experiments: one-line errors, typed options, help.

Every experiment builds its parser here, so that a bad option gets one line
on stderr naming the option and what is expected, and exit status 2, as
argparse does for its own errors; never a traceback. The options that name
what a run writes are checked right after parsing, before any training, so
that a run is never lost to an output path it cannot write.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from typing import Any, Callable, NamedTuple, NoReturn, Sequence

EXAMPLES_EXTRA = 'pip install -e ".[examples]"'


class Output(NamedTuple):
  """What an option names.

  Attributes:
    kind: ``"prefix"`` (the run writes ``OUT.json`` and ``OUT.md``),
      ``"file"`` or ``"folder"``.
    figure: ``"required"``: it is a figure, so it needs Matplotlib;
      ``"optional"``: it includes figures that are left out, with a
      warning, without Matplotlib; ``""``: no figure.
  """

  kind: str
  figure: str = ""


# The outputs of the experiments' options, by destination; an option can
# say otherwise with ``add_argument(..., output=Output(...))``.
OUTPUTS = {"out": Output("prefix"), "out_dir": Output("folder", "optional"),
           "figure": Output("file", "required"),
           "figures": Output("folder", "required")}


class Parser(argparse.ArgumentParser):
  """An ``ArgumentParser`` whose errors are one line (no usage block) and
  whose output options are checked before the run starts."""

  def __init__(self, *args: Any, **kwargs: Any):
    super().__init__(*args, **kwargs)
    self.outputs: dict[str, Output] = {}

  def add_argument(self, *args: Any, output: Output | None = None,
                   **kwargs: Any) -> argparse.Action:
    action = super().add_argument(*args, **kwargs)
    if output is not None:
      self.outputs[action.dest] = output
    return action

  def parse_known_args(self, args: Sequence[str] | None = None,
                       namespace: argparse.Namespace | None = None
                       ) -> tuple[argparse.Namespace, list[str]]:
    parsed, extra = super().parse_known_args(args, namespace)
    for action in self._actions:
      output = self.outputs.get(action.dest, OUTPUTS.get(action.dest))
      path = getattr(parsed, action.dest, None)
      if output is not None and path is not None:
        self._check_output(action, path, output)
    return parsed, extra

  def _check_output(self, action: argparse.Action, path: str,
                    output: Output) -> None:
    flag = action.option_strings[-1]
    problem = output_problem(path, output.kind)
    if problem:
      self.error(f"argument {flag}: {problem}")
    if output.figure and not importable("matplotlib"):
      if output.figure == "required":
        self.error(f"argument {flag}: figures need Matplotlib, which is not "
                   f"installed: {EXAMPLES_EXTRA}")
      warn(f"Matplotlib is not installed, so {flag} gets no figures "
           f"({EXAMPLES_EXTRA})")

  def error(self, message: str) -> NoReturn:
    message = " ".join(message.split())  # one line, whatever the message
    self.exit(2, f"{self.prog}: error: {message}\n")


def output_problem(path: str, kind: str) -> str | None:
  """Why ``path`` cannot be written as an output of ``kind``, or ``None``.

  Args:
    path: what the option names.
    kind: ``"prefix"`` (``path.json`` and ``path.md`` are written),
      ``"file"`` or ``"folder"``.

  Returns:
    One line saying what is in the way, or ``None`` where the run can write
    there (creating the missing folders).

  Example:
    >>> output_problem(__file__, "folder")  # doctest: +ELLIPSIS
    "'.../_cli.py' exists and is not a folder"
  """
  if kind not in ("prefix", "file", "folder"):
    raise ValueError(f"Unknown output kind {kind!r}.")
  files = {"prefix": [path + ".json", path + ".md"], "file": [path],
           "folder": []}[kind]
  for f in files:
    if os.path.isdir(f):
      return f"{f!r} is a folder"
  if kind == "folder" and os.path.exists(path) and not os.path.isdir(path):
    return f"{path!r} exists and is not a folder"
  folder = path if kind == "folder" else os.path.dirname(path) or "."
  # The nearest existing ancestor must be a writable folder.
  parent = os.path.abspath(folder)
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    return f"{parent!r} is a file, so {folder!r} cannot be a folder"
  if not os.access(parent, os.W_OK):
    return f"cannot write in {parent!r}"
  return None


def importable(module: str) -> bool:
  """Whether ``module`` can be imported."""
  try:
    importlib.import_module(module)
  except ImportError:
    return False
  return True


def require(parser: argparse.ArgumentParser, module: str, package: str,
            purpose: str) -> None:
  """Ends the program in one line if ``module`` (of the ``examples`` extra)
  is missing: ``purpose`` needs ``package``, and how to install it."""
  if not importable(module):
    parser.error(f"{purpose} needs {package}, which is not installed: "
                 f"{EXAMPLES_EXTRA}")


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


def plural(count: int, noun: str) -> str:
  """``"1 epoch"``, ``"2 epochs"``."""
  return f"{count} {noun}{'' if count == 1 else 's'}"


def warn(message: str) -> None:
  print(f"warning: {message}", file=sys.stderr, flush=True)
