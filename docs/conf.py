"""Sphinx configuration for pgvisor's documentation."""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "pgvisor"
author = "the pgvisor developers"
copyright = "2026, the pgvisor developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.viewcode"]
autodoc_member_order = "bysource"
autodoc_mock_imports = []
exclude_patterns = ["_build"]
# Furo (the docs extra): readable, light and dark, code blocks scroll inside the column.
html_theme = "furo"
html_title = "pgvisor"
html_static_path = ["_static"]
nitpicky = False
