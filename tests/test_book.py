"""The browsable book: ``scripts/build_book.sh`` builds one static site from the notebooks and docs, and a
real headless browser (Debian's chromium) shows formulas rendered by MathJax, figures loaded, every
internal link resolving, and notebook 5's step viewer playing.

Without chromium the browser checks skip with the reason; in CI (``CI`` set) a missing chromium fails, since
``.ci/run`` installs it. The link checks need no browser.
"""

from __future__ import annotations

import functools
import html
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["book/index.html", "notebooks/03_ddpm.html", "notebooks/05_plms_pndm.html", "notebooks/06_score_and_sde.html",
         "docs/formulas.html"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    pytest.importorskip("myst_nb", reason="the book needs the dev extra (sphinx, myst-nb, sphinx-mathjax-offline)")
    out = tmp_path_factory.mktemp("book")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "build_book.sh"), str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    broken = [line for line in result.stderr.splitlines() if "WARNING" in line and any(kind in line for kind in _BROKEN)]
    assert not broken, "the book has broken references:\n" + "\n".join(broken)
    return out


#: Sphinx / myst warnings that mean a link, image or page is missing (other warnings are only printed).
_BROKEN = ("xref_missing", "not found", "image file not readable", "undefined label", "nonexisting document",
           "isn't included in any toctree", "unknown document")


