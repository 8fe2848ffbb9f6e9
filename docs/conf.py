"""Sphinx configuration of the acon-ablation manual (Sphinx + MyST Markdown + sphinx-argparse, furo theme).

The reference pages are generated at build time from the live objects (``_ext/``). ``ACON_DOCS_PRELOAD``, a list
of Python files separated by ``os.pathsep``, runs before the build: a test registers a dummy entry with it and
finds the entry on the built page.
"""
from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE / "_ext")]  # the toolkit itself, then our extension
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
for preload in filter(None, os.environ.get("ACON_DOCS_PRELOAD", "").split(os.pathsep)):
    runpy.run_path(preload)

project = "acon-ablation"
author = "the acon-ablation team"
copyright = "2026, the acon-ablation team"

extensions = [
    "myst_parser",  # Markdown pages, as the README is
    "sphinxarg.ext",  # the command line reference, from run_study.build_parser()
    "sphinx.ext.autodoc",  # the Python API, from docstrings
    "acon_reference",  # settings, registries and the tracking layout, from the live declarations
]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]

# autodoc: signatures without type annotations (they would link to torch, pandas, optuna, unresolvable offline)
autodoc_typehints = "none"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": False}

html_theme = "furo"
html_title = "acon-ablation"
html_static_path = ["_static"]
html_css_files = ["acon.css"]
html_theme_options = {"source_repository": "", "navigation_with_keys": True}
