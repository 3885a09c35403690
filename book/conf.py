"""Sphinx + myst-nb configuration of the browsable book (built by ``scripts/build_book.sh``).

The book has no text of its own besides ``book/index.md`` (the table of contents): its pages are the
notebooks under ``notebooks/`` and the pages under ``docs/``, read in place (the source directory is the
repository root and ``include_patterns`` picks them). Notebooks are not executed: their committed outputs
(figures, printed checks) are what the book shows. Formulas are rendered by MathJax 3, served from the
built site itself (``sphinx-mathjax-offline``), so the book works without a network.
"""

project = "diffusion-notes"
author = "the diffusion-notes authors"
root_doc = "book/index"
extensions = ["myst_nb", "sphinx-mathjax-offline"]
include_patterns = ["book/index.md", "README.md", "notebooks/**.ipynb", "notebooks/README.md", "docs/*.md"]
exclude_patterns = ["_build", "**/.ipynb_checkpoints"]

nb_execution_mode = "off"  # the committed outputs are the book's figures
nb_merge_streams = True
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type", "misc.highlighting_failure"]

html_theme = "alabaster"
html_title = "diffusion-notes"
html_theme_options = {"page_width": "1200px", "sidebar_width": "260px", "fixed_sidebar": True}
html_sidebars = {"**": ["about.html", "navigation.html", "relations.html", "searchbox.html"]}
html_show_sourcelink = False
