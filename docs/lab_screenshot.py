"""Take the README's screenshot of the lab page (docs/lab.png) with headless Chromium.

    PYTHONPATH=. python docs/lab_screenshot.py [--weights tiny-random] [--out docs/lab.png]

Starts the lab on a throwaway folder, compares three shipped conditions on one seed, shows the
prompt's tokens, and saves a downscaled PNG. Needs chromium, chromium-driver and selenium.
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from llm_dit.lab import LabSession, create_app
from llm_dit.lab.serve import BackgroundServer
from llm_dit.module import ZImageModule

PRESETS = (("baseline", "control"), ("refiner_skip", "skip"), ("hidden_layer", "hidden_layer=-6"))


def wait_for(driver: webdriver.Chrome, script: str, timeout: float = 300) -> object:
    deadline = time.monotonic() + timeout
    while not (value := driver.execute_script(f"return {script}")):
        if time.monotonic() > deadline:
            raise TimeoutError(script)
        time.sleep(0.2)
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="tiny-random")
    parser.add_argument("--out", default=str(Path(__file__).with_name("lab.png")))
    parser.add_argument("--width", type=int, default=800, help="width of the saved PNG")
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp()) / "lab"
    session = LabSession(ZImageModule(weights=options.weights), folder, accelerator="cpu")
    chrome = webdriver.ChromeOptions()
    chrome.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,900",
                 "--hide-scrollbars"):
        chrome.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=chrome)
    try:
        with BackgroundServer(create_app(session)) as server:
            driver.get(server.url)
            wait_for(driver, "document.body.dataset.ready")
            for index, (config, name) in enumerate(PRESETS):
                if index:
                    driver.find_element(By.ID, "add-condition").click()
                column = driver.find_elements(By.CSS_SELECTOR, ".condition-column")[index]
                value = driver.execute_script(
                    f"return [...arguments[0].querySelectorAll('optgroup[label={config}] option')]"
                    f".find(o => o.text === '{name}').value", column)
                Select(column.find_element(By.CSS_SELECTOR, ".preset")).select_by_value(value)
            driver.find_element(By.ID, "generate").click()
            wait_for(driver, "document.getElementById('status').textContent === 'done'")
            driver.find_element(By.ID, "encode").click()
            wait_for(driver, "document.querySelectorAll('#tokens span').length > 0")
            png = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    image = Image.open(io.BytesIO(png)).convert("RGB")
    image = image.resize((options.width, round(image.height * options.width / image.width)), Image.LANCZOS)
    image.quantize(colors=128).save(options.out, optimize=True)  # a palette keeps the PNG small
    print(f"wrote {options.out} ({image.width}x{image.height})")


if __name__ == "__main__":
    main()
