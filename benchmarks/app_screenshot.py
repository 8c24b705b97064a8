"""A screenshot of ``lora-sam app`` in headless Chromium, for the README (``docs/images/app.png``).

    python benchmarks/app_screenshot.py --run runs/demo            # base, LoRA and full of a demo run
    python benchmarks/app_screenshot.py --data DIR --out shot.png   # the built-in base on a dataset

Starts the page on a free port (as ``lora-sam app`` does), opens it in Debian's chromium through
chromedriver (``apt-get install -y chromium chromium-driver``), picks an image of the dataset (or
uploads ``--image``), chooses a ground-truth mask (the largest, or ``--mask``), clicks on its most
interior pixel, optionally adds a second click, and saves the page.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import time
from pathlib import Path

import cv2
import numpy as np
from selenium import webdriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from lora_sam.app.images import DatasetImages
from lora_sam.app.overlay import gt_on_display
from lora_sam.app.serve import AppConfig, add_arguments, model_bank, resolve_settings
from lora_sam.app.ui import launch_page
from lora_sam.settings import from_args


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _chrome(width: int, height: int) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", "--hide-scrollbars"):
        options.add_argument(argument)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))


def _interior(mask: np.ndarray) -> tuple[int, int]:
    """The most interior pixel (x, y) of a bool mask of the displayed image."""
    distance = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    y, x = np.unravel_index(int(distance.argmax()), distance.shape)
    return int(x), int(y)


def _click(chrome: webdriver.Chrome, x: int, y: int, size: tuple[int, int], right: bool = False) -> None:
    """Click (or right-click) pixel (x, y) of the displayed image (``size`` = (dh, dw)) wherever the page
    shows it."""
    image = chrome.find_element(By.CSS_SELECTOR, "#prompt img")
    shown_w, shown_h = image.size["width"], image.size["height"]
    dx, dy = (x + 0.5) * shown_w / size[1] - shown_w / 2, (y + 0.5) * shown_h / size[0] - shown_h / 2
    actions = ActionChains(chrome).move_to_element_with_offset(image, round(dx), round(dy))
    (actions.context_click() if right else actions.click()).perform()


def _choose(chrome: webdriver.Chrome, elem_id: str, text: str) -> None:
    box = chrome.find_element(By.CSS_SELECTOR, f"#{elem_id} input")
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(text)
    time.sleep(0.5)
    box.send_keys(Keys.ENTER)


def _wait_status(chrome: webdriver.Chrome, text: str, timeout: float = 120) -> None:
    WebDriverWait(chrome, timeout).until(lambda c: text in c.find_element(By.ID, "status").text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--image-index", type=int, default=0, help="which dataset image (default 0)")
    parser.add_argument("--mask", type=int, default=None, help="ground-truth mask (default: the largest)")
    parser.add_argument("--second-click", action="store_true", help="add a negative click (a right click) off the mask")
    parser.add_argument("--resolution", choices=("low", "1024"), default="low")
    parser.add_argument("--window", type=int, nargs=2, default=(1500, 1300), metavar=("W", "H"))
    parser.add_argument("--out", type=Path, default=Path("docs/images/app.png"))
    args = parser.parse_args()
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    config = resolve_settings(from_args(AppConfig, args))
    if config.data is None:
        parser.error("give --data ROOT or a --run folder whose data still exists")
    bank = model_bank(config)
    data = DatasetImages(config.data, bank.image_size, frame=bank.frame)
    loaded = data.load(args.image_index)
    masks = loaded.sample["masks"]
    mask = args.mask if args.mask is not None else int(masks.flatten(1).sum(1).argmax())
    target = gt_on_display(loaded, masks[mask])
    port = _free_port()
    blocks = launch_page(bank, data, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    chrome = _chrome(*args.window)
    try:
        chrome.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(chrome, 60).until(lambda c: c.find_elements(By.CSS_SELECTOR, "#dataset-image input"))
        _choose(chrome, "dataset-image", data.names[args.image_index])
        _wait_status(chrome, f"loaded {data.names[args.image_index]}")
        _choose(chrome, "gt-mask", loaded.gt_labels[mask])
        _wait_status(chrome, "ground truth")
        if args.resolution == "1024":
            chrome.find_element(By.XPATH, "//*[@id='resolution']//label[contains(., '1024 px')]").click()
            _wait_status(chrome, "SamPredictor", timeout=600)
        _click(chrome, *_interior(target), loaded.display_size)
        _wait_status(chrome, "1 prompt")
        if args.second_click:
            _click(chrome, *_interior(~target), loaded.display_size, right=True)
            _wait_status(chrome, "2 prompts")
        time.sleep(2)  # let the pictures arrive
        args.out.parent.mkdir(parents=True, exist_ok=True)
        chrome.save_screenshot(str(args.out))
        print(f"wrote {args.out} ({', '.join(bank.names)}; {data.names[args.image_index]}, mask {mask})")
    finally:
        chrome.quit()
        blocks.close()


if __name__ == "__main__":
    main()
