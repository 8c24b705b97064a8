from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lora_sam import (
    LoRAConv2d,
    LoRAConvTranspose2d,
    LoRALinear,
    inject_lora,
    lora_state_dict,
    merge_lora,
    parameter_summary,
)
from lora_sam.lora import SAM_TARGETS, lora_layers
from lora_sam.lora.adapter import apply_adapter, load_adapter, read_adapter_info, save_adapter
from lora_sam.models.sam_v1.model import build_sam
from lora_sam.models.sam_v1.presets import TINY_VIT_LAYERS

CONV_CASES = [  # kernel, stride, padding, dilation
    (k, s, p, d) for k, s, p, d in itertools.product([1, 2, 3, (2, 3)], [1, 2, (2, 1)], [0, 1, (1, 2)], [1, 2])
][::5]
CONVT_CASES = [  # kernel, stride, padding, output_padding, dilation
    (2, 2, 0, 0, 1), (3, 2, 1, 1, 1), ((2, 3), (2, 1), (0, 1), (1, 0), 2), (3, 3, 1, 2, 1), (4, 2, 1, 0, 2),
    (1, 1, 0, 0, 1),
]


def randomize_b(layer: nn.Module) -> None:
    with torch.no_grad():
        layer.lora_B.normal_()


def check_merge(layer: nn.Module, x: torch.Tensor) -> None:
    base_out = layer.base(x).clone()
    assert torch.equal(layer(x), base_out), "a fresh LoRA layer must equal its base"
    randomize_b(layer)
    unmerged = layer(x)
    assert not torch.allclose(unmerged, base_out)
    layer.merge()
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.base(x), base_out, rtol=1e-5, atol=1e-5)


def test_linear_merge_and_delta() -> None:
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(7, 5), rank=3, alpha=6)
    check_merge(layer, torch.randn(4, 7))
    expected = torch.zeros(5, 7)
    for o, i, r in itertools.product(range(5), range(7), range(3)):
        expected[o, i] += layer.lora_B[o, r] * layer.lora_A[r, i] * 2.0
    torch.testing.assert_close(layer.delta_weight(), expected)


@pytest.mark.parametrize("kernel,stride,padding,dilation", CONV_CASES)
def test_conv2d_merge_and_delta(kernel, stride, padding, dilation) -> None:
    torch.manual_seed(0)
    base = nn.Conv2d(4, 6, kernel, stride=stride, padding=padding, dilation=dilation)
    layer = LoRAConv2d(base, rank=2, alpha=3)
    x = torch.randn(2, 4, 11, 13)
    check_merge(layer, x)
    delta = layer.delta_weight()
    assert delta.shape == base.weight.shape
    # The LoRA path's output is a convolution with delta_weight in the base layout.
    lora_out = layer(x) - base(x)
    ref = F.conv2d(x, delta, None, base.stride, base.padding, base.dilation)
    torch.testing.assert_close(lora_out, ref, rtol=1e-4, atol=1e-5)
    # And an explicit loop over the factors.
    loop = torch.zeros_like(delta)
    for o, r in itertools.product(range(6), range(2)):
        loop[o] += layer.lora_B[o, r] * layer.lora_A[r] * layer.scaling
    torch.testing.assert_close(delta, loop)


@pytest.mark.parametrize("kernel,stride,padding,output_padding,dilation", CONVT_CASES)
def test_conv_transpose2d_merge_and_delta(kernel, stride, padding, output_padding, dilation) -> None:
    torch.manual_seed(0)
    base = nn.ConvTranspose2d(4, 6, kernel, stride=stride, padding=padding, output_padding=output_padding,
                              dilation=dilation)
    layer = LoRAConvTranspose2d(base, rank=3, alpha=1.5)
    x = torch.randn(2, 4, 7, 9)
    check_merge(layer, x)
    delta = layer.delta_weight()
    assert delta.shape == base.weight.shape == (4, 6, *base.kernel_size)  # (in, out, kH, kW)
    ref = F.conv_transpose2d(x, delta, None, base.stride, base.padding, base.output_padding, 1, base.dilation)
    torch.testing.assert_close(layer(x) - base(x), ref, rtol=1e-4, atol=1e-5)
    loop = torch.zeros_like(delta)
    for i, r in itertools.product(range(4), range(3)):
        loop[i] += layer.lora_A[r, i] * layer.lora_B[r] * layer.scaling
    torch.testing.assert_close(delta, loop)


