"""The fast mask decoder (``models.sam_v1.decoder``) computes what Meta's ``MaskDecoder`` computes: the same logits,
IoU predictions and gradients (LoRA on every decoder layer included), with the official classes as the reference."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from segment_anything import SamPredictor

from lora_sam.lora import inject_lora
from lora_sam.models.sam_v1.decoder import is_fast_decoder, use_fast_decoder
from lora_sam.models.sam_v1.model import build_sam, decode
from sam_v1_reference import official_tiny

DECODER_LAYERS = ("mask_decoder.transformer.*", "mask_decoder.output_upscaling.*")


def _lora_sam(dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(0)
    sam = build_sam("tiny", "random", (160, 256))
    inject_lora(sam, 4, 4.0, DECODER_LAYERS, dropout=dropout)
    with torch.no_grad():  # LoRA's B starts at zero: make every branch count
        for name, p in sam.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    sam.mask_decoder.requires_grad_(True)  # the base weights' gradients too (full fine-tuning)
    return sam


def _prompts(k: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"points": torch.rand(k, 3, 2, generator=g) * torch.tensor([255.0, 159.0]),
            "labels": torch.randint(0, 2, (k, 3), generator=g),
            "mask_input": torch.randn(k, 1, 40, 64, generator=g)}


def _run(sam: torch.nn.Module, embedding: torch.Tensor, multimask: bool, **prompts: torch.Tensor):
    sam.zero_grad(set_to_none=True)
    logits, iou = decode(sam, embedding, multimask=multimask, **prompts)
    (logits * torch.linspace(-1, 1, logits.numel()).reshape(logits.shape)).sum().add(iou.square().sum()).backward()
    return logits.detach(), iou.detach(), {n: p.grad for n, p in sam.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("prompt", ["points", "points+mask", "boxes"])
def test_fast_decoder_gives_the_official_outputs_and_gradients(prompt: str, multimask: bool) -> None:
    fast = _lora_sam()
    assert is_fast_decoder(fast)  # build_sam's default
    official = copy.deepcopy(fast)
    use_fast_decoder(official, False)
    assert type(official.mask_decoder).__module__ == "segment_anything.modeling.mask_decoder"
    assert type(official.mask_decoder.transformer).__module__ == "segment_anything.modeling.transformer"
    p = _prompts()
    prompts = {"boxes": {"boxes": torch.tensor([[5.0, 9, 120, 100], [30, 2, 250, 150], [0, 0, 255, 159]])},
               "points": {"points": p["points"], "labels": p["labels"]},
               "points+mask": p}[prompt]
    embedding = torch.randn(1, fast.prompt_encoder.embed_dim, 10, 16, generator=torch.Generator().manual_seed(2))
    embedding.requires_grad_(True)
    out_f = _run(fast, embedding, multimask, **prompts)
    grad_f = embedding.grad.clone()
    embedding.grad = None
    out_o = _run(official, embedding, multimask, **prompts)
    torch.testing.assert_close(out_f[0], out_o[0], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(out_f[1], out_o[1], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(grad_f, embedding.grad, atol=1e-5, rtol=1e-4)
    grads_f, grads_o = out_f[2], out_o[2]
    assert grads_f.keys() == grads_o.keys()
    assert any("cross_attn_token_to_image.k_proj.lora_A" in k for k in grads_o)
    assert any("cross_attn_image_to_token.out_proj.base.weight" in k for k in grads_o)
    # sums in another order: float tolerance relative to the gradients' scale (some are 0 in exact arithmetic: a
    # key bias shifts every logit of a query alike)
    scale = max(float(g.abs().max()) for g in grads_o.values())
    for name, ref in grads_o.items():
        torch.testing.assert_close(grads_f[name], ref, atol=1e-5 * scale, rtol=1e-3,
                                   msg=lambda m, name=name: f"{name}: {m}")
    assert fast.state_dict().keys() == official.state_dict().keys()


def test_lora_dropout_falls_back_to_the_official_projections() -> None:
    """A LoRA layer with dropout is no single linear map: it runs as a module, the same draws in the same order."""
    fast = _lora_sam(dropout=0.3).train()
    official = copy.deepcopy(fast)
    use_fast_decoder(official, False)
    embedding = torch.randn(1, fast.prompt_encoder.embed_dim, 10, 16)
    outputs = []
    for sam in (fast, official):
        torch.manual_seed(7)
        outputs.append(decode(sam, embedding, **{k: v for k, v in _prompts().items() if k != "mask_input"}))
    torch.testing.assert_close(outputs[0], outputs[1], atol=2e-5, rtol=1e-4)


def test_sam_predictor_with_the_fast_decoder_gives_the_official_classes_masks(tiny_checkpoint: Path) -> None:
    """At 1024 px, in ``SamPredictor``, our tiny SAM gives the masks of the same file in the official classes."""
    ours = build_sam("tiny", tiny_checkpoint, 1024)
    reference = official_tiny(tiny_checkpoint)
    assert is_fast_decoder(ours) and not is_fast_decoder(reference)
    image = (torch.rand(300, 400, 3, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8).numpy()
    points = torch.tensor([[[120.0, 80.0], [300.0, 200.0]]])
    results = []
    for sam in (ours, reference):
        predictor = SamPredictor(sam)
        predictor.set_image(image)
        coords = predictor.transform.apply_coords_torch(points, image.shape[:2])
        results.append(predictor.predict_torch(coords, torch.tensor([[1, 0]]), return_logits=True))
    for a, b in zip(results[0], results[1]):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4)


def test_sam2_two_way_transformer_gives_metas_outputs_and_gradients() -> None:
    """SAM 2.1's decoder takes the same folding (``models.two_way``): against Meta's ``TwoWayTransformer`` on
    ``sam2.1_mini`` with LoRA on its decoder, the four outputs, the IoU predictions and every gradient."""
    pytest.importorskip("sam2")
    from lora_sam.models import families
    from lora_sam.models.sam2_1.model import set_compute

    torch.manual_seed(0)
    fast = families.build("sam2.1_mini", "random", (256, 256))
    inject_lora(fast.module, 4, 4.0, ("sam_mask_decoder.transformer.*",))
    with torch.no_grad():
        for name, p in fast.module.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    fast.module.sam_mask_decoder.requires_grad_(True)
    assert type(fast.module.sam_mask_decoder.transformer).__name__.startswith("Fast")  # the build's default
    official = families.as_promptable(copy.deepcopy(fast.module))
    set_compute(official.module, grad_checkpointing=False, fused_attention=False)
    assert type(official.module.sam_mask_decoder.transformer).__module__ == "sam2.modeling.sam.transformer"
    images = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(4)) * 255
    p = _prompts(4)
    results = []
    for model in (fast, official):
        model.module.zero_grad(set_to_none=True)
        features = model.encode(images)
        logits, iou = model.decode(features, points=p["points"] * 256 / 255, labels=p["labels"],
                                   mask_input=torch.randn(4, 1, 64, 64, generator=torch.Generator().manual_seed(5)),
                                   all_outputs=True)
        (logits * torch.linspace(-1, 1, logits.numel()).reshape(logits.shape)).sum().add(iou.square().sum()).backward()
        grads = {n: q.grad for n, q in model.module.named_parameters() if q.grad is not None and "mask_decoder" in n}
        results.append((logits.detach(), iou.detach(), grads))
    (logits_f, iou_f, grads_f), (logits_o, iou_o, grads_o) = results
    torch.testing.assert_close(logits_f, logits_o, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(iou_f, iou_o, atol=2e-5, rtol=1e-4)
    assert grads_f.keys() == grads_o.keys() and any("cross_attn_image_to_token.out_proj.lora_B" in k for k in grads_o)
    scale = max(float(g.abs().max()) for g in grads_o.values())
    for name, ref in grads_o.items():
        torch.testing.assert_close(grads_f[name], ref, atol=1e-5 * scale, rtol=1e-3,
                                   msg=lambda m, name=name: f"{name}: {m}")
