"""The page in a real browser: headless Chromium (Debian's chromium + chromium-driver) through Selenium.

Skips when Gradio, Selenium, chromium or chromedriver is missing
(``apt-get install -y chromium chromium-driver``; ``pip install -e ".[dev,app]"``).
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import TimeoutException, WebDriverException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from lora_sam.app.images import load_image_file  # noqa: E402
from lora_sam.app.overlay import model_view  # noqa: E402
from lora_sam.app.session import Session  # noqa: E402
from lora_sam.app.ui import launch_page  # noqa: E402

pytestmark = pytest.mark.slow  # the whole module: a browser driving a served page

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
    blocks = launch_page(bank, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
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


def _status(chrome: webdriver.Chrome) -> str:
    return chrome.find_element(By.ID, "status").text


def _picture(chrome: webdriver.Chrome, index: int) -> np.ndarray:
    """The pixels of model picture ``index`` as the page shows them (a PNG the server wrote)."""
    src = chrome.find_element(By.CSS_SELECTOR, f"#model-{index} img").get_attribute("src")
    if src.startswith("data:"):
        data = base64.b64decode(src.split(",", 1)[1])
    else:
        with urllib.request.urlopen(src, timeout=30) as response:
            data = response.read()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def _offset(chrome: webdriver.Chrome, image, x: float, y: float) -> tuple[int, int]:
    """The offset from the element's centre (Selenium's origin) of pixel (x, y) of the shown picture,
    placed as Gradio places it: centred in the element, scaled to fit and never enlarged."""
    w, h, rw, rh = chrome.execute_script(
        "const i = arguments[0], r = i.getBoundingClientRect(); return [i.naturalWidth, i.naturalHeight, r.width, "
        "r.height];", image)
    scale = min(rw / w, rh / h, 1)
    return round((x - w / 2) * scale), round((y - h / 2) * scale)


def _numbers(status: str) -> list[int]:
    return [int(v) for v in re.findall(r"-?\d+", status.split(":", 1)[1])]


def _upload(chrome: webdriver.Chrome, path: Path) -> None:
    upload = _wait(chrome, lambda: chrome.find_elements(By.CSS_SELECTOR, "input[data-testid^='Upload an image']"),
                   "the upload button")
    upload[0].send_keys(str(path))


def test_upload_click_and_see_a_mask_per_model(driver: webdriver.Chrome, url: str, bank, photo: np.ndarray,
                                               tmp_path: Path) -> None:
    Image.new("1", (20000, 20000)).save(tmp_path / "huge.png")
    Image.fromarray(photo).save(tmp_path / "photo.png")
    driver.get(url)
    _upload(driver, tmp_path / "huge.png")
    _wait(driver, lambda: "too large to decode safely" in _status(driver), "the message on a 20000 px upload")
    _upload(driver, tmp_path / "photo.png")  # the server still serves
    _wait(driver, lambda: "loaded photo.png" in _status(driver), "the load message")
    prompt = driver.find_element(By.CSS_SELECTOR, "#prompt img")
    count = len(bank.names)
    before = _sources(driver, count)
    loaded = load_image_file(tmp_path / "photo.png", bank.image_size, frame=bank.frame)
    dh, dw = loaded.display_size
    ActionChains(driver).move_to_element_with_offset(prompt, *_offset(driver, prompt, dw * 0.3, dh * 0.5)).click() \
        .perform()
    _wait(driver, lambda: "1 prompt: positive click at" in _status(driver), "the click's answer")
    _wait(driver, lambda: all(s and s != b for s, b in zip(_sources(driver, count), before)), "a mask per model")
    x, y = _numbers(_status(driver))
    assert abs(x - dw * 0.3) <= 2 and abs(y - dh * 0.5) <= 2
    scores = driver.find_element(By.ID, "scores").text
    for name in bank.names:
        assert name in scores
    labels = [driver.find_element(By.CSS_SELECTOR, f"#model-{i} [data-testid='block-label']").text
              for i in range(count)]
    assert [label.split(" at ")[0] for label in labels] == bank.names

    # each picture is that model's answer, drawn by a session of our own on the same click
    reference = Session(bank)
    reference.load(loaded)
    reference.click(x, y, "positive")
    expected = {name: model_view(loaded, output, reference.events) for name, output in reference.outputs().items()}
    shown = {name: _picture(driver, i) for i, name in enumerate(bank.names)}
    for name in bank.names:
        assert np.array_equal(shown[name], expected[name]), f"{name}: the page shows another answer"
    # the models' weights differ, so must their masks, and so the pictures
    assert not torch.equal(reference.outputs()["base"].masks, reference.outputs()["lora:adapter"].masks)
    assert not np.array_equal(shown["base"], shown["lora:adapter"])
    # the page as the README shows it (docs/images/app.png is benchmarks/app_screenshot.py's, on the demo)
    shot = Path(os.environ.get("LORA_SAM_SCREENSHOT_DIR", tmp_path)) / "app_test.png"
    assert driver.save_screenshot(str(shot))
    assert Image.open(shot).size[0] >= 1000


def test_right_click_is_negative_and_a_drag_is_a_box(driver: webdriver.Chrome, url: str, bank, photo: np.ndarray,
                                                     tmp_path: Path) -> None:
    Image.fromarray(photo).save(tmp_path / "photo.png")
    driver.get(url)
    _upload(driver, tmp_path / "photo.png")
    _wait(driver, lambda: "loaded photo.png" in _status(driver), "the load message")
    prompt = driver.find_element(By.CSS_SELECTOR, "#prompt img")
    dh, dw = load_image_file(tmp_path / "photo.png", bank.image_size, frame=bank.frame).display_size
    ActionChains(driver).move_to_element_with_offset(prompt, *_offset(driver, prompt, dw * 0.7, dh * 0.4)) \
        .context_click().perform()
    _wait(driver, lambda: "1 prompt: negative click at" in _status(driver), "the right click's answer")
    x, y = _numbers(_status(driver))
    assert abs(x - dw * 0.7) <= 2 and abs(y - dh * 0.4) <= 2
    start, end = _offset(driver, prompt, dw * 0.2, dh * 0.2), _offset(driver, prompt, dw * 0.6, dh * 0.8)
    ActionChains(driver).move_to_element_with_offset(prompt, *start).click_and_hold() \
        .move_by_offset(20, 20).move_to_element_with_offset(prompt, *end).release().perform()
    _wait(driver, lambda: "2 prompts: box" in _status(driver), "the drag's answer")
    x0, y0, x1, y1 = _numbers(_status(driver))
    for got, want in ((x0, dw * 0.2), (y0, dh * 0.2), (x1, dw * 0.6), (y1, dh * 0.8)):
        assert abs(got - want) <= 2
    time.sleep(1)  # a click that the drag would have let through would arrive now
    assert "2 prompts: box" in _status(driver) and not driver.find_elements(By.ID, "gesture-band")


def test_the_segment_everything_button_shows_each_models_automatic_masks(driver: webdriver.Chrome, url: str, bank,
                                                                         photo: np.ndarray, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The button answers in the browser: each model's picture is the automatic masks the server's bank computed
    for the uploaded image, drawn as ``automatic_view`` draws them (``test_session.py`` checks those masks
    against the official generator; recorded here, not computed twice)."""
    from lora_sam.app.overlay import automatic_view

    computed: dict[str, tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]] = {}
    real = bank.automatic

    def recording(name: str, image: np.ndarray, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        computed[name] = (image.copy(), real(name, image, *args, **kwargs))
        return computed[name][1]

    monkeypatch.setattr(bank, "automatic", recording)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    driver.get(url)
    _upload(driver, tmp_path / "photo.png")
    _wait(driver, lambda: "loaded photo.png" in _status(driver), "the load message")
    driver.find_element(By.CSS_SELECTOR, "#segment-everything").click()
    _wait(driver, lambda: "segment everything" in _status(driver), "the automatic masks", timeout=240)
    reference = Session(bank)
    reference.load(load_image_file(tmp_path / "photo.png", bank.image_size, frame=bank.frame))
    assert sorted(computed) == sorted(bank.names)
    for index, name in enumerate(bank.names):
        image, (masks, scores) = computed[name]
        assert np.array_equal(image, reference.image.display) and len(masks) > 0
        expected = automatic_view(reference.image, masks, scores)
        _wait(driver, lambda i=index, e=expected: np.array_equal(_picture(driver, i), e), f"{name}'s automatic masks")
