"""The page of ``lora-sam app``: Gradio Blocks over ``lora_sam.app.session.Session``.

Every event handler changes one ``Session`` (a ``gr.State`` per browser tab; the models and their
embedding cache are shared) and redraws the whole page from it: the image with its prompts, one
picture per model (the kept mask, and the 3 outputs after the first prompt), the scores table and a
status line that carries every message, errors included.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from lora_sam.app.gestures import PAGE_JS, parse_gesture
from lora_sam.app.images import DatasetImages, ImageError, load_image_file
from lora_sam.app.models import ModelBank
from lora_sam.app.overlay import automatic_view, model_view, prompt_view
from lora_sam.app.session import MODES, Session
from lora_sam.data.annotations import DataError

__all__ = ["EXTRA_SLOTS", "build_page", "launch_page", "scores_table"]

EXTRA_SLOTS = 2
"""Room on the page for models added from it ("Add a model")."""
IMAGE_HEIGHT = 440
"""Height in CSS pixels of the image to click on and of each model's picture."""
HELP = ("Upload an image (or pick one of the dataset), then click on it: a left click adds a positive point "
        "(or what the click mode says), a right click a negative one, and a drag draws a box. The first prompt "
        "shows SAM's 3 outputs with their predicted IoU (the kept one framed); later clicks refine the kept mask. "
        "\"Segment everything\" shows each model's automatic masks (at 1024 px, as deployed).")
MODE_LABELS = [("positive click", "positive"), ("negative click", "negative"), ("box (two clicks)", "box")]


def scores_table(session: Session) -> str:
    """The Markdown table of every model's answer: the predicted IoU of each output (3 after the first
    prompt, then 1), the kept one, and each output's IoU with the ground truth (the kept one in bold)."""
    outputs = session.outputs()
    if not outputs:
        return ""
    with_gt = any(o.gt_iou is not None for o in outputs.values())
    header = "| model | predicted IoU | kept |" + (" IoU with GT |" if with_gt else "")
    lines = [header, "|---|---|---:|" + ("---|" if with_gt else "")]
    for name, output in outputs.items():
        preds = " / ".join(f"{float(v):.3f}" for v in output.iou_pred)
        row = f"| {name} | {preds} | #{output.kept + 1} |"
        if output.gt_iou is not None:
            row += " " + " / ".join(f"**{float(v):.3f}**" if i == output.kept else f"{float(v):.3f}"
                                    for i, v in enumerate(output.gt_iou)) + " |"
        lines.append(row)
    return "\n".join(lines)


class Page:
    """The components of the page and the handlers that redraw them from a ``Session``."""

    def __init__(self, bank: ModelBank, data: DatasetImages | None) -> None:
        self.bank, self.data = bank, data
        self.slots_count = len(bank.names) + EXTRA_SLOTS

    def redraw(self, session: Session, message: str) -> list[Any]:
        """The outputs of every handler: state, status, prompt image, one picture per slot, scores."""
        image = session.image
        prompt = None if image is None else prompt_view(image, session.events, session.pending, session.gt_mask())
        outputs = session.outputs() if image is not None else {}
        resolution = self.bank.pipeline_label.split(" (")[0] if session.resolution == "1024" else \
            "{}x{}".format(*self.bank.image_size)
        slots = []
        for index in range(self.slots_count):
            if index >= len(self.bank.names):
                slots.append(gr.update(visible=False))
                continue
            name = self.bank.names[index]
            if image is not None and session.automatic is not None:
                picture = automatic_view(image, *session.automatic[name])
            else:
                picture = None if image is None else model_view(image, outputs.get(name), session.events,
                                                                 show_outputs=session.show_outputs)
            slots.append(gr.update(value=picture, label=f"{name} at {resolution}", visible=True))
        return [session, message, prompt, *slots, scores_table(session)]

    def on_upload(self, session: Session, path: str | None) -> list[Any]:
        if not path:
            return self.redraw(session, "no file received")
        try:
            message = session.load(load_image_file(path, self.bank.image_size, frame=self.bank.frame))
        except ImageError as err:
            message = f"cannot use this file: {err}"
        return [*self.redraw(session, message), self._gt_update(session)]

    def on_pick(self, session: Session, index: int | None) -> list[Any]:
        if index is None or self.data is None:
            return [*self.redraw(session, ""), gr.update()]
        try:
            message = session.load(self.data.load(int(index)))
        except (ImageError, DataError, OSError) as err:
            message = f"cannot use this image: {err}"
        return [*self.redraw(session, message), self._gt_update(session)]

    def _gt_update(self, session: Session) -> Any:
        labels = [] if session.image is None else session.image.gt_labels
        return gr.update(choices=[(label, i) for i, label in enumerate(labels)], value=session.gt_index,
                         visible=bool(labels))

    def on_click(self, session: Session, mode: str, evt: gr.SelectData) -> list[Any]:
        x, y = evt.index if isinstance(evt.index, list | tuple) else (-1, -1)
        return self.redraw(session, session.click(float(x), float(y), mode))  # type: ignore[arg-type]

    def on_gesture(self, session: Session, text: str) -> list[Any]:
        """A right click (negative point) or a drag (box) that ``PAGE_JS`` sent."""
        gesture = parse_gesture(text)
        if gesture is None:
            return self.redraw(session, f"unknown gesture {text!r}: nothing changed")
        kind, numbers = gesture
        message = session.click(*numbers, "negative") if kind == "negative" else session.drag(*numbers)
        return self.redraw(session, message)

    def on_add(self, session: Session, path: str | None) -> list[Any]:
        if not path:
            return self.redraw(session, "no file received")
        if len(self.bank.names) >= self.slots_count:
            return self.redraw(session, f"no room for more models on this page ({self.slots_count}); restart "
                                        f"lora-sam app with --adapter / --full")
        return self.redraw(session, session.add_model(path))


