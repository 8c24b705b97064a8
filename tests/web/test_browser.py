"""The page in a real browser: headless Chromium (Debian's chromium + chromium-driver) through Selenium.

Skips when Gradio, Selenium, chromium or chromedriver is missing
(``apt-get install -y chromium chromium-driver``; ``pip install -e ".[dev,app]"``).
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import TimeoutException, WebDriverException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from lora_sam.app.ui import build_page  # noqa: E402

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def driver() -> Iterator[webdriver.Chrome]:
    browser = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    chromedriver = shutil.which("chromedriver")
    if browser is None or chromedriver is None:
        pytest.skip("chromium or chromedriver not found (apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1400"):
        options.add_argument(argument)
    try:
        chrome = webdriver.Chrome(options=options, service=webdriver.ChromeService(chromedriver))
    except WebDriverException as err:
        pytest.skip(f"chromium does not start here: {err.msg}")
    yield chrome
    chrome.quit()


@pytest.fixture(scope="module")
def url(bank) -> Iterator[str]:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    port = _free_port()
    blocks = build_page(bank)
    blocks.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    blocks.close()


def _wait(chrome: webdriver.Chrome, condition, what: str, timeout: float = 60):
    try:
        return WebDriverWait(chrome, timeout).until(lambda _: condition())
    except TimeoutException:
        status = chrome.find_element(By.ID, "status").text
        pytest.fail(f"timed out waiting for {what}; status line: {status!r}")


def _sources(chrome: webdriver.Chrome, count: int) -> list[str]:
    images = [chrome.find_elements(By.CSS_SELECTOR, f"#model-{i} img") for i in range(count)]
    return [found[0].get_attribute("src") or "" if found else "" for found in images]


def test_upload_click_and_see_a_mask_per_model(driver: webdriver.Chrome, url: str, bank, photo: np.ndarray,
                                               tmp_path: Path) -> None:
    Image.fromarray(photo).save(tmp_path / "photo.png")
    driver.get(url)
    upload = _wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "input[data-testid^='Upload an image']"),
                   "the upload button")
    upload[0].send_keys(str(tmp_path / "photo.png"))
    prompt = _wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "#prompt img"), "the uploaded image")[0]
    _wait(driver, lambda: "loaded photo.png" in driver.find_element(By.ID, "status").text, "the load message")
    count = len(bank.names)
    before = _sources(driver, count)
    ActionChains(driver).move_to_element_with_offset(prompt, -prompt.size["width"] // 5, 0).click().perform()
    _wait(driver, lambda: "1 prompt" in driver.find_element(By.ID, "status").text, "the click's answer")
    _wait(driver, lambda: all(s and s != b for s, b in zip(_sources(driver, count), before)), "a mask per model")
    scores = driver.find_element(By.ID, "scores").text
    for name in bank.names:
        assert name in scores
    labels = [driver.find_element(By.CSS_SELECTOR, f"#model-{i} [data-testid='block-label']").text
              for i in range(count)]
    assert [label.split(" at ")[0] for label in labels] == bank.names
