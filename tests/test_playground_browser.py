"""The playground in a real browser: headless Chromium (Debian's) driven by Playwright."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conftest import REPO
from test_playground import adapters, pool  # noqa: F401  (fixtures)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = REPO / "test-artifacts"


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium is not installed (.ci/run installs it: apt-get install chromium)")
def test_page_loads_a_prompt_gets_both_answers_and_a_screenshot_is_saved(pool, tmp_path):  # noqa: F811
    from playwright.sync_api import sync_playwright

    from app.playground import build

    demo = build(pool, tmp_path / "votes.jsonl", "base", "adapter:one")
    demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1400, "height": 1100})
            page.goto(demo.local_url)
            page.locator("#prompt textarea").fill("def add(a, b):\n")
            page.locator("#send").click()
            for pane in ("#left-answer textarea", "#right-answer textarea"):
                page.wait_for_function(f"() => document.querySelector('{pane}').value.length > 0", timeout=120_000)
            left = page.locator("#left-answer textarea").input_value()
            right = page.locator("#right-answer textarea").input_value()
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "playground.png"), full_page=True)
            browser.close()
        assert left and right
        assert (ARTIFACTS / "playground.png").stat().st_size > 10_000
    finally:
        demo.close()
