"""The lab page in headless Chromium against a real uvicorn server: generate, compare two conditions on
one seed, and the history after a server restart.

Needs Debian's chromium + chromium-driver and selenium (as the A/B page test does).
"""

from __future__ import annotations

import base64
import json
import shutil
import time
from pathlib import Path

import pytest

from callbacks.writer import read_rows
from llm_dit.lab import LabSession, create_app
from llm_dit.lab.serve import BackgroundServer
from llm_dit.module import ZImageModule

pytestmark = pytest.mark.usefixtures("one_thread")

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SAMPLER = {"steps": 2, "height": 32, "width": 32}
TIMEOUT_S = 120


def lab_server(session: LabSession) -> BackgroundServer:
    return BackgroundServer(create_app(session))


@pytest.fixture
def browser(tmp_path):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("headless Chromium missing: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium missing: pip install selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def wait_for(driver, script: str, timeout: float = TIMEOUT_S):
    """Poll a JavaScript expression until it is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(f"return {script}")
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for: {script}"
        time.sleep(0.1)


def column_images(driver) -> list[str | None]:
    return driver.execute_script(
        "return [...document.querySelectorAll('.condition-column .result-image')].map(i => i.getAttribute('src'))")


def test_generate_compare_and_history_after_restart(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    folder = tmp_path / "lab"
    with lab_server(LabSession(ZImageModule(weights="tiny-random"), folder, sampler=SAMPLER, accelerator="cpu")) as server:
        browser.get(server.url)
        wait_for(browser, "document.body.dataset.ready")
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("A red cube")
        seed = browser.find_element(By.ID, "seed")
        seed.clear()
        seed.send_keys("7")

        # generate: one condition (the baseline)
        browser.find_element(By.ID, "generate").click()
        wait_for(browser, "document.querySelector('.result-image').src.startsWith('data:image/png')")
        assert "condition: baseline" in browser.find_element(By.CSS_SELECTOR, ".result-row").text

        # compare: a second condition from the shipped presets, on the same seed
        browser.find_element(By.ID, "add-condition").click()
        second = browser.find_elements(By.CSS_SELECTOR, ".condition-column")[1]
        value = browser.execute_script(
            "return [...arguments[0].querySelectorAll('optgroup[label=refiner_skip] option')]"
            ".find(o => o.text === 'skip').value", second)
        Select(second.find_element(By.CSS_SELECTOR, ".preset")).select_by_value(value)
        assert json.loads(second.find_element(By.CSS_SELECTOR, ".condition-json").get_attribute("value"))["surgery"] == [
            {"variant": "skip"}]
        browser.execute_script("document.querySelectorAll('.result-image').forEach(i => i.removeAttribute('src'))")
        browser.find_element(By.ID, "generate").click()
        wait_for(browser, "[...document.querySelectorAll('.result-image')].every(i => (i.getAttribute('src') || '')"
                          ".startsWith('data:image/png'))")
        wait_for(browser, "document.getElementById('status').textContent === 'done'")
        rows = [c.find_element(By.CSS_SELECTOR, ".result-row").text for c in
                browser.find_elements(By.CSS_SELECTOR, ".condition-column")]
        assert "condition: baseline" in rows[0] and "condition: skip" in rows[1]
        assert all("seed: 7" in row for row in rows)
        table = {row["item_id"]: row for row in read_rows(folder / "results.jsonl")}
        for src, item_id in zip(column_images(browser), ("baseline/p000_s7", "skip/p000_s7")):
            shown = base64.b64decode(src.split(",", 1)[1])
            assert shown == (folder / table[item_id]["image"]).read_bytes()
        assert table["skip/p000_s7"]["height"] == 64  # the preset's own size, as in its study
        groups = wait_for(browser, "document.querySelectorAll('.history-group').length === 2 && "
                                   "[...document.querySelectorAll('.history-group')].map(g => g.children.length)")
        assert groups == [2, 1]  # newest first: the comparison, then the first generation

    # a new server on the same lab folder shows the same history
    with lab_server(LabSession(ZImageModule(weights="tiny-random"), folder, sampler=SAMPLER, accelerator="cpu")) as server:
        browser.get(server.url)
        wait_for(browser, "document.body.dataset.ready")
        items = wait_for(browser, "[...document.querySelectorAll('.history-item')].map(i => i.dataset.item)")
        assert items == ["baseline/p000_s7", "skip/p000_s7", "baseline/p000_s7"]
        wait_for(browser, "[...document.querySelectorAll('.history-item img')].every(i => i.complete && i.naturalWidth > 0)")
