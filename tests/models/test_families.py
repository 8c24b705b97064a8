"""A second model family through the seam: a small convolutional model, test-only, registered as a family,
trains with LoRA through ``LoRASAM``, is evaluated by ``lora-sam eval``'s code and drawn by the report's figure
code, with nothing in src knowing it exists."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lora_sam.models.families import Family, as_promptable, family_of, register_family
from lora_sam.models.promptable import PromptableModel

SIZE = (64, 96)


class ToyNet(nn.Module):
    """The network: a stride-4 convolutional encoder, a prompt map, 4 output heads (single + 3)."""

    def __init__(self, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.image_size = tuple(image_size)
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.mask_in = nn.Conv2d(1, 8, 1)
        self.head = nn.Conv2d(9, 4, 3, padding=1)
        self.iou = nn.Linear(9, 4)


class ToyModel:
    """``PromptableModel`` over ``ToyNet``: points and boxes become a map on the low-resolution grid."""

    def __init__(self, net: ToyNet) -> None:
        self.net = net

    @property
    def module(self) -> nn.Module:
        return self.net

    @property
    def image_size(self) -> tuple[int, int]:
        return self.net.image_size

    @property
    def mask_threshold(self) -> float:
        return 0.0

    @property
    def low_res_size(self) -> tuple[int, int]:
        return (self.image_size[0] // 4, self.image_size[1] // 4)

    def encode(self, images: Tensor, input_size: Tensor | None = None) -> Tensor:
        return self.net.encoder(images / 255.0)

    def _prompt_map(self, k: int, points: Tensor | None, labels: Tensor | None, boxes: Tensor | None,
                    device: torch.device) -> Tensor:
        h, w = self.low_res_size
        ys = (torch.arange(h, device=device) + 0.5) * 4
        xs = (torch.arange(w, device=device) + 0.5) * 4
        grid = torch.zeros(k, 1, h, w, device=device)
        if points is not None:
            d2 = (xs[None, None, None, :] - points[..., 0, None, None]) ** 2 + \
                 (ys[None, None, :, None] - points[..., 1, None, None]) ** 2
            sign = torch.where(labels == 1, 1.0, torch.where(labels == 0, -1.0, 0.0))
            grid = grid + (sign[..., None, None] * torch.exp(-d2 / 64.0)).sum(1, keepdim=True)
        if boxes is not None:
            inside_x = (xs[None, :] >= boxes[:, 0, None]) & (xs[None, :] <= boxes[:, 2, None])
            inside_y = (ys[None, :] >= boxes[:, 1, None]) & (ys[None, :] <= boxes[:, 3, None])
            grid = grid + (inside_y[:, :, None] & inside_x[:, None, :]).float()[:, None]
        return grid

    def decode(self, embedding: Tensor, *, points: Tensor | None = None, labels: Tensor | None = None,
               boxes: Tensor | None = None, mask_input: Tensor | None = None, multimask: bool = True,
               all_outputs: bool = False) -> tuple[Tensor, Tensor]:
        k = next(t.shape[0] for t in (points, boxes, mask_input) if t is not None)
        prompt = self._prompt_map(k, points, labels, boxes, embedding.device)
        features = embedding.expand(k, -1, -1, -1)
        if mask_input is not None:
            features = features + self.net.mask_in(mask_input)
        features = torch.cat([features, prompt], 1)
        logits = self.net.head(features) + 4 * prompt
        iou = torch.sigmoid(self.net.iou(features.mean((2, 3))))
        if all_outputs:
            return logits, iou
        return (logits[:, 1:], iou[:, 1:]) if multimask else (logits[:, :1], iou[:, :1])

    def upscale(self, low_res_logits: Tensor, size: tuple[int, int]) -> Tensor:
        return F.interpolate(low_res_logits, size=tuple(size), mode="bilinear", align_corners=False)


def _build(model_type: str, checkpoint: str | None, image_size: tuple[int, int]) -> ToyNet:
    torch.manual_seed(0)
    net = ToyNet(image_size)
    if checkpoint not in (None, "random"):
        net.load_state_dict(torch.load(checkpoint, weights_only=True))
    return net


@pytest.fixture(scope="module")
def toy_family() -> Family:
    return register_family(Family("toy", ("toy_s",), _build, ToyModel, lambda m: isinstance(m, ToyNet),
                                  {"default": ("encoder.*", "head")}))


def test_the_family_is_found_by_model_type_and_by_network(toy_family: Family) -> None:
    net = _build("toy_s", None, SIZE)
    assert family_of("toy_s") is toy_family and family_of(net) is toy_family and family_of("vit_b").name == "sam_v1"
    assert isinstance(as_promptable(net), PromptableModel)
    with pytest.raises(ValueError, match="belong to the toy family"):
        register_family(Family("other", ("toy_s",), _build, ToyModel, lambda m: False))


def test_a_new_family_trains_is_evaluated_and_drawn(toy_family: Family, synthetic_root: Path, tmp_path: Path) -> None:
    import pytorch_lightning as pl

    from lora_sam import LoRASAM, get_loaders
    from lora_sam.evaluation.options import EvalModels, EvalOptions
    from lora_sam.evaluation.run import evaluate_models
    from lora_sam.report.figures import plot_interactive_rounds

    model = LoRASAM(4, 1, model_type="toy_s", checkpoint="random", image_size=SIZE, lr=1e-2, warmup_steps=0,
                    masks_per_image=4, iterations=2)
    assert model.lora_layers == ["encoder.0", "encoder.2", "head"]  # the family's own preset
    before = {k: v.clone() for k, v in model.sam.state_dict().items() if "lora_B" in k}
    train, val = get_loaders(synthetic_root, image_size=SIZE, batch_size=2, masks_per_image=4, num_workers=0)
    trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                         default_root_dir=tmp_path)
    trainer.fit(model, train, val)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    after = model.sam.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # LoRA trained

    weights = tmp_path / "toy.pth"
    torch.save({k: v for k, v in _build("toy_s", None, SIZE).state_dict().items()}, weights)
    report = evaluate_models(synthetic_root, tmp_path / "eval", EvalModels("toy_s", str(weights), SIZE),
                             EvalOptions(max_images=2, masks_per_image=3, max_clicks=3), device="cpu",
                             progress=False)
    metrics = report["models"]["base"]["metrics"]
    assert 0.0 <= metrics["miou@1"] <= 1.0 and metrics["noc@85"] <= 3
    assert "| base |" in (tmp_path / "eval" / "eval.md").read_text()

    batch = next(b for b in val if len(b["targets"][0]))
    with torch.no_grad():
        result = model.interactive_step(batch, torch.Generator().manual_seed(0), keep_records=True)
    rounds = result.records[0]["point"] or result.records[0]["box"]
    ih, iw = (int(v) for v in batch["input_size"][0])  # as the report draws them: the image without padding
    steps = [{"points": r["points"][0], "labels": r["labels"][0], "gt": r["gt"][0][:, :ih, :iw],
              "pred": r["pred"][0][:ih, :iw], "target": r["target"][0][:ih, :iw], "paired": r["paired"][0]}
             for r in rounds]
    image = batch["image"][0][:, :ih, :iw]
    path = plot_interactive_rounds(image, steps, tmp_path / "toy_iterations.png", title="toy family")
    assert path.stat().st_size > 1000
