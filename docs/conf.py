"""Sphinx configuration of weightax's documentation (``make docs``)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import weightax  # noqa: E402
from weightax import _methods  # noqa: E402

project = "weightax"
author = "the weightax authors"
copyright = "the weightax authors"  # noqa: A001
release = weightax.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# Docstrings are Google style (Args:/Returns:/Example:) with RST math.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields, so NamedTuple fields are described once
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_preserve_defaults = True

html_theme = "furo"
html_title = f"weightax {release}"
html_static_path = ["_static"]

# The method table is generated from weightax/_methods.py (the single source that
# tests/test_method_table.py measures) wherever a page says <!-- method-table -->.
MARKERS = {
    "<!-- method-table -->": _methods.markdown_table,
    "<!-- method-notes -->": _methods.markdown_notes,
    "<!-- meta-method-table -->": _methods.meta_markdown_table,
    "<!-- meta-method-notes -->": _methods.meta_markdown_notes,
}


def _insert_generated(app, docname, source):  # noqa: ARG001
  for marker, make in MARKERS.items():
    if marker in source[0]:
      source[0] = source[0].replace(marker, make())


def setup(app):
  app.connect("source-read", _insert_generated)
