"""Right click and drag on the image to click on, which Gradio's ``select`` event does not report.

Gradio's image reports a left click (``select``, with the pixel) and nothing else. ``PAGE_JS``, run once
when the page loads, listens on the document for the image ``#prompt``:

- a right click (``contextmenu``) sends ``negative X Y`` and keeps the browser's menu closed;
- a left press (pointer events) that moves more than ``DRAG_PX`` CSS pixels before it is released
  draws a band while it moves and sends ``box X0 Y0 X1 Y1`` (from the press to the release); the
  click that the browser fires after such a release is swallowed, so the drag is not also a point.

Pixels are computed as Gradio computes its ``select`` index (the picture is centred in its element,
scaled to fit and never enlarged): a right click and a left click on the same spot name the same pixel.
A gesture is written into the hidden textbox ``#gesture`` (with a counter, so two equal gestures differ)
and the hidden button ``#gesture-send`` is clicked; ``parse_gesture`` reads it on the server.
"""

from __future__ import annotations

__all__ = ["DRAG_PX", "PAGE_JS", "parse_gesture"]

DRAG_PX = 5
"""A press that moves farther than this (CSS pixels) is a drag: a box, not a click."""

PAGE_JS = """
() => {
  const DRAG_PX = DRAG_PX_VALUE;
  let press = null, swallow = false, band = null, count = 0;
  const picture = (e) => (e.target instanceof HTMLImageElement && e.target.closest("#prompt")) ? e.target : null;
  const pixel = (img, e) => {
    const r = img.getBoundingClientRect();
    const scale = Math.min(r.width / img.naturalWidth, r.height / img.naturalHeight, 1);
    const left = r.left + (r.width - img.naturalWidth * scale) / 2;
    const top = r.top + (r.height - img.naturalHeight * scale) / 2;
    return [Math.round((e.clientX - left) / scale), Math.round((e.clientY - top) / scale)];
  };
  const send = (words) => {
    const field = document.querySelector("#gesture textarea, #gesture input");
    const button = document.querySelector("#gesture-send");
    if (!field || !button) return;
    field.value = words.join(" ") + " #" + (++count);
    field.dispatchEvent(new Event("input", {bubbles: true}));
    button.click();
  };
  const dropBand = () => { if (band) { band.remove(); band = null; } };
  document.addEventListener("contextmenu", (e) => {
    const img = picture(e);
    if (!img) return;
    e.preventDefault();
    send(["negative", ...pixel(img, e)]);
  });
  document.addEventListener("dragstart", (e) => { if (picture(e)) e.preventDefault(); });
  // pointer events in the capture phase: the image's own handlers may cancel pointerdown, and with it the
  // mouse events that would follow
  document.addEventListener("pointerdown", (e) => {
    const img = picture(e);
    press = (img && e.button === 0) ? {img: img, x: e.clientX, y: e.clientY, at: pixel(img, e)} : null;
  }, true);
  document.addEventListener("pointermove", (e) => {
    if (!press || Math.hypot(e.clientX - press.x, e.clientY - press.y) <= DRAG_PX) return;
    if (!band) {
      band = document.createElement("div");
      band.id = "gesture-band";
      band.style.cssText = "position:fixed;border:2px dashed #ff3b30;pointer-events:none;z-index:9999";
      document.body.appendChild(band);
    }
    Object.assign(band.style, {left: Math.min(e.clientX, press.x) + "px", top: Math.min(e.clientY, press.y) + "px",
      width: Math.abs(e.clientX - press.x) + "px", height: Math.abs(e.clientY - press.y) + "px"});
  }, true);
  document.addEventListener("pointerup", (e) => {
    if (!press) return;
    const start = press;
    press = null;
    dropBand();
    if (Math.hypot(e.clientX - start.x, e.clientY - start.y) <= DRAG_PX) return;
    send(["box", ...start.at, ...pixel(start.img, e)]);  // first: its button's click must pass
    swallow = true;
    setTimeout(() => { swallow = false; }, 0);
  }, true);
  document.addEventListener("click", (e) => {
    if (swallow) { e.stopPropagation(); e.preventDefault(); swallow = false; }
  }, true);
}
""".replace("DRAG_PX_VALUE", str(DRAG_PX))


def parse_gesture(text: str) -> tuple[str, list[float]] | None:
    """``("negative", [x, y])`` or ``("box", [x0, y0, x1, y1])`` from the text ``PAGE_JS`` sends; None for
    anything else (the counter after ``#`` is dropped)."""
    words = (text or "").split("#")[0].split()
    if not words or words[0] not in ("negative", "box"):
        return None
    try:
        numbers = [float(w) for w in words[1:]]
    except ValueError:
        return None
    return (words[0], numbers) if len(numbers) == (2 if words[0] == "negative" else 4) else None
