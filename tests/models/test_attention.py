"""The fused attention and the checkpointed blocks compute what the official encoder computes, gradients too."""

from __future__ import annotations

import copy

import pytest
import torch

from lora_sam.lora import inject_lora
from lora_sam.models.sam_v1.model import build_sam, encode, use_checkpointing, use_fused_attention


def _model(seed: int = 0, size: tuple[int, int] = (160, 256)) -> torch.nn.Module:
    torch.manual_seed(seed)
    sam = build_sam("tiny", "random", size).train()
    inject_lora(sam, 4, 4.0, ("image_encoder.blocks.*.attn.qkv",))
    with torch.no_grad():  # LoRA's B starts at zero; make the branch count, and the relative positions too
        for name, p in sam.named_parameters():
            if "lora_B" in name or "rel_pos" in name:
                p.normal_(0, 0.05)
                p.requires_grad_(True)  # the relative-position tables train in full fine-tuning
    return sam


def _forward_backward(sam: torch.nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    sam.zero_grad(set_to_none=True)
    out = encode(sam, image)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return out.detach(), {n: p.grad for n, p in sam.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("size", [(160, 256), (96, 64)])
def test_fused_attention_is_the_official_forward_and_backward(size: tuple[int, int]) -> None:
    fused = _model(0, size)
    official = copy.deepcopy(fused)
    use_fused_attention(official, False)
    assert type(fused.image_encoder.blocks[0].attn).__name__ == "_FusedAttention"  # build_sam's default
    assert type(official.image_encoder.blocks[0].attn).__module__ == "segment_anything.modeling.image_encoder"
    image = torch.rand(2, 3, *size) * 255
    out_f, grads_f = _forward_backward(fused, image)
    out_o, grads_o = _forward_backward(official, image)
    torch.testing.assert_close(out_f, out_o, atol=2e-5, rtol=1e-4)
    assert grads_f.keys() == grads_o.keys() and any("rel_pos" in k for k in grads_o) and any("lora" in k for k in grads_o)
    for name in grads_o:
        torch.testing.assert_close(grads_f[name], grads_o[name], atol=1e-4, rtol=1e-3, msg=name)
    assert fused.state_dict().keys() == official.state_dict().keys()


def _decode_too(sam: torch.nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The encoder and the decoder of 3 boxes (its upscaling path included), gradients of both."""
    from lora_sam.models.sam_v1.model import decode

    sam.zero_grad(set_to_none=True)
    boxes = torch.tensor([[10.0, 10.0, 90.0, 120.0], [40.0, 30.0, 200.0, 150.0], [0.0, 0.0, 250.0, 150.0]])
    logits, iou = decode(sam, encode(sam, image), boxes=boxes, multimask=True)
    (logits * torch.linspace(-1, 1, logits.numel()).reshape(logits.shape)).sum().add(iou.sum()).backward()
    return logits.detach(), {n: p.grad for n, p in sam.named_parameters() if p.grad is not None}


def test_checkpointed_blocks_give_the_same_outputs_and_gradients() -> None:
    plain = _model(1)
    plain.mask_decoder.requires_grad_(True)  # the checkpointed upscaling path's gradients too
    checkpointed = copy.deepcopy(plain)
    use_checkpointing(checkpointed)
    assert type(checkpointed.mask_decoder.output_upscaling).__name__ == "_CheckpointedUpscaling"
    image = torch.rand(1, 3, 160, 256) * 255
    out_p, grads_p = _decode_too(plain, image)
    out_c, grads_c = _decode_too(checkpointed, image)
    assert any("output_upscaling" in k for k in grads_p)
    torch.testing.assert_close(out_c, out_p, atol=1e-6, rtol=1e-5)
    for name in grads_p:
        torch.testing.assert_close(grads_c[name], grads_p[name], atol=1e-6, rtol=1e-5, msg=name)
    copy.deepcopy(checkpointed)  # the swapped classes copy and pickle like the official ones
    assert checkpointed.state_dict().keys() == plain.state_dict().keys()
