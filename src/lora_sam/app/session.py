"""One page session: the image, its prompts, undo, and every model's answer (no Gradio here).

Prompts are events in pixels of the displayed image: positive and negative clicks, and boxes (dragged,
or two clicks as corners). Every model answers them as ``lora_sam.evaluation.protocol`` does: the first
prompt (a click or a box) with the 3 multimask outputs, the one with the highest predicted IoU kept;
each later prompt with all clicks so far (and the box, if any) plus the kept mask's low-resolution
logits as mask prompt, answered by SAM's single-mask output. A point maps from the displayed image to
the training image at pixel centres, ``x_train = (x + 0.5) * w / dw - 0.5``; the 1024 px pipeline maps it
on into its frame (``PredictorSegmenter``).

Answers are replayed from the events, each step memoised by (image, model, resolution, events so
far), so a click decodes one prompt per model, undo restores the previous answer exactly, and a
switch of resolution replays the same prompts on the other models.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lora_sam.app.images import LoadedImage
from lora_sam.app.models import RESOLUTIONS, ModelBank, Resolution, display_logits
from lora_sam.evaluation.segmenters import Segmenter
from lora_sam.training.metrics import mask_iou

__all__ = ["MODES", "Box", "Mode", "Output", "Point", "Session", "describe"]

Mode = Literal["positive", "negative", "box"]
MODES: tuple[Mode, ...] = ("positive", "negative", "box")


@dataclass(frozen=True)
class Point:
    """A click at pixel (x, y) of the displayed image; ``label`` 1 positive, 0 negative."""

    x: int
    y: int
    label: int


@dataclass(frozen=True)
class Box:
    """A box XYXY in pixels of the displayed image, x0 <= x1 and y0 <= y1."""

    x0: int
    y0: int
    x1: int
    y1: int


Event = Point | Box


def describe(event: Event) -> str:
    """``positive click at (x, y)``, ``negative click at (x, y)`` or ``box (x0, y0)-(x1, y1)``."""
    if isinstance(event, Point):
        return f"{'positive' if event.label else 'negative'} click at ({event.x}, {event.y})"
    return f"box ({event.x0}, {event.y0})-({event.x1}, {event.y1})"


@dataclass
class Output:
    """One model's answer to the prompts so far.

    ``masks`` bool (M, H, W) at the training resolution and ``iou_pred`` (M,), M = 3 after the first
    prompt, else 1; ``kept``: the index of the kept output; ``low_res`` (M, h, w): the logits (fed back
    with the next prompt); ``display`` (M, dh, dw) float: the logits on the displayed image;
    ``gt_iou`` (M,) IoU of each output with the chosen ground-truth mask, or None.
    """

    masks: Tensor
    iou_pred: Tensor
    kept: int
    low_res: Tensor
    display: Tensor
    gt_iou: Tensor | None = None

    @property
    def multimask(self) -> bool:
        return len(self.masks) > 1


class Session:
    """The state of one page: image, prompts, undo history, resolution, ground truth; and the answers.

    Every method that changes the state returns a message for the page; a bad input changes nothing.
    """

    def __init__(self, bank: ModelBank) -> None:
        self.bank = bank
        self.image: LoadedImage | None = None
        self.events: list[Event] = []
        self.pending: tuple[int, int] | None = None  # the first corner of a box being drawn
        self.history: list[tuple[tuple[Event, ...], tuple[int, int] | None]] = []
        self.resolution: Resolution = "low"
        self.gt_index: int | None = None
        self.show_outputs = True  # draw the 3 outputs of the first prompt under each model's mask
        # each model's automatic masks and their predicted IoUs, shown instead of the prompts' answers
        self.automatic: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
        self._memo: dict[tuple, Output] = {}

    # ------------------------------------------------------------------ state changes

    def load(self, image: LoadedImage) -> str:
        """Show ``image``, clear the prompts, and encode it for every model at the current resolution."""
        self.image, self.events, self.pending, self.history = image, [], None, []
        self.automatic = None
        self.gt_index = 0 if image.gt_labels else None
        self._memo.clear()
        self._encode()
        return image.note or f"loaded {image.name}: click on it"

    def segment_everything(self) -> str:
        """Every model's automatic masks of the image (``ModelBank.automatic``, at 1024 px), shown until the
        next prompt, undo, reset or image."""
        if self.image is None:
            return "load an image first"
        try:
            self.automatic = {name: self.bank.automatic(name, self.image.display) for name in self.bank.names}
        except (RuntimeError, ValueError) as err:
            return f"the models could not segment everything ({err}); nothing changed"
        counts = ", ".join(f"{name} {len(masks)}" for name, (masks, _) in self.automatic.items())
        return f"segment everything (automatic masks at 1024 px): {counts} masks; click to prompt again"

    def click(self, x: float, y: float, mode: Mode) -> str:
        """A click at (x, y) of the displayed image in ``mode`` (positive / negative / box corner)."""
        if self.image is None:
            return "load an image first"
        self.automatic = None
        if mode not in MODES:
            return f"unknown click mode {mode!r}; choose from {', '.join(MODES)}"
        dh, dw = self.image.display_size
        if not (0 <= x < dw and 0 <= y < dh):
            return f"the click at ({x:g}, {y:g}) is outside the image ({dw}x{dh} px): nothing changed"
        px, py = int(x), int(y)
        snapshot = (tuple(self.events), self.pending)
        if mode == "box" and self.pending is None:
            self.history.append(snapshot)
            self.pending = (px, py)
            return "box: now click the opposite corner"
        if mode == "box":
            (ax, ay), self.pending = self.pending, None
            return self._add(Box(min(ax, px), min(ay, py), max(ax, px), max(ay, py)), snapshot)
        return self._add(Point(px, py, 1 if mode == "positive" else 0), snapshot)

    def drag(self, x0: float, y0: float, x1: float, y1: float) -> str:
        """A box dragged from (x0, y0) to (x1, y1) of the displayed image, corners in either order;
        ends a half-made two-click box. Corners past the image's edge are clamped to it."""
        if self.image is None:
            return "load an image first"
        self.automatic = None
        dh, dw = self.image.display_size
        xs = sorted(min(max(int(v), 0), dw - 1) for v in (x0, x1))
        ys = sorted(min(max(int(v), 0), dh - 1) for v in (y0, y1))
        if xs[0] == xs[1] or ys[0] == ys[1]:
            return "the dragged box has no area inside the image: nothing changed"
        snapshot = (tuple(self.events), self.pending)
        self.pending = None
        return self._add(Box(xs[0], ys[0], xs[1], ys[1]), snapshot)

    def _add(self, event: Event, snapshot: tuple[tuple[Event, ...], tuple[int, int] | None]) -> str:
        """Append ``event`` and answer it; on a model error restore ``snapshot`` (events, pending)."""
        self.events.append(event)
        try:
            self.outputs()
        except (RuntimeError, ValueError) as err:
            self.events, self.pending = list(snapshot[0]), snapshot[1]
            return f"the models could not answer this prompt ({err}); nothing changed"
        self.history.append(snapshot)
        return f"{len(self.events)} prompt{'s' if len(self.events) > 1 else ''}: {describe(event)}"

    def undo(self) -> str:
        self.automatic = None
        if not self.history:
            return "nothing to undo"
        events, self.pending = self.history.pop()
        self.events = list(events)
        return "undone"

    def reset(self) -> str:
        self.automatic = None
        if self.events or self.pending:
            self.history.append((tuple(self.events), self.pending))
        self.events, self.pending = [], None
        return "prompts cleared (undo brings them back)"

    def set_resolution(self, resolution: Resolution) -> str:
        if resolution not in RESOLUTIONS:
            return f"unknown resolution {resolution!r}; choose from {', '.join(RESOLUTIONS)}"
        self.resolution = resolution
        if self.image is not None:
            self._encode()
        return f"{self.bank.pipeline_label}: the model's original pipeline" if resolution == "1024" else \
            f"training resolution {self.bank.image_size[0]}x{self.bank.image_size[1]}"

    def set_show_outputs(self, show: bool) -> str:
        self.show_outputs = bool(show)
        return "the 3 outputs shown" if self.show_outputs else "the kept mask only"

    def set_gt(self, index: int | None) -> str:
        if index is None:
            self.gt_index = None
            return "no ground truth"
        if self.image is None or not 0 <= index < len(self.image.gt_labels):
            return "this image has no such ground-truth mask"
        self.gt_index = int(index)
        return f"ground truth: {self.image.gt_labels[index]}"

    def add_model(self, path: str) -> str:
        """Add a LoRA adapter or full model to the shared bank; the error text when it does not fit."""
        try:
            name = self.bank.add(path)
        except (ValueError, FileNotFoundError, KeyError, RuntimeError) as err:
            return f"cannot add this model: {err}"
        if self.image is not None:
            self._encode()
        return f"added {name}"

    # ------------------------------------------------------------------ answers

    def _encode(self) -> None:
        assert self.image is not None
        for name in self.bank.names:
            self.bank.segmenter(self.image.key, self.image.sample, name, self.resolution)

    def prompts(self, events: tuple[Event, ...]) -> dict[str, Tensor | None]:
        """``Segmenter.predict``'s prompts for ``events``: points (1, P, 2) / labels (1, P) and the last box
        (1, 4), in pixels of the training image (None where there are none)."""
        assert self.image is not None
        (dh, dw), (h, w) = self.image.display_size, self.image.input_size
        scale = torch.tensor([w / dw, h / dh], dtype=torch.float64)
        points = [(e.x, e.y) for e in events if isinstance(e, Point)]
        boxes = [e for e in events if isinstance(e, Box)]
        coords = labels = box = None
        if points:
            coords = ((torch.tensor(points, dtype=torch.float64) + 0.5) * scale - 0.5).float()[None]
            labels = torch.tensor([[e.label for e in events if isinstance(e, Point)]])
        if boxes:
            corners = torch.tensor([[boxes[-1].x0, boxes[-1].y0], [boxes[-1].x1, boxes[-1].y1]], dtype=torch.float64)
            box = ((corners + 0.5) * scale - 0.5).float().reshape(1, 4)
        return {"points": coords, "labels": labels, "boxes": box}

    def _answer(self, name: str, events: tuple[Event, ...], segmenter: Segmenter) -> Output:
        """Model ``name``'s answer to ``events`` at the current resolution, memoised step by step."""
        assert self.image is not None
        key = (self.image.key, name, self.resolution, events)
        if key in self._memo:
            return self._memo[key]
        previous = self._answer(name, events[:-1], segmenter) if len(events) > 1 else None
        if previous is None:
            pred = segmenter.predict(**self.prompts(events), multimask=True)
            kept = int(pred.iou_pred[0].argmax())
        else:
            mask_input = previous.low_res[previous.kept][None, None]
            pred = segmenter.predict(**self.prompts(events), mask_input=mask_input, multimask=False)
            kept = 0
        assert pred.low_res is not None
        display = display_logits(segmenter, pred.low_res[0], self.image.sample, self.image.display_size)
        output = Output(masks=pred.masks[0], iou_pred=pred.iou_pred[0], kept=kept, low_res=pred.low_res[0],
                        display=display)
        self._memo[key] = output
        return output

    def outputs(self) -> dict[str, Output]:
        """Every model's answer to the current prompts (empty before the first prompt), with the
        ground-truth IoU of each output when a ground-truth mask is chosen."""
        if self.image is None or not self.events:
            return {}
        image, events, gt = self.image, tuple(self.events), self.gt_mask()
        # encoded when the image loaded; encoded again here only after the cache let it go
        segmenters = {name: self.bank.segmenter(image.key, image.sample, name, self.resolution)
                      for name in self.bank.names}
        answers = {}
        with self.bank.decoding():
            for name, segmenter in segmenters.items():
                output = self._answer(name, events, segmenter)
                if gt is not None:
                    output = replace(output, gt_iou=mask_iou(output.masks, gt[None]))
                answers[name] = output
        return answers

    def gt_mask(self) -> Tensor | None:
        """The chosen ground-truth mask, bool (H, W) at the training resolution, or None."""
        if self.image is None or self.gt_index is None:
            return None
        return self.image.sample["masks"][self.gt_index].bool()
