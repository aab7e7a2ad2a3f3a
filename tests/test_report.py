"""`snakemake --report` bundles the figures, and they render in headless Chromium."""

import base64
import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from .conftest import run_snakemake

pytestmark = pytest.mark.workflow
FIGURES = ["cosine_distributions.png", "metric_heatmap.png", "training_curves.png", "umap.png"]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _chromium(tmp_path, *args: str) -> str:
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--virtual-time-budget=15000",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.fixture(scope="module")
def report(small_run):
    path = small_run / "report.html"
    run_snakemake(small_run, small_run / "config.yaml", "--report", str(path))
    return path


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_report_loads_and_lists_every_figure(report, tmp_path):
    dom = _chromium(tmp_path, "--dump-dom", report.as_uri())
    visible = re.sub(r"<(script|style)\b.*?</\1>", "", dom, flags=re.S)
    assert "Results" in visible  # the report's JavaScript ran and drew its navigation
    for figure in FIGURES:
        assert figure in dom, figure


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_report_figures_render_in_chromium(report, tmp_path):
    html = report.read_text()
    uris = {
        name: re.search(
            rf"data:image/png[^\"']*?filename={re.escape(name)};base64,[A-Za-z0-9+/=]+", html
        ).group(0)
        for name in FIGURES
    }
    # The embedded images decode to real, non-blank pictures…
    for name, uri in uris.items():
        png = tmp_path / name
        png.write_bytes(base64.b64decode(uri.split("base64,", 1)[1]))
        pixels = np.asarray(Image.open(png).convert("L"), dtype=float)
        assert pixels.std() > 5, f"{name} is blank"
    # …and Chromium decodes every one of them (naturalWidth > 0) and paints them.
    page = tmp_path / "figures.html"
    images = "".join(f'<img id="{n}" src="{u}" width="400">' for n, u in uris.items())
    page.write_text(
        f"<html><body>{images}<pre id='sizes'></pre><script>window.onload = () => "
        "document.getElementById('sizes').textContent = JSON.stringify("
        "[...document.images].map(i => [i.id, i.naturalWidth]));</script></body></html>"
    )
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri())
    sizes = dict(
        json.loads(re.search(r"<pre id=\"sizes\">(.*?)</pre>", dom).group(1).replace("&quot;", '"'))
    )
    assert all(sizes[name] > 100 for name in FIGURES), sizes
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,900", page.as_uri())
    assert np.asarray(Image.open(shot).convert("L"), dtype=float).std() > 5
