"""The review page in a real browser: Debian's headless Chromium, driven by Selenium, against a live
uvicorn server over a small workdir. Open an experiment, read the table, rate five pairs blind, reload
and see them kept, export them. Screenshots are kept under tests/artifacts/ui/ (ignored by git; the
path is printed). A missing Chromium fails the test: `make test` installs it (chromium, chromium-driver).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from live_server import LiveServer
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from tunelab.review import default_db_url
from tunelab.ui import create_app

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "ui"
EXPORT_FIELDS = {"experiment", "question_id", "question", "reference", "variant_a", "variant_b", "answer_a",
                 "answer_b", "choice", "reviewer", "note", "created_at"}


def _find(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(f"{' / '.join(names)} is not installed: run `make test` (it installs Debian's chromium and "
                "chromium-driver) or `apt-get install chromium chromium-driver`")


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = _find("chromium", "chromium-browser")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                              "download.prompt_for_download": False})
    driver = webdriver.Chrome(service=Service(_find("chromedriver")), options=options)
    driver.implicitly_wait(30)  # a busy 2-core machine can take seconds to render a page
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def _shot(driver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")


def _download(driver, link_id: str, name: str) -> list[dict]:
    driver.find_element(By.ID, link_id).click()
    target = driver.downloads / name
    deadline = time.time() + 20
    while not (target.is_file() and not list(driver.downloads.glob("*.crdownload"))):
        assert time.time() < deadline, f"the browser did not download {name}: {list(driver.downloads.iterdir())}"
        time.sleep(0.1)
    return [json.loads(line) for line in target.read_text().splitlines()]


def test_rate_five_pairs_blind_in_chromium(workdir, browser):
    app = create_app(workdir, default_db_url(workdir))
    with LiveServer(app) as server:
        browser.get(server.url + "/")
        browser.find_element(By.LINK_TEXT, "exp").click()
        rows = browser.find_elements(By.CSS_SELECTOR, "#comparison tbody tr")
        cells = [[td.text for td in row.find_elements(By.TAG_NAME, "td")] for row in rows]
        assert [c[0] for c in cells] == ["tiny-model base", "tiny-model base + RAG", "tiny-model tuned"]
        assert all("±" in c[1] for c in cells)  # rougeL with its standard error
        assert browser.find_element(By.ID, "reading").text.strip()
        _shot(browser, "1-experiment")

        browser.find_element(By.ID, "review-link").click()
        browser.find_element(By.ID, "name").send_keys("Ana Reviewer")
        browser.find_element(By.ID, "start").click()
        assert browser.find_element(By.ID, "reviewer-name").text == "Ana Reviewer"
        choices = ["a", "b", "tie", "both_wrong", "a"]
        seen = []
        for i, choice in enumerate(choices):
            a = browser.find_element(By.ID, "answer-a").text
            b = browser.find_element(By.ID, "answer-b").text
            assert a and b and a != b
            seen.append((browser.find_element(By.ID, "question").text, a, b))
            page = browser.page_source.split("<footer")[0]
            assert "tiny-model" not in page  # the variants' names stay hidden
            if i % 2:  # the keyboard shortcut (static/app.js) on every other pair, a click on the rest
                browser.find_element(By.TAG_NAME, "body").send_keys({"a": "1", "b": "2", "tie": "3",
                                                                     "both_wrong": "4"}[choice])
            else:
                browser.find_element(By.ID, f"choice-{choice}").click()
            assert browser.find_element(By.ID, f"choice-{choice}").is_selected()
            browser.find_element(By.ID, "note").send_keys(f"note {i} <b>not bold</b>")
            if i == 2:
                _shot(browser, "2-review")
            form = browser.find_element(By.ID, "rate-form")
            browser.find_element(By.ID, "submit").click()
            WebDriverWait(browser, 60).until(expected_conditions.staleness_of(form))  # the next page loaded
            assert browser.find_element(By.ID, "rated-count").text == str(i + 1)
        assert len(set(seen)) == 5

        browser.refresh()
        assert browser.find_element(By.ID, "rated-count").text == "5"
        kept = browser.find_elements(By.CSS_SELECTOR, "#my-ratings tbody tr")
        assert len(kept) == 5 and "note 4 <b>not bold</b>" in kept[0].text  # newest first, shown as text
        _shot(browser, "3-after-reload")

        browser.find_element(By.LINK_TEXT, "exp").click()
        assert "5 rating(s)" in browser.find_element(By.ID, "ratings-count").text
        ratings = _download(browser, "export-ratings", "exp-ratings.jsonl")
        assert [r["choice"] for r in ratings] == choices
        assert all(set(r) == EXPORT_FIELDS and r["reviewer"] == "Ana Reviewer" for r in ratings)
        assert [(r["question"], r["answer_a"], r["answer_b"]) for r in ratings] == seen
        prefs = _download(browser, "export-preferences", "exp-preferences.jsonl")
        assert len(prefs) == 3 and all(set(p) == {"prompt", "chosen", "rejected"} for p in prefs)
        _shot(browser, "4-exported")
