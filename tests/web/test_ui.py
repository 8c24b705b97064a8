"""The page's handlers (Gradio): bad input gives a message and loses nothing; the pictures and scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from app_fixtures import SIZE, make_adapter
from PIL import Image

from lora_sam.app.images import DISPLAY_SIDE, MAX_SIDE, ImageError, load_image_file
from lora_sam.app.models import ModelBank
from lora_sam.app.session import Box, Point, Session
from lora_sam.evaluation.options import EvalModels
from lora_sam.evaluation.run import build_segmenters

gr = pytest.importorskip("gradio")
from lora_sam.app.gestures import parse_gesture  # noqa: E402
from lora_sam.app.ui import Page, build_page, scores_table  # noqa: E402


def _select(x: float, y: float):
    return gr.SelectData(None, {"index": [x, y], "value": None, "selected": True})


@pytest.fixture()
def page_and_session(bank, photo: np.ndarray, tmp_path: Path) -> tuple[Page, Session]:
    Image.fromarray(photo).save(tmp_path / "photo.png")
    page, session = Page(bank, None), Session(bank)
    page.on_upload(session, str(tmp_path / "photo.png"))
    page.on_click(session, "positive", _select(200, 150))
    return page, session


def test_a_click_draws_every_model_and_the_scores(page_and_session: tuple[Page, Session]) -> None:
    page, session = page_and_session
    state, status, prompt, *slots, scores = page.redraw(session, "ok")
    assert state is session and status == "ok" and prompt.shape == (*session.image.display_size, 3)
    shown = [slot for slot in slots if slot.get("visible")]
    assert len(shown) == len(session.bank.names) and len(slots) == len(shown) + 2
    for slot, name in zip(shown, session.bank.names):
        dh, dw = session.image.display_size
        assert slot["label"].startswith(name) and slot["value"].shape == (dh + round(dh * (dw // 3) / dw), dw, 3)
    assert scores == scores_table(session) and all(f"| {name} | " in scores for name in session.bank.names)
    assert all(line.count(" / ") == 2 for line in scores.splitlines()[2:])  # 3 outputs after the first click
    assert session.set_show_outputs(False) == "the kept mask only"
    hidden = [slot for slot in page.redraw(session, "ok")[3:-1] if slot.get("visible")]
    assert all(slot["value"].shape == (*session.image.display_size, 3) for slot in hidden)
    session.set_show_outputs(True)
    page.on_click(session, "positive", _select(250, 160))
    assert all(" / " not in line for line in scores_table(session).splitlines()[2:])


def test_a_file_that_is_no_image_loses_nothing(page_and_session: tuple[Page, Session], tmp_path: Path) -> None:
    page, session = page_and_session
    before = (session.image, list(session.events))
    (tmp_path / "notes.txt").write_text("not an image")
    status = page.on_upload(session, str(tmp_path / "notes.txt"))[1]
    assert status.startswith("cannot use this file: notes.txt: not an image")
    assert (session.image, session.events) == before
    assert "no file received" in page.on_upload(session, None)[1]


def test_a_huge_image_is_resized(tmp_path: Path) -> None:
    Image.new("RGB", (5000, 300), (10, 200, 30)).save(tmp_path / "wide.png")
    loaded = load_image_file(tmp_path / "wide.png", SIZE, frame="pad")
    assert "5000x300 px: resized to 4096x246" in loaded.note
    assert tuple(loaded.sample["original_size"].tolist()) == (246, MAX_SIDE)
    assert loaded.display_size == (round(246 * DISPLAY_SIDE / MAX_SIDE), DISPLAY_SIDE)
    with pytest.raises(ImageError, match="file not found"):
        load_image_file(tmp_path / "missing.png", SIZE, frame="pad")


def test_an_adapter_that_does_not_fit_gives_build_segmenters_text(model_files: dict[str, Path],
                                                                  tmp_path: Path, photo: np.ndarray) -> None:
    bank = ModelBank(model_type="tiny", checkpoint=model_files["base"], image_size=SIZE)
    page, session = Page(bank, None), Session(bank)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    page.on_upload(session, str(tmp_path / "photo.png"))
    session.click(100, 100, "positive")
    (tmp_path / "other").mkdir()
    wrong = make_adapter(tmp_path / "other", model_files["base"], model_type="vit_b")
    with pytest.raises(ValueError) as expected:
        build_segmenters(EvalModels("tiny", model_files["base"], SIZE, adapters=(wrong,), base=False))
    status = page.on_add(session, str(wrong))[1]
    assert status == f"cannot add this model: {expected.value}" and bank.names == ["base"]
    assert "expected a LoRA adapter (.safetensors)" in page.on_add(session, str(tmp_path / "photo.png"))[1]
    assert page.on_add(session, str(model_files["lora"]))[1] == "added lora:adapter"
    assert bank.names == ["base", "lora:adapter"] and session.events == [Point(100, 100, 1)]
    assert set(session.outputs()) == {"base", "lora:adapter"}
    page.on_add(session, str(model_files["lora"]))
    assert bank.names[-1] == f"lora:{model_files['lora'].parent.name}/adapter"
    assert "no room" in page.on_add(session, str(model_files["full"]))[1]


def test_the_page_builds(bank) -> None:
    blocks = build_page(bank)
    assert isinstance(blocks, gr.Blocks)


def test_right_click_and_drag_reach_the_session(page_and_session: tuple[Page, Session]) -> None:
    page, session = page_and_session
    assert page.on_gesture(session, "negative 300 120 #1")[1] == "2 prompts: negative click at (300, 120)"
    assert page.on_gesture(session, "box 10 20 110 90 #2")[1] == "3 prompts: box (10, 20)-(110, 90)"
    assert session.events == [Point(200, 150, 1), Point(300, 120, 0), Box(10, 20, 110, 90)]
    for junk in ("", "erase 1 2 #3", "box 1 2 3 #4", "negative x y #5"):
        assert "unknown gesture" in page.on_gesture(session, junk)[1]
    assert "outside the image" in page.on_gesture(session, "negative -3 5 #6")[1]
    assert len(session.events) == 3
    assert parse_gesture("box 1 2 3 4.5 #7") == ("box", [1.0, 2.0, 3.0, 4.5])


def test_a_20000_px_square_upload_gets_a_message_and_loses_nothing(page_and_session: tuple[Page, Session],
                                                                    tmp_path: Path) -> None:
    page, session = page_and_session
    Image.new("1", (20000, 20000)).save(tmp_path / "huge.png")  # 400 M pixels, a small file
    files = sorted(tmp_path.iterdir())
    before = (session.image, list(session.events))
    status = page.on_upload(session, str(tmp_path / "huge.png"))[1]
    assert status.startswith("cannot use this file: huge.png: too large to decode safely") and "shrink it" in status
    assert (session.image, session.events) == before and sorted(tmp_path.iterdir()) == files
    page.on_click(session, "positive", _select(100, 100))
    assert len(session.events) == 2 and set(session.outputs()) == set(session.bank.names)
