"""The blind A/B page: pairing, blinding, votes JSON, and a real click-through in headless Chromium.

The browser test needs Debian's chromium + chromium-driver and the selenium
package (`apt-get install -y chromium chromium-driver`, `pip install selenium`);
without them it is skipped with that reason.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_report import make_run  # the synthetic run directory of the report tests

from llm_dit.report import export_ab_page, read_votes, write_report
from llm_dit.report.ab_page import _upscaled
from llm_dit.report.provenance import RANDOM_WEIGHTS_NOTICE

CHROMIUM, CHROMEDRIVER = (
    shutil.which("chromium") or "/usr/bin/chromium",
    shutil.which("chromedriver") or "/usr/bin/chromedriver",
)


def page_data(page: Path) -> dict:
    html = page.read_text()
    block = html.split('<script id="ab-data" type="application/json">')[1].split("</script>")[0]
    return json.loads(block)


def test_pairs_are_blind_paired_and_seeded(tmp_path):
    run = make_run(tmp_path, "think_block")  # control "none" + 4 conditions, 4 prompts x 3 seeds
    page = export_ab_page(run, pairs_per_condition=5, seed=3)
    data = page_data(page)
    pairs = data["pairs"]
    assert page == run / "ab_page.html" and len(pairs) == 4 * 5
    assert {p["condition"] for p in pairs} == {"empty", "quality", "style", "irrelevant"}
    for pair in pairs:
        control, other = (
            (pair["left"], pair["right"]) if pair["control_side"] == "left" else (pair["right"], pair["left"])
        )
        assert control["item_id"] == f"none/p{pair['prompt_index']:03d}_s{pair['seed']}"
        assert other["item_id"] == f"{pair['condition']}/p{pair['prompt_index']:03d}_s{pair['seed']}"
        assert (page.parent / pair["left"]["src"]).is_file() and (page.parent / pair["right"]["src"]).is_file()
    assert {p["control_side"] for p in pairs} == {"left", "right"}
    assert [p["condition"] for p in pairs] != sorted(p["condition"] for p in pairs)  # shuffled across conditions
    assert (
        "none" not in page.read_text().split("<body>")[1].split("<script")[0]
    )  # no condition name in the visible page
    assert export_ab_page(run, pairs_per_condition=5, seed=3).read_text() == page.read_text()
    assert page_data(export_ab_page(run, pairs_per_condition=5, seed=4))["pairs"] != pairs
    embedded = page_data(export_ab_page(run, 1, conditions=["empty"], output=tmp_path / "one.html", embed_images=True))
    assert len(embedded["pairs"]) == 1 and embedded["pairs"][0]["left"]["src"].startswith("data:image/png;base64,")


def test_small_images_are_shown_at_least_256_px_nearest_neighbour(tmp_path):
    run = make_run(tmp_path, "think_block")  # 16 px images
    Image.fromarray(np.arange(16 * 16 * 3, dtype=np.uint8).reshape(16, 16, 3)).save(run / "images/none/p000_s1.png")
    page = export_ab_page(run, pairs_per_condition=12, seed=0)
    pairs = page_data(page)["pairs"]
    for pair in pairs:
        for side in ("left", "right"):
            with Image.open(page.parent / pair[side]["src"]) as shown:
                assert shown.size == (256, 256)  # 16 px x 16
                original = np.asarray(Image.open(run / f"images/{pair[side]['item_id']}.png").convert("RGB"))
                # oracle: every source pixel repeated 16 x 16 times
                assert np.array_equal(np.asarray(shown.convert("RGB")), original.repeat(16, 0).repeat(16, 1))
    embedded = page_data(export_ab_page(run, 1, output=tmp_path / "one.html", embed_images=True))["pairs"][0]
    data = base64.b64decode(embedded["left"]["src"].split(",", 1)[1])
    assert Image.open(io.BytesIO(data)).size == (256, 256)
    big = tmp_path / "big.png"
    Image.new("RGB", (300, 260)).save(big)
    assert _upscaled(big) is None  # large enough: the PNG itself is linked


def test_random_weights_are_announced_on_the_page(tmp_path):
    run = make_run(tmp_path / "random", "think_block", environment={"weights": "tiny-random"})
    body = export_ab_page(run, 1).read_text().split("<body>")[1]
    assert body.lstrip().startswith('<div id="provenance">' + RANDOM_WEIGHTS_NOTICE)
    trained = make_run(tmp_path / "trained", "think_block", environment={"weights": "/models/Z-Image-Turbo"})
    assert RANDOM_WEIGHTS_NOTICE not in export_ab_page(trained, 1).read_text()


def test_read_votes_win_rates_ties_and_last_vote_wins(tmp_path):
    def vote(pair_id, condition, control_side, choice, time):
        return {
            "pair_id": pair_id,
            "condition": condition,
            "control": "none",
            "control_side": control_side,
            "choice": choice,
            "winner": "control",
            "time": time,
        }  # "winner" is recomputed, not trusted

    votes = [
        vote("0000", "empty", "left", "right", "t1"),  # condition wins
        vote("0001", "empty", "right", "right", "t1"),  # control wins
        vote("0002", "empty", "left", "tie", "t1"),
        vote("0003", "style", "left", "left", "t1"),
        vote("0003", "style", "left", "right", "t2"),  # the same pair voted again later: this one counts
    ]
    folder = tmp_path / "votes"
    folder.mkdir()
    (folder / "votes_a.json").write_text(
        json.dumps({"format": "llm-dit-ab-votes/1", "page_id": "p", "rater": "a", "votes": votes})
    )
    (folder / "votes_b.json").write_text(
        json.dumps({"format": "llm-dit-ab-votes/1", "page_id": "p", "rater": "b", "votes": votes[:1]})
    )
    rates = read_votes(folder)
    assert (rates["empty"].wins, rates["empty"].losses, rates["empty"].ties) == (2, 1, 1)
    assert rates["empty"].rate == pytest.approx(2.5 / 4)
    assert (rates["style"].wins, rates["style"].losses, rates["style"].n) == (1, 0, 1)
    low, high = rates["empty"].interval
    assert 0 < low < rates["empty"].rate < high < 1
    (folder / "votes_bad.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not an llm-dit votes file"):
        read_votes(folder)


@pytest.fixture
def browser(tmp_path):
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.skip("headless Chromium missing: apt-get install -y chromium chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium missing: pip install selenium")
    from selenium.webdriver.chrome.service import Service

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.downloads = downloads
    yield driver
    driver.quit()


def test_clicking_votes_and_downloading_them_round_trips(tmp_path, browser):
    run = make_run(tmp_path, "think_block")
    page = export_ab_page(run, pairs_per_condition=2, seed=0)
    pairs = page_data(page)["pairs"]
    browser.get(page.as_uri())
    browser.find_element("id", "rater").send_keys("tester")
    intended = {}
    for index, pair in enumerate(pairs):  # the page advances to the next unvoted pair after each click
        shown = browser.execute_script("return document.getElementById('img-left').getAttribute('src')")
        assert shown == pair["left"]["src"]
        want = ("condition", "control", "tie")[index % 3]
        side = (
            "tie"
            if want == "tie"
            else (
                pair["control_side"] if want == "control" else ("right" if pair["control_side"] == "left" else "left")
            )
        )
        browser.find_element("id", f"vote-{side}").click()
        intended.setdefault(pair["condition"], []).append(want)
    in_dom = json.loads(browser.find_element("id", "votes-json").get_attribute("textContent"))
    assert len(in_dom["votes"]) == len(pairs) and in_dom["rater"] == "tester"

    browser.find_element("id", "download").click()
    deadline = time.time() + 10
    while time.time() < deadline and not list(browser.downloads.glob("votes_*.json")):
        time.sleep(0.1)
    files = list(browser.downloads.glob("votes_*.json"))
    assert files, "the download button saved no votes file"
    shutil.copy(files[0], run / files[0].name)
    rates = read_votes(run)
    for condition, wants in intended.items():
        rate = rates[condition]
        assert (rate.wins, rate.losses, rate.ties) == (
            wants.count("condition"),
            wants.count("control"),
            wants.count("tie"),
        )
    assert "## Human preference (blind A/B vs control)" in write_report(run, n_boot=100, image_change=False).read_text()
