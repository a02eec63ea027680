"""report.html opened in headless Chromium: it renders its charts without console errors.

Chromium is Debian's `chromium` package, which .ci/run installs. Under CI (CI=true) a missing
browser fails; elsewhere the test says why it cannot run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=5000",
]


@pytest.fixture(scope="module")
def chromium():
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        msg = "Debian's chromium is not installed (apt-get install chromium; .ci/run does this)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def open_page(chromium, page, tmp_path):
    """(decoded charts, total images, console lines, screenshot path) for one page."""
    url = page.resolve().as_uri()
    common = [chromium, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(common + ["--dump-dom", url], capture_output=True, text=True, timeout=120)
    shot = tmp_path / "shot.png"
    subprocess.run(
        common + [f"--screenshot={shot}", "--window-size=1200,2600", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    m = re.search(r"charts decoded: (\d+) of (\d+)", dom.stdout)
    console = [ln for ln in dom.stderr.splitlines() if ":CONSOLE" in ln]
    return (int(m[1]), int(m[2])) if m else (0, -1), console, shot


def test_the_checker_catches_a_broken_page(chromium, tmp_path):
    """The same check on a page with a broken image and a script error must fail."""
    page = tmp_path / "bad.html"
    page.write_text(
        '<html><body><img src="data:image/png;base64,AAAA">'
        '<script>undefinedFunction();</script><p id="render-check"></p><script>'
        'window.addEventListener("load",function(){var i=document.images;'
        "var ok=0;for(var k=0;k<i.length;k++){if(i[k].naturalWidth>0)ok++;}"
        'document.getElementById("render-check").textContent='
        '"charts decoded: "+ok+" of "+i.length;});</script></body></html>'
    )
    (ok, total), console, _ = open_page(chromium, page, tmp_path)
    assert (ok, total) == (0, 1)
    assert any("Uncaught ReferenceError" in ln for ln in console)


def test_report_html_renders_its_charts(chromium, android_bundle, tmp_path):
    page = android_bundle["bundle"] / "report.html"
    assert page.exists()  # the default compress writes it next to report.json
    (ok, total), console, shot = open_page(chromium, page, tmp_path)
    assert total >= 2 and ok == total, (ok, total)
    assert console == []
    img = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert img.shape[0] > 500 and img.std() > 5  # a page with content, not a blank screen
    text = page.read_text()
    for heading in (
        "Accuracy and latency by stage",
        "Channel widths before and after pruning",
        "ExecuTorch op-time breakdown",
        "Scorecard",
        "Parity of every exported file",
    ):
        assert heading in text
