"""Sphinx configuration: the guide, the studies and the API reference.

Build with ``python3 -m sphinx -W -b html docs docs/_build/html``.
"""

from __future__ import annotations

import inspect
import os
import sys

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docutils import SphinxDirective

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__),
                                                os.pardir)))
import gradreg_optax  # pylint: disable=wrong-import-position

project = "gradreg-optax"
release = version = gradreg_optax.__version__
extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build"]
html_theme = "alabaster"
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # NamedTuple fields are listed, not repeated
# The result tables under results/ are written by the experiments, without
# a title and opening at a third-level heading: _title_results gives them
# one, and their heading levels are left as they are.
suppress_warnings = ["myst.header"]


def _data_doc(name: str) -> list[str]:
  """The docstring under the assignment of the public data ``name``."""
  target = getattr(gradreg_optax, name)
  for module in sorted(m for m in sys.modules
                       if m.startswith("gradreg_optax.")):
    if getattr(sys.modules[module], name, None) is target:
      doc = ModuleAnalyzer.for_module(module).find_attr_docs().get(("", name))
      if doc:
        return list(doc)
  raise ValueError(f"gradreg_optax.{name} has no docstring under its "
                   "assignment")


def api_entries(names) -> list[str]:
  """reStructuredText that documents each public name of gradreg_optax."""
  lines = [".. py:currentmodule:: gradreg_optax", ""]
  for name in names:
    obj = getattr(gradreg_optax, name)
    if inspect.ismodule(obj):
      lines += [f".. automodule:: {obj.__name__}", "   :members:"]
      # Its members that are public names of the package are documented
      # under those names.
      shared = sorted(n for n in names if n in vars(obj)
                      and getattr(obj, n) is getattr(gradreg_optax, n))
      if shared:
        lines += ["   :exclude-members: " + ", ".join(shared)]
    elif inspect.isclass(obj):
      lines += [f".. autoclass:: gradreg_optax.{name}", "   :members:"]
      if hasattr(obj, "_fields"):  # a NamedTuple: its docstring lists them
        lines += ["   :exclude-members: " + ", ".join(obj._fields)]
    elif callable(obj):
      lines += [f".. autofunction:: gradreg_optax.{name}"]
    else:
      lines += [f".. py:data:: {name}", ""]
      lines += ["   " + line for line in _data_doc(name)]
    lines += [""]
  return lines


class PublicApi(SphinxDirective):
  """Documents every name of ``gradreg_optax.__all__``, in that order."""

  def run(self) -> list[nodes.Node]:
    container = nodes.section()
    container.document = self.state.document
    self.state.nested_parse(StringList(api_entries(gradreg_optax.__all__),
                                       source="gradreg_optax.__all__"),
                            self.content_offset, container)
    return container.children


def _title_results(app, docname: str, source: list[str]) -> None:
  del app  # unused
  if docname.startswith("results/"):
    name = docname.removeprefix("results/")
    source[0] = f"# Results: {name}\n\n" + source[0]


def setup(app):
  app.add_directive("public-api", PublicApi)
  app.connect("source-read", _title_results)
  return {"parallel_read_safe": True}