def test_conv_transpose2d_output_size_argument() -> None:
    torch.manual_seed(0)
    base = nn.ConvTranspose2d(3, 5, 3, stride=2, padding=1)
    layer = LoRAConvTranspose2d(base, rank=2, alpha=2)
    randomize_b(layer)
    x = torch.randn(1, 3, 6, 6)
    out = layer(x, output_size=[12, 12])
    assert out.shape[-2:] == (12, 12)
    layer.merge()
    torch.testing.assert_close(layer(x, output_size=[12, 12]), out, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls,base", [
    (LoRAConv2d, nn.Conv2d(6, 9, 3, groups=3, padding=1)),
    (LoRAConvTranspose2d, nn.ConvTranspose2d(6, 4, 2, stride=2, groups=2)),
])
def test_grouped_convs(cls, base) -> None:
    torch.manual_seed(0)
    layer = cls(base, rank=2, alpha=2)
    x = torch.randn(2, 6, 5, 5)
    check_merge(layer, x)
    assert layer.delta_weight().shape == base.weight.shape


def test_grouped_conv2d_is_the_base_plus_the_update_conv_with_gradients() -> None:
    """A depthwise LoRAConv2d runs one conv of the effective weight; the reference is the definition: the base conv
    plus a conv of B A scale (built by a loop over the rank), outputs and gradients of A and B."""
    torch.manual_seed(0)
    base = nn.Conv2d(8, 8, 3, padding=1, stride=2, groups=8)
    layer = LoRAConv2d(base, rank=3, alpha=6)
    randomize_b(layer)
    x = torch.randn(2, 8, 9, 9, requires_grad=True)
    weights = torch.linspace(-1, 1, 2 * 8 * 5 * 5).reshape(2, 8, 5, 5)
    out = layer(x)
    (out * weights).sum().backward()
    got = (out.detach(), layer.lora_A.grad.clone(), layer.lora_B.grad.clone(), x.grad.clone())
    layer.zero_grad()
    x.grad = None
    delta = sum(layer.lora_B[:, r, None, None, None] * layer.lora_A[r] for r in range(3)) * layer.scaling
    reference = base(x) + F.conv2d(x, delta, None, base.stride, base.padding, base.dilation, base.groups)
    (reference * weights).sum().backward()
    for a, b in zip(got, (reference.detach(), layer.lora_A.grad, layer.lora_B.grad, x.grad)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bfloat16_and_dropout() -> None:
    torch.manual_seed(0)
    layer = LoRAConv2d(nn.Conv2d(4, 4, 3, padding=1).to(torch.bfloat16), rank=2, alpha=2)
    assert layer.lora_A.dtype == torch.bfloat16
    x = torch.randn(1, 4, 6, 6, dtype=torch.bfloat16)
    randomize_b(layer)
    y = layer(x)
    layer.merge()
    torch.testing.assert_close(layer(x), y, rtol=5e-2, atol=5e-2)
    drop = LoRALinear(nn.Linear(8, 8), rank=2, alpha=2, dropout=0.5).eval()
    randomize_b(drop)
    x = torch.randn(3, 8)
    assert torch.equal(drop(x), drop(x))  # eval: dropout off


def test_bad_rank_and_alpha() -> None:
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        LoRALinear(nn.Linear(2, 2), rank=0, alpha=1)
    with pytest.raises(ValueError, match="alpha must be positive"):
        LoRALinear(nn.Linear(2, 2), rank=2, alpha=0)
    with pytest.raises(ValueError, match="rank must be a positive integer"):
        inject_lora(nn.Sequential(nn.Linear(2, 2)), rank=-1, alpha=1, targets="*")


def test_inject_default_sam_targets_and_freezing() -> None:
    sam = build_sam("tiny", image_size=(64, 64))
    names = inject_lora(sam, 4, 1)
    types = {type(sam.get_submodule(n)).__name__ for n in names}
    assert types == {"LoRALinear", "LoRAConv2d", "LoRAConvTranspose2d"}
    assert "mask_decoder.output_upscaling.0" in names and "mask_decoder.output_upscaling.3" in names
    assert "image_encoder.patch_embed.proj" in names and "prompt_encoder.mask_downscaling.0" in names
    assert any(n.endswith("attn.qkv") for n in names) and any(n.endswith("mlp.lin2") for n in names)
    for name, p in sam.named_parameters():
        assert p.requires_grad == name.endswith(("lora_A", "lora_B")), name
    summary = parameter_summary(sam)
    assert summary.trainable == sum(p.numel() for p in lora_state_dict(sam).values())
    assert {p.part for p in summary.parts} == {"image_encoder", "prompt_encoder", "mask_decoder"}
    assert len(SAM_TARGETS) == 10 + len(TINY_VIT_LAYERS)  # ViT's 10 patterns, TinyViT's (MobileSAM, LiteMedSAM)


def test_inject_by_pattern_and_type() -> None:
    sam = build_sam("tiny", image_size=(64, 64))
    names = inject_lora(sam, 2, 2, targets=["mask_decoder.*"], layer_types=[nn.ConvTranspose2d])
    assert names == ["mask_decoder.output_upscaling.0", "mask_decoder.output_upscaling.3"]
    with pytest.raises(ValueError, match="no Linear"):
        inject_lora(build_sam("tiny", image_size=(64, 64)), 2, 2, targets=["nothing.*"])


def test_merge_lora_gives_plain_layers_and_same_output() -> None:
    torch.manual_seed(0)
    sam = build_sam("tiny", image_size=(64, 64))
    inject_lora(sam, 4, 2)
    for layer in lora_layers(sam).values():
        randomize_b(layer)
    from lora_sam.models.sam_v1.model import decode, encode

    image = torch.rand(1, 3, 64, 64) * 255
    points, labels = torch.tensor([[[20.0, 30.0]]]), torch.ones(1, 1, dtype=torch.long)
    with torch.no_grad():
        before = decode(sam, encode(sam, image), points, labels)
        merge_lora(sam)
        after = decode(sam, encode(sam, image), points, labels)
    assert not lora_layers(sam)
    assert not any(".base." in k for k in sam.state_dict())
    for a, b in zip(before, after):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_adapter_round_trip_and_mismatch(tmp_path: Path, tiny_checkpoint: Path) -> None:
    torch.manual_seed(0)
    sam = build_sam("tiny", tiny_checkpoint, image_size=(64, 64))
    inject_lora(sam, 4, 2)
    for layer in lora_layers(sam).values():
        randomize_b(layer)
    path = tmp_path / "adapter.safetensors"
    save_adapter(sam, path, model_type="tiny", image_size=(64, 64))
    info = read_adapter_info(path)
    assert (info.rank, info.alpha, info.model_type, info.image_size) == (4, 2.0, "tiny", [64, 64])

    other = build_sam("tiny", tiny_checkpoint, image_size=(128, 128))  # another resolution is fine
    apply_adapter(other, path)
    for k, v in lora_state_dict(sam).items():
        assert torch.equal(lora_state_dict(other)[k], v)

    rank8 = build_sam("tiny", tiny_checkpoint, image_size=(64, 64))
    inject_lora(rank8, 8, 2)
    with pytest.raises(ValueError, match="rank: adapter 4, model \\[8\\]"):
        load_adapter(rank8, path)
    qkv = build_sam("tiny", tiny_checkpoint, image_size=(64, 64))
    inject_lora(qkv, 4, 2, targets="qkv")
    with pytest.raises(ValueError, match="LoRA layers differ"):
        load_adapter(qkv, path)
    with pytest.raises(ValueError, match="not written by lora_sam|not a readable"):
        bad = tmp_path / "bad.safetensors"
        bad.write_bytes(b"garbage")
        read_adapter_info(bad)


def test_adapter_refuses_another_base(tmp_path: Path) -> None:
    torch.manual_seed(0)
    sam = build_sam("tiny", "random", image_size=(64, 64))
    inject_lora(sam, 2, 2)
    path = tmp_path / "adapter.safetensors"
    save_adapter(sam, path, model_type="tiny")
    torch.manual_seed(1)
    other = build_sam("tiny", "random", image_size=(64, 64))
    with pytest.raises(ValueError, match="another base checkpoint"):
        apply_adapter(other, path)


def test_merge_then_unmerge_restores_a_bf16_weight_exactly_and_merges_in_float32() -> None:
    torch.manual_seed(3)
    for layer in (LoRALinear(nn.Linear(64, 48).to(torch.bfloat16), rank=4, alpha=8),
                  LoRAConv2d(nn.Conv2d(8, 6, 3).to(torch.bfloat16), rank=2, alpha=4)):
        nn.init.normal_(layer.lora_B, std=0.5)
        original = layer.base.weight.detach().clone()
        # the reference: the sum of the float32 weight and the float32 update, rounded once
        expected = (original.float() + layer.delta_weight(torch.float32)).to(torch.bfloat16)
        layer.merge()
        assert torch.equal(layer.base.weight, expected)
        layer.unmerge()
        assert torch.equal(layer.base.weight, original)


def test_unmerge_lora_undoes_merge_lora() -> None:
    from lora_sam import inject_lora, merge_lora, unmerge_lora

    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inject_lora(model, 2, 2.0, targets=["0", "2"])
    for p in model.parameters():
        if p.requires_grad:
            nn.init.normal_(p)
    x = torch.randn(5, 6)
    with_lora = model(x)
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(model(x), with_lora, rtol=1e-5, atol=1e-5)
    unmerge_lora(model)
    assert isinstance(model[0], LoRALinear) and isinstance(model[2], LoRALinear)
    torch.testing.assert_close(model(x), with_lora, rtol=1e-5, atol=1e-5)
    for k, v in before.items():  # the base weights are the originals again
        torch.testing.assert_close(model.state_dict()[k.replace(".weight", ".base.weight").replace(".bias", ".base.bias")], v)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_merge_move_unmerge_follows_the_model(dtype: torch.dtype) -> None:
    """merge_lora, then a move of the whole model (a dtype on the CPU stands in for .cuda()), then
    unmerge_lora: the LoRA tensors follow, and the model equals the LoRA model moved the same way."""
    import copy

    from lora_sam import merge_lora, unmerge_lora

    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(8, 4, 2, stride=2),
                          nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    inject_lora(model, 2, 4.0, targets=["0", "2", "4"])
    for layer in lora_layers(model).values():
        randomize_b(layer)
    reference = copy.deepcopy(model).to(dtype)  # the LoRA model, wrappers in the tree, moved
    merge_lora(model)
    model.to(dtype)
    unmerge_lora(model)
    assert all(p.dtype == dtype for p in model.parameters())
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64).to(dtype)
    with torch.no_grad():
        # the merge rounded the float32 weights once: float32 precision, not float64
        tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float64 else {"rtol": 0.02, "atol": 0.02}
        torch.testing.assert_close(model(x), reference(x), **tolerance)


def test_a_network_of_no_family_takes_patterns_and_has_no_presets() -> None:
    """Presets belong to a model family: on a network no family owns, a preset or no layers at all is an error
    that says to pass patterns, and patterns work."""
    from torch import nn

    from lora_sam import inject_lora

    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="no model family.*fnmatch patterns"):
        inject_lora(net, 2, 1.0)
    with pytest.raises(ValueError, match="no Linear / Conv2d / ConvTranspose2d layer matches"):
        inject_lora(net, 2, 1.0, "qkv")  # not a preset of anything here: a pattern that matches nothing
    assert inject_lora(net, 2, 1.0, ["2"]) == ["2"]
