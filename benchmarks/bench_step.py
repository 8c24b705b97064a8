"""The timed training step: a helper module of ``train_step.py`` and ``static_k.py``, not a script.

``load_batch`` / ``to_device``: one synthetic SA-1B image with its masks, on the device; ``Stepper``: one
optimisation step of a mode (``interactive_step`` + mean loss + backward + ``AdamW.step``), with the
prompt and decode counts of the step.
"""

from __future__ import annotations

import time
from typing import Any

from bench_machine import sync


def load_batch(data: str, image_size: tuple[int, int], masks: int, seed: int, frame: str) -> dict[str, Any]:
    """One real synthetic SA-1B image with its masks, through the library's loader path, in the model
    family's ``frame`` (SAM 2.1: a square the image fills)."""
    from lora_sam.data.loaders import collate, open_dataset

    dataset = open_dataset(data, image_size=image_size, masks_per_image=masks, seed=seed, frame=frame)
    for i in range(len(dataset)):
        sample = dataset[i]
        if isinstance(sample, dict) and len(sample["targets"]) >= masks:
            return collate([sample])
    raise RuntimeError(f"no image in {data} has {masks} masks; make more synthetic images or lower --masks")


def to_device(batch: dict[str, Any], device: Any) -> dict[str, Any]:
    out = dict(batch)
    out["image"] = batch["image"].to(device)
    out["input_size"] = batch["input_size"].to(device)
    out["masks"] = [m.to(device) for m in batch["masks"]]
    out["targets"] = [t.to(device) for t in batch["targets"]]
    return out


def _terms(out: Any) -> dict[tuple[int, str], Any]:
    """``{(iteration, term): (sum over prompts, prompt count)}`` of an ``interactive_step`` result."""
    return out["terms"] if isinstance(out, dict) else out.terms


def mean_loss(out: Any):  # noqa: ANN201
    """The loss ``LoRASAM._shared_step`` returns: total summed over prompts / prompt count."""
    terms = _terms(out)
    count = sum(n for (_, name), (_, n) in terms.items() if name == "total")
    return sum(s for (_, name), (s, _) in terms.items() if name == "total") / count, count


def decoded_prompts(out: Any) -> tuple[int, int]:
    """(targets, decoded prompts) with a loss in one ``interactive_step`` result: targets are the
    prompts of iteration 1 (one per target mask), decoded prompts those of every iteration."""
    terms = _terms(out)
    targets = terms.get((1, "total"), (0, 0))[1]
    decodes = sum(n for (_, name), (_, n) in terms.items() if name == "total")
    return int(targets), int(decodes)


class Stepper:
    """One optimisation step of a mode; ``profile`` hooks can time its parts."""

    def __init__(self, module: Any, batch: dict[str, Any], mode: str, naive_targets: int, device: Any) -> None:
        import torch

        self.module, self.batch, self.mode, self.device = module, batch, mode, device
        params = [p for p in module.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in params)
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
        self.step_index = 0
        self.backward_time = 0.0
        self.optimizer_time = 0.0
        k = len(batch["targets"][0])
        self.naive_targets = min(naive_targets, k) if mode == "naive" else k

    def _generator(self):  # noqa: ANN202
        import torch

        return torch.Generator().manual_seed(1_000 + self.step_index)

    def __call__(self, targets_limit: int | None = None) -> dict[str, float]:
        """One step; returns {"targets", "decodes", "loss"}."""
        self.step_index += 1
        generator = self._generator()
        self.optimizer.zero_grad(set_to_none=True)
        self.backward_time = 0.0
        targets = decodes = 0
        loss_value = 0.0
        if self.mode == "naive":
            all_targets = self.batch["targets"][0]
            for j in range(targets_limit or self.naive_targets):
                single = dict(self.batch, targets=[all_targets[j : j + 1]])
                out = self.module.interactive_step(single, generator)
                t, d = decoded_prompts(out)
                targets, decodes = targets + t, decodes + d
                if not _terms(out):
                    continue
                loss, _ = mean_loss(out)
                self._backward(loss / len(all_targets))
                loss_value += float(loss.detach()) / len(all_targets)
        else:
            out = self.module.interactive_step(self.batch, generator)
            targets, decodes = decoded_prompts(out)
            loss, _ = mean_loss(out)
            self._backward(loss)
            loss_value = float(loss.detach())
        sync(self.device)
        t = time.perf_counter()
        self.optimizer.step()
        sync(self.device)
        self.optimizer_time = time.perf_counter() - t
        return {"targets": targets, "decodes": decodes, "loss": loss_value}

    def _backward(self, loss: Any) -> None:
        sync(self.device)
        t = time.perf_counter()
        loss.backward()
        sync(self.device)
        self.backward_time += time.perf_counter() - t

