"""End to end: JupyterLab (from PyPI) in headless Chromium (Debian's) on localhost
opens teaching notebooks with the tchlab kernel, runs them, and shows what a new user
sees: text rather than JSON trees, a loss plot with its legend, and `%explore`'s
widgets (jupyterlab_widgets) that redraw and train when used. The screenshots it takes
are the README's (target/screenshots/, copied to docs/ by hand)."""

import contextlib

import os
import pathlib
import shutil
import urllib.parse
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "01-first-steps.ipynb"
EXPLORE = ROOT / "notebooks" / "09-explore-by-hand.ipynb"
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (`make test` installs it when run as root)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyterlab(root):
    """A JupyterLab server on `root`; yields the URL prefix and the token query."""
    port, token = free_port(), "tchlab-e2e"
    log = open(root / "jupyterlab.log", "w")
    lab = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
         f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        + (["--allow-root"] if os.geteuid() == 0 else []),
        stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(),
    )
    try:
        deadline = time.time() + 90
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                assert lab.poll() is None and time.time() < deadline, "JupyterLab did not start: " + (root / "jupyterlab.log").read_text()[-2000:]
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}", f"token={token}"
    finally:
        lab.terminate()
        lab.wait(timeout=30)
        log.close()


def open_and_run_all(p, url, code_cells):
    """Chromium on a notebook: waits for the kernel, runs every cell, waits for the last."""
    args = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    # The kernel has started and answered: its status reads Idle (a hidden label).
    page.get_by_text("Kernel status: Idle").first.wait_for(state="attached", timeout=90_000)
    # Run All, again if the first request came before the kernel's connection
    # was up (the cells then show no execution count).
    for attempt in range(4):
        # Focus the notebook (a toast or the file browser may hold it) before the menu.
        page.locator(".jp-Notebook .jp-Cell .jp-InputPrompt").first.click()
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_text("Run All Cells", exact=True).click()
        try:
            page.wait_for_selector(".jp-InputPrompt:has-text('[1]')", timeout=15_000)
            break
        except Exception:
            assert attempt < 3, "JupyterLab never ran the cells"
    page.wait_for_selector(f".jp-InputPrompt:has-text('[{code_cells}]')", timeout=240_000)
    return browser, page


def dismiss_news(page):
    """Without JupyterLab's question about news in the screenshots."""
    news = page.get_by_role("button", name="No", exact=True)
    if news.count():
        news.first.click()
        page.wait_for_timeout(1500)  # the toast slides away


def test_jupyterlab_runs_the_first_notebook_and_shows_text_and_a_legible_loss_plot(tmp_path):
    from playwright.sync_api import sync_playwright

    shutil.copy(NOTEBOOK, tmp_path / "lab.ipynb")
    code_cells = NOTEBOOK.read_text().count('"cell_type": "code"')
    with jupyterlab(tmp_path) as (url, token), sync_playwright() as p:
        browser, page = open_and_run_all(p, f"{url}/lab/tree/lab.ipynb?{token}", code_cells)
        try:
            loss_cell = page.locator(".jp-CodeCell", has_text="%plot loss")
            image = loss_cell.locator(".jp-OutputArea-output img").element_handle(timeout=60_000)
        except Exception:
            page.screenshot(path=str(tmp_path / "jupyterlab-failed.png"))
            raise
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image, timeout=30_000)
        width = image.evaluate("img => img.naturalWidth")
        source = urllib.parse.unquote(image.evaluate("img => img.src"))
        errors = page.query_selector_all(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'], .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
        # Results show the text a command writes, not their data as a JSON tree.
        json_trees = page.query_selector_all(".jp-RenderedJSON")
        visible = {text: page.get_by_text(text, exact=False).first.is_visible() for text in ["data ready; an example:", "gpt2 model:"]}
        # The README's screenshot: the training cell's last line and the loss plot under it.
        dismiss_news(page)
        page.locator(".jp-CodeCell", has_text="%train 150").scroll_into_view_if_needed()
        loss_cell.scroll_into_view_if_needed()
        shot = ROOT / "target" / "screenshots" / "jupyterlab-first-steps.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot))
        browser.close()
    # JupyterLab prefers the SVG (800 px wide) to the 2x PNG (1600 px).
    assert width in (800, 1600), f"the loss plot renders at its size, got {width}"
    assert source.startswith("data:image/svg+xml"), source[:80]
    for entry in ["main (raw)", "main (smoothed)", "main (validation)"]:
        assert entry in source, f"the loss plot's legend names `{entry}`"
    assert not errors, "no cell failed"
    assert not json_trees, "no output renders as a JSON tree"
    assert all(visible.values()), f"the text commands write is visible: {visible}"


def test_jupyterlab_draws_explorers_as_widgets_that_redraw_and_train(tmp_path):
    from playwright.sync_api import sync_playwright

    shutil.copy(EXPLORE, tmp_path / "explore.ipynb")
    code_cells = EXPLORE.read_text().count('"cell_type": "code"')
    with jupyterlab(tmp_path) as (url, token), sync_playwright() as p:
        browser, page = open_and_run_all(p, f"{url}/lab/tree/explore.ipynb?{token}", code_cells)
        try:
            attention = page.locator(".jp-CodeCell", has_text="%explore attention")
            # The widget manager drew the controls (not the fallback picture).
            layer = attention.locator(".widget-slider", has_text="layer")
            layer.wait_for(timeout=60_000)
            assert attention.locator(".widget-slider").count() == 2 and attention.locator(".widget-checkbox").count() == 1
            image = attention.locator("img.widget-image")
            image.wait_for(timeout=30_000)
            before = image.get_attribute("src")
            # Move the layer slider: type into its readout, as a user can.
            readout = layer.locator(".widget-readout")
            readout.click()
            page.keyboard.press("Control+A")
            page.keyboard.type("1")
            page.keyboard.press("Enter")
            attention.get_by_text("attention of layer 1, head 0").wait_for(timeout=30_000)
            after = attention.locator("img.widget-image").get_attribute("src")

            # A click on `train` trains a try that %runs then lists.
            train = page.locator(".jp-CodeCell", has_text="%explore train")
            train.get_by_role("button", name="train", exact=True).click()
            train.get_by_text("try-1: 50 steps from snapshot").wait_for(timeout=120_000)
            runs = page.locator(".jp-CodeCell", has_text="%runs").last
            runs.locator(".jp-InputArea-editor").click()
            page.keyboard.press("Shift+Enter")
            runs.locator(".jp-OutputArea-output", has_text="try-1").wait_for(timeout=60_000)
            errors = page.query_selector_all(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.error']")
            dismiss_news(page)
            page.locator(".jp-CodeCell", has_text="%explore attention").scroll_into_view_if_needed()
            shot = ROOT / "target" / "screenshots" / "jupyterlab-explore.png"
            shot.parent.mkdir(parents=True, exist_ok=True)
            train.screenshot(path=str(ROOT / "target" / "screenshots" / "jupyterlab-explore-train.png"))
            attention.screenshot(path=str(shot))
        except Exception:
            page.screenshot(path=str(tmp_path / "jupyterlab-failed.png"))
            shutil.copy(tmp_path / "jupyterlab-failed.png", ROOT / "target" / "jupyterlab-explore-failed.png")
            raise
        finally:
            browser.close()
    assert before and after and before != after, "moving the layer slider redrew the picture"
    assert not errors, "no cell failed"
