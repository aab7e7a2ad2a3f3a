"""Sphinx configuration of the scae manual (MyST Markdown pages, autodoc for the API)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

project = "scae"
author = "the scae maintainers"
release = "0.1.0"

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 4  # links to a section of another page: page.md#its-heading
exclude_patterns = ["_build"]
# The manual documents what the code does; a docstring that Sphinx cannot parse is an error
# (the CI build runs with -W).
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "description"
napoleon_numpy_docstring = True
napoleon_google_docstring = False
html_theme = "furo"
html_static_path = []
