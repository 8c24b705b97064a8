"""Pictures of the page: the image with its prompts, and each model's masks (numpy + OpenCV only).

All pictures are uint8 (h, w, 3) RGB at the displayed image's size; masks are drawn from logits
resized onto it (``models.display_logits``), the ground truth from its mask at the training
resolution, resized nearest.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
from torch import Tensor

from lora_sam.app.images import LoadedImage
from lora_sam.app.session import Box, Output, Point

__all__ = ["automatic_view", "draw_prompts", "model_view", "prompt_view"]

POSITIVE, NEGATIVE, BOX, GT = (40, 200, 60), (230, 40, 40), (0, 200, 255), (255, 215, 0)
MASK, KEPT = (30, 144, 255), (40, 200, 60)


def _outline(picture: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], thickness: int = 2) -> None:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(picture, contours, -1, colour, thickness)


def _tint(picture: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int], alpha: float = 0.45) -> np.ndarray:
    """``picture`` blended with ``colour`` (weight ``alpha``) on ``mask`` and outlined."""
    blended = cv2.addWeighted(picture, 1 - alpha, np.full_like(picture, colour), alpha, 0.0)
    out = np.where(mask[..., None], blended, picture)
    _outline(out, mask, colour)
    return out


def draw_prompts(picture: np.ndarray, events: Sequence[Point | Box], pending: tuple[int, int] | None,
                 scale: float = 1.0) -> np.ndarray:
    """``picture`` with the clicks (green positive, red negative), the boxes and a pending box corner."""
    out = picture.copy()
    radius = max(3, round(6 * scale))
    for event in events:
        if isinstance(event, Box):
            corners = [round(v * scale) for v in (event.x0, event.y0, event.x1, event.y1)]
            cv2.rectangle(out, tuple(corners[:2]), tuple(corners[2:]), BOX, 2, lineType=cv2.LINE_AA)
        else:
            centre = (round(event.x * scale), round(event.y * scale))
            cv2.circle(out, centre, radius + 2, (255, 255, 255), -1, lineType=cv2.LINE_AA)
            cv2.circle(out, centre, radius, POSITIVE if event.label else NEGATIVE, -1, lineType=cv2.LINE_AA)
    if pending is not None:
        x, y = (round(v * scale) for v in pending)
        cv2.drawMarker(out, (x, y), BOX, cv2.MARKER_CROSS, 4 * radius, 2)
    return out


def gt_on_display(image: LoadedImage, gt: Tensor) -> np.ndarray:
    """The ground-truth mask (H, W) at the training resolution as a bool mask of the displayed image."""
    (h, w), (dh, dw) = image.input_size, image.display_size
    crop = gt[:h, :w].numpy().astype(np.uint8)
    return cv2.resize(crop, (dw, dh), interpolation=cv2.INTER_NEAREST).astype(bool)


def prompt_view(image: LoadedImage, events: Sequence[Point | Box], pending: tuple[int, int] | None,
                gt: Tensor | None = None) -> np.ndarray:
    """The image to click on: its prompts and, when chosen, the ground-truth mask outlined in yellow."""
    picture = image.display.copy()
    if gt is not None:
        _outline(picture, gt_on_display(image, gt), GT, 2)
    return draw_prompts(picture, events, pending)


def _caption(picture: np.ndarray, lines: Sequence[str], colour: tuple[int, int, int] = (255, 255, 255)) -> None:
    """Write ``lines`` on ``picture``, bottom left (the page puts its label top left), on a dark band."""
    font = min(0.6, max(0.35, picture.shape[1] / 640))
    step = round(30 * font)
    top = picture.shape[0] - step * len(lines) - 6
    band = picture[top:]
    band[:] = (band.astype(np.float32) * 0.35).astype(np.uint8)
    for row, line in enumerate(lines):
        y = top + step * (row + 1)
        cv2.putText(picture, line, (6, y), cv2.FONT_HERSHEY_SIMPLEX, font, colour, 1, cv2.LINE_AA)


def _output_lines(output: Output, index: int) -> list[str]:
    lines = [f"#{index + 1} pred IoU {float(output.iou_pred[index]):.2f}" + (" kept" if index == output.kept else "")]
    if output.gt_iou is not None:
        lines.append(f"GT IoU {float(output.gt_iou[index]):.2f}")
    return lines


def model_view(image: LoadedImage, output: Output | None, events: Sequence[Point | Box] = (),
               show_outputs: bool = True) -> np.ndarray:
    """One model's picture: the kept mask on the image, with the prompts; after the first prompt (and
    with ``show_outputs``) a row of the 3 multimask outputs below it, each with its predicted IoU (and
    ground-truth IoU), the kept one framed in green."""
    if output is None:
        return image.display.copy()
    masks = (output.display > 0).numpy()
    main = draw_prompts(_tint(image.display, masks[output.kept], MASK), events, None)
    _caption(main, _output_lines(output, output.kept))
    if not output.multimask or not show_outputs:
        return main
    dh, dw = image.display_size
    tw, th = dw // 3, max(1, round(dh * (dw // 3) / dw))
    small = cv2.resize(image.display, (tw, th), interpolation=cv2.INTER_AREA)
    row = np.zeros((th, 3 * tw, 3), np.uint8)
    for index in range(len(masks)):
        mask = cv2.resize(masks[index].astype(np.uint8), (tw, th), interpolation=cv2.INTER_NEAREST).astype(bool)
        thumb = draw_prompts(_tint(small, mask, MASK), events, None, scale=tw / dw)
        _caption(thumb, _output_lines(output, index), KEPT if index == output.kept else (255, 255, 255))
        if index == output.kept:
            cv2.rectangle(thumb, (1, 1), (tw - 2, th - 2), KEPT, 3)
        row[:, index * tw:(index + 1) * tw] = thumb
    pad = np.zeros((th, dw, 3), np.uint8)
    pad[:, : 3 * tw] = row
    return np.concatenate([main, pad], axis=0)


def _palette(count: int) -> list[tuple[int, int, int]]:
    """``count`` distinct bright colours (hues spread by the golden angle)."""
    colours = []
    for i in range(count):
        hsv = np.uint8([[[int(i * 0.618034 * 180) % 180, 200, 255]]])
        colours.append(tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]))
    return colours


def automatic_view(image: LoadedImage, masks: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """One model's automatic masks ("segment everything") on the displayed image: each its own colour, the
    best predicted IoU drawn last (on top), outlined; a caption with the count."""
    picture = image.display.copy()
    colours = _palette(len(masks))
    for index in reversed(range(len(masks))):
        picture = _tint(picture, masks[index], colours[index], alpha=0.5)
        _outline(picture, masks[index], colours[index], thickness=1)
    best = f", best predicted IoU {float(scores[0]):.2f}" if len(scores) else ""
    _caption(picture, [f"{len(masks)} automatic masks{best}"])
    return picture
