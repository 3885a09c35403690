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


#: Notebooks renumbered in December 2026 (notebooks/README.md, "Renumbered notebooks"): the old page of each
#: becomes a redirect to the new one, so that links written before keep working.
RENUMBERED = {
    "06_samplers_as_ode_solvers": "08_samplers_as_ode_solvers",
    "08_latent_diffusion": "10_latent_diffusion",
    "09_text_to_image": "12_text_to_image",
    "10_sigma_view": "09_sigma_view",
    "11_training_latent_diffusion": "13_training_latent_diffusion",
    "12_score_and_sde": "06_score_and_sde",
    "13_sd1_sd2_sdxl": "14_sd1_sd2_sdxl",
    "14_conditioning_internals": "11_conditioning_internals",
}

_REDIRECT = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Moved: {new}</title>
<meta http-equiv="refresh" content="0; url={new}.html"><link rel="canonical" href="{new}.html"></head>
<body><p>This notebook was renumbered: <a href="{new}.html">{new}</a>.</p></body></html>
"""


def _write_redirects(app, exception):
    from pathlib import Path

    if exception is not None or app.builder.format != "html":
        return
    folder = Path(app.outdir) / "notebooks"
    for old, new in RENUMBERED.items():
        page = folder / f"{old}.html"
        if not page.exists():  # never over a page that exists again under its old name
            page.write_text(_REDIRECT.format(new=new), encoding="utf-8")


def setup(app):
    app.connect("build-finished", _write_redirects)
