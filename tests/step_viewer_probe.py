"""Drive a step viewer in headless chromium: a script appended to a page moves the first viewer's slider and
clicks its buttons like a user, and writes what the page then shows into the DOM, which ``--dump-dom`` returns.

Shared by tests/test_step_viewer.py (a saved viewer page) and tests/test_book.py (the viewer inside a built
notebook page). Chromium is found, or the test skipped (failed in CI, where ``.ci/run`` installs it), by the rule
of tests/test_book.py.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]

#: ``%(k)d``: the level the slider is moved to. Records the first viewer's state (data-step, the header, the
#: formula's text, each image's src) at load, after the slider moved to k, after "next", after two "prev",
#: and after the slider moved to its last level.
PROBE = """
<script>
window.addEventListener("load", function () {
  var out = {};
  try {
    var root = document.querySelector(".dn-step-viewer");
    var slider = root.querySelector("input[type=range]");
    var snap = function () {
      return {step: root.getAttribute("data-step"), ready: root.getAttribute("data-ready"),
              header: root.querySelector(".dnsv-step").textContent,
              formula: root.querySelector(".dnsv-formula").textContent,
              srcs: Array.prototype.map.call(root.querySelectorAll("img[data-panel]"),
                                             function (img) { return img.getAttribute("src"); })};
    };
    var move = function (k) { slider.value = String(k); slider.dispatchEvent(new Event("input", {bubbles: true})); };
    out.initial = snap();
    move(%(k)d); out.moved = snap();
    root.querySelector(".dnsv-next").click(); out.next = snap();
    root.querySelector(".dnsv-prev").click(); root.querySelector(".dnsv-prev").click(); out.prev = snap();
    move(+slider.max); out.last = snap();
    out.viewers = document.querySelectorAll(".dn-step-viewer").length;
  } catch (err) { out.error = String(err); }
  var pre = document.createElement("pre");
  pre.id = "step-viewer-probe";
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>
"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed; .ci/run installs it with apt-get install -y chromium")
    pytest.skip("chromium is not installed (apt-get install chromium); the browser checks of the step viewer need it")


def with_probe(page_html: str, k: int) -> str:
    """``page_html`` with the probe appended before ``</body>``."""
    probe = PROBE % {"k": k}
    return page_html.replace("</body>", probe + "</body>", 1) if "</body>" in page_html else page_html + probe


def probe(url: str, profile: Path) -> dict:
    """Load ``url`` in headless chromium and return what the probe recorded."""
    dom = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=20000",
                          "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    found = re.search(r'<pre id="step-viewer-probe">(.*?)</pre>', dom, re.S)
    assert found, f"the probe wrote nothing; the page's end was: {dom[-500:]!r}"
    result = json.loads(html.unescape(found.group(1)))
    assert "error" not in result, f"the probe failed in the page: {result['error']}"
    return result