def _controls(page: Page) -> dict[str, Any]:
    """The rows of inputs above the image."""
    parts: dict[str, Any] = {}
    with gr.Row():
        parts["upload"] = gr.UploadButton("Upload an image", elem_id="upload-image")
        if page.data is not None:
            parts["pick"] = gr.Dropdown([(name, i) for i, name in enumerate(page.data.names)], value=None,
                                        label=f"or an image of {page.data.root}", elem_id="dataset-image")
        parts["gt"] = gr.Dropdown([], value=None, label="ground-truth mask", visible=False, elem_id="gt-mask")
        parts["add"] = gr.UploadButton("Add a model (.safetensors / .pth)", elem_id="add-model")
    with gr.Row():
        parts["mode"] = gr.Radio(MODE_LABELS, value=MODES[0], label="left-click mode", elem_id="mode")
        low = "training resolution {}x{} (LowResSegmenter)".format(*page.bank.image_size)
        parts["resolution"] = gr.Radio([(low, "low"), (page.bank.pipeline_label, "1024")], value="low",
                                       label="resolution", elem_id="resolution")
        parts["outputs"] = gr.Checkbox(True, label="show SAM's 3 outputs of the first prompt",
                                       elem_id="show-outputs")
        parts["everything"] = gr.Button("Segment everything", elem_id="segment-everything")
        parts["undo"] = gr.Button("Undo", elem_id="undo")
        parts["reset"] = gr.Button("Reset", elem_id="reset")
    # filled and clicked by PAGE_JS for a right click or a drag (in the page, never shown)
    parts["gesture"] = gr.Textbox(visible="hidden", elem_id="gesture")
    parts["gesture_send"] = gr.Button(visible="hidden", elem_id="gesture-send")
    return parts


def build_page(bank: ModelBank, data: DatasetImages | None = None) -> gr.Blocks:
    """The Gradio page comparing the models of ``bank`` on uploaded images or the images of ``data``."""
    page = Page(bank, data)
    with gr.Blocks(title="lora-sam app") as blocks:
        state = gr.State(Session(bank))  # copied for each browser tab; the bank is shared, not copied
        gr.Markdown(f"### lora-sam: compare {', '.join(bank.names)}\n{HELP}")
        parts = _controls(page)
        with gr.Row():
            prompt = gr.Image(label="click here", type="numpy", format="png", interactive=False, elem_id="prompt",
                              scale=3, height=IMAGE_HEIGHT)
            with gr.Column(scale=2):
                status = gr.Markdown(elem_id="status")
                scores = gr.Markdown(elem_id="scores")
        with gr.Row():  # PNG: the pictures arrive exactly as drawn (Gradio's default WebP is lossy)
            slots = [gr.Image(label=name, type="numpy", format="png", interactive=False, elem_id=f"model-{i}",
                              visible=i < len(bank.names), height=IMAGE_HEIGHT)
                     for i, name in enumerate(bank.names + [""] * EXTRA_SLOTS)]
        outputs = [state, status, prompt, *slots, scores]
        parts["upload"].upload(page.on_upload, [state, parts["upload"]], [*outputs, parts["gt"]])
        if "pick" in parts:
            parts["pick"].input(page.on_pick, [state, parts["pick"]], [*outputs, parts["gt"]])
        parts["gt"].input(lambda s, i: page.redraw(s, s.set_gt(i)), [state, parts["gt"]], outputs)
        parts["add"].upload(page.on_add, [state, parts["add"]], outputs)
        prompt.select(page.on_click, [state, parts["mode"]], outputs)
        parts["gesture_send"].click(page.on_gesture, [state, parts["gesture"]], outputs)
        parts["resolution"].change(lambda s, r: page.redraw(s, s.set_resolution(r)), [state, parts["resolution"]],
                                   outputs)
        parts["outputs"].input(lambda s, v: page.redraw(s, s.set_show_outputs(v)), [state, parts["outputs"]],
                               outputs)
        parts["everything"].click(lambda s: page.redraw(s, s.segment_everything()), [state], outputs)
        parts["undo"].click(lambda s: page.redraw(s, s.undo()), [state], outputs)
        parts["reset"].click(lambda s: page.redraw(s, s.reset()), [state], outputs)
    return blocks


def launch_page(bank: ModelBank, data: DatasetImages | None = None, **launch_options: Any) -> gr.Blocks:
    """Build the page and serve it with its right-click and drag script (``PAGE_JS``); ``launch_options``
    go to ``gr.Blocks.launch`` (``server_name``, ``server_port``, ``prevent_thread_lock``, ...)."""
    blocks = build_page(bank, data)
    blocks.launch(js=PAGE_JS, **launch_options)
    return blocks
