"""The web page in a real headless browser (Debian's chromium driven by Selenium + chromium-driver).

Skips with the reason when no chromium / chromedriver / selenium is installed; CI installs them
(.ci/run). Set SERVE_PAGE_SCREENSHOT=PATH to keep the screenshot (docs/figures/serve_page.png).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'hpcl4sr[serve]')")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the dev extra has it)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture
def server(served: Path):
    import uvicorn

    import hpcl4sr
    from hpcl4sr.serve.app import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    rec = hpcl4sr.load(served)
    instance = uvicorn.Server(uvicorn.Config(create_app(rec), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not instance.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/", rec
    instance.should_exit = True
    thread.join(timeout=10)


@pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                    reason="no chromium / chromedriver (apt-get install chromium chromium-driver; CI does)")
def test_the_page_renders_a_users_recommendations(server, tmp_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, rec = server
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=DRIVER))
    try:
        browser.get(url)
        user = rec.data.user_ids[4]
        browser.find_element(By.ID, "user").send_keys(user)
        browser.find_element(By.ID, "n").clear()
        browser.find_element(By.ID, "n").send_keys("10")
        browser.find_element(By.ID, "go").click()
        WebDriverWait(browser, 20).until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#merged li")) == 10)
        expected = rec.recommend(user=user, n=10)
        merged = browser.find_elements(By.CSS_SELECTOR, "#merged li")
        shown = [li.find_element(By.CLASS_NAME, "item").text for li in merged]
        assert shown == [row.item for row in expected.items]
        history = browser.find_elements(By.CSS_SELECTOR, "#history-list li .cat")
        assert [h.text for h in history] == [f"({row.category})" for row in expected.history]
        assert len(browser.find_elements(By.CSS_SELECTOR, "#interests .card")) == 3
        assert browser.find_element(By.ID, "status").text == ""
        browser.save_screenshot(str(tmp_path / "serve_page.png"))
        if os.environ.get("SERVE_PAGE_SCREENSHOT"):
            shutil.copyfile(tmp_path / "serve_page.png", os.environ["SERVE_PAGE_SCREENSHOT"])

        browser.find_element(By.ID, "user").clear()
        browser.find_element(By.ID, "history").send_keys("never-seen")
        browser.find_element(By.ID, "go").click()
        WebDriverWait(browser, 20).until(lambda b: "popular" in b.find_element(By.ID, "unknown").text)
    finally:
        browser.quit()