class _Elements(HTMLParser):
    """Collects hrefs, image sources and element ids of a page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links, self.images, self.ids = [], [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "a" and "name" in attrs:
            self.ids.add(attrs["name"])
        if tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        if tag == "img" and attrs.get("src"):
            self.images.append(attrs["src"])


def _visible_text(dom: str) -> str:
    """The page's text outside scripts, styles, code and MathJax's own output."""
    for tag in ("script", "style", "pre", "code", "mjx-container"):
        dom = re.sub(rf"<{tag}\b.*?</{tag}>", " ", dom, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", dom))


def _parse(path: Path) -> _Elements:
    parser = _Elements()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


@functools.lru_cache(maxsize=None)
def _ids(path: Path) -> frozenset[str]:
    return frozenset(_parse(path).ids)


def _internal_targets(page: Path, site: Path, references):
    """(reference, file, fragment) for each relative reference of ``page``."""
    for ref in references:
        parts = urlsplit(ref)
        if parts.scheme or parts.netloc or ref.startswith("mailto:"):
            continue
        target = page if not parts.path else (page.parent / unquote(parts.path)).resolve()
        if target.is_dir():
            target = target / "index.html"
        yield ref, target, unquote(parts.fragment)


def test_every_internal_link_and_image_resolves(site):
    pages = sorted(p for p in site.rglob("*.html") if "_static" not in p.parts and "_sources" not in p.parts)
    assert len(pages) >= 20
    broken = []
    for page in pages:
        elements = _parse(page)
        for ref, target, fragment in _internal_targets(page, site, elements.links + elements.images):
            if not target.exists():
                broken.append(f"{page.relative_to(site)}: {ref} (no file {target})")
            elif fragment and target.suffix == ".html" and fragment not in _ids(target):
                broken.append(f"{page.relative_to(site)}: {ref} (no anchor #{fragment})")
    assert not broken, "\n".join(broken[:40])


def test_the_book_lists_every_notebook(site):
    index = (site / "book" / "index.html").read_text(encoding="utf-8")
    notebooks = sorted(p.relative_to(ROOT / "notebooks").with_suffix(".html").as_posix() for p in (ROOT / "notebooks").rglob("*.ipynb")
                       if ".ipynb_checkpoints" not in p.parts)
    missing = [n for n in notebooks if f"notebooks/{n}" not in index]
    assert not missing, f"not in the book's table of contents: {missing}"


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed; .ci/run installs it with apt-get install -y chromium")
    pytest.skip("chromium is not installed (apt-get install chromium); the browser checks of the book need it")


class _Server:
    """A local static server for the built site that records every request and its status."""

    def __init__(self, root: Path):
        self.requests: list[tuple[str, int]] = []
        record = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, directory=str(root), **kwargs)

            def log_request(self, code="-", size="-"):
                record.append((unquote(urlsplit(self.path).path), int(code) if str(code).isdigit() else 0))

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def rendered(site, tmp_path_factory):
    """page -> (DOM after JavaScript, requests the page made), from headless chromium."""
    chromium = _chromium()
    server = _Server(site)
    results = {}
    try:
        for page in PAGES:
            profile = tmp_path_factory.mktemp("chromium-profile")
            before = len(server.requests)
            dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000",
                                  "--dump-dom", server.url + page], capture_output=True, text=True, timeout=180).stdout
            results[page] = (dom, list(server.requests[before:]))
    finally:
        server.close()
    return results


@pytest.mark.parametrize("page", PAGES)
def test_formulas_are_rendered_by_mathjax(rendered, page):
    dom, _ = rendered[page]
    math = len(re.findall(r'class="math\b', dom))
    if page != "book/index.html":
        assert math >= 5, f"{page}: only {math} math elements"
    # MathJax replaces the TeX inside each math element by an <mjx-container>; left-over TeX starts with \( or \[
    unrendered = re.findall(r'class="math\b[^"]*"[^>]*>\s*(\\[(\[].{0,60})', dom)
    assert not unrendered, f"{page}: {len(unrendered)} of {math} math elements not typeset, e.g. {unrendered[:3]}"
    assert dom.count("<mjx-container") >= math, f"{page}: {dom.count('<mjx-container')} typeset formulas for {math} math elements"
    assert "<mjx-merror" not in dom and "data-mjx-error=" not in dom, f"{page}: MathJax reported a TeX error"
    text = _visible_text(dom)
    for raw in ("$$", "\\(", "\\["):
        assert raw not in text, f"{page}: raw TeX {raw!r} left in the text: ...{text[max(0, text.find(raw) - 80):text.find(raw) + 80]}..."


@pytest.mark.parametrize("page", PAGES)
def test_figures_and_scripts_load(rendered, site, page):
    dom, requests = rendered[page]
    elements = _Elements()
    elements.feed(dom)
    status = {path: code for path, code in requests}
    page_dir = "/" + str(Path(page).parent) + "/"
    for src in elements.images:
        if src.startswith("data:"):
            continue
        path = os.path.normpath(page_dir + unquote(urlsplit(src).path)) if not src.startswith("/") else src
        assert status.get(path) == 200, f"{page}: image {src} was not loaded (requests: {status.get(path)})"
    failed = [(p, c) for p, c in requests if c >= 400 and p != "/favicon.ico"]  # the browser's own guess
    assert not failed, f"{page}: failed requests {failed}"
    if page.startswith("notebooks/"):
        assert elements.images, f"{page}: no figures"


def test_the_step_viewer_plays_inside_the_book(site, tmp_path):
    """Notebook 5's step viewer inside its built page, among the book's own scripts and styles: the probe of
    tests/step_viewer_probe.py moves the slider and clicks the buttons in headless chromium."""
    from step_viewer_probe import probe, with_probe

    _chromium()
    page = site / "notebooks" / "05_plms_pndm.html"
    source = page.read_text(encoding="utf-8")
    assert source.count("class='dn-step-viewer'") == 1, "notebook 5's step viewer is not in its built page"
    probed = page.with_name("05_plms_pndm.step-viewer-probe.html")  # the same folder: the same relative links
    probed.write_text(with_probe(source, 3), encoding="utf-8")
    server = _Server(site)
    try:
        shown = probe(server.url + "notebooks/" + probed.name, tmp_path / "profile")
    finally:
        server.close()
        probed.unlink()
    assert shown["viewers"] == 1 and shown["initial"]["ready"] == "1", shown["initial"]
    assert shown["moved"]["step"] == "3" and "step 4 of 10" in shown["moved"]["header"]
    assert shown["moved"]["srcs"] != shown["initial"]["srcs"] and all(s.startswith("data:image/png") for s in shown["moved"]["srcs"])
    assert "Adams-Bashforth order 4" in shown["moved"]["formula"]
    assert (shown["next"]["step"], shown["prev"]["step"], shown["last"]["step"]) == ("4", "2", "10")


@pytest.mark.parametrize("old", ["12_score_and_sde", "06_samplers_as_ode_solvers", "09_text_to_image", "14_conditioning_internals"])
def test_old_notebook_pages_redirect_to_the_renumbered_ones(site, old):
    """Links written before the renumbering (notebooks/README.md, "Renumbered notebooks") still land on the notebook."""
    renumbered = _conf().RENUMBERED
    page = site / "notebooks" / f"{old}.html"
    assert page.exists(), f"no redirect page for {old}"
    target = re.search(r'http-equiv="refresh" content="0; url=([^"]+)"', page.read_text()).group(1)
    assert target == f"{renumbered[old]}.html" and (page.parent / target).exists()
    assert (ROOT / "notebooks" / f"{renumbered[old]}.ipynb").exists() and not (ROOT / "notebooks" / f"{old}.ipynb").exists()


def _conf():
    import importlib.util

    spec = importlib.util.spec_from_file_location("book_conf", ROOT / "book" / "conf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
