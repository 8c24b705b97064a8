"""The static-K decoder side (``decoder_side.StaticKDecoder``) against the recipe's eager one.

The eager path is the reference (``test_recipe.py`` checks it against the official decoder and the paper's
rules): the static-K path pads the prompts to ``masks_per_image`` rows and scores the whole frame, and must
give the same losses, mIoU and gradients; compiled, each kind of round must be one graph, compiled once
whatever K and the image's size (a counting ``torch.compile`` backend sees every graph Dynamo makes).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lora_sam import get_loaders
from lora_sam.models.sam_v1.model import SamV1, build_sam
from lora_sam.training.decoder_side import EagerDecoder, StaticKDecoder
from lora_sam.training.recipe import RecipeOptions, interactive_step

SIZE = (96, 128)
MASKS = 6


@pytest.fixture(scope="module")
def sam(tiny_checkpoint: Path):
    return build_sam("tiny", str(tiny_checkpoint), SIZE).train()


@pytest.fixture(scope="module")
def batches(tmp_path_factory: pytest.TempPathFactory, synthetic_root: Path) -> list[dict]:
    """Batches of two images with up to MASKS targets: portrait ones (padding on the right of the frame),
    then landscape ones that fill it."""
    from lora_sam.data.synth import make_synthetic

    root = tmp_path_factory.mktemp("portrait_static_k")
    make_synthetic(root, images=6, seed=5, image_size=(160, 120))
    out = []
    for folder, count in ((root, 2), (synthetic_root, 1)):
        train, _ = get_loaders(folder, image_size=SIZE, batch_size=2, num_workers=0, masks_per_image=MASKS,
                               val_fraction=0.2)
        out += list(train)[:count]
    return out


def _step(sam, batch: dict, options: RecipeOptions, decoder, seed: int = 1):
    sam.zero_grad(set_to_none=True)
    out = interactive_step(SamV1(sam), batch, torch.Generator().manual_seed(seed), options, decoder=decoder)
    loss = out.mean("total")
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in sam.parameters() if p.grad is not None])
    return out, loss.detach(), grads


class _Counting(StaticKDecoder):
    """Records how many prompts each decode had before padding."""

    counts: list[int]

    def __call__(self, image, mode, gt_index, target_index, **prompts):  # noqa: ANN001, ANN204
        self.counts = getattr(self, "counts", []) + [len(target_index)]
        return super().__call__(image, mode, gt_index, target_index, **prompts)


@pytest.mark.parametrize("options", [
    RecipeOptions(masks_per_image=MASKS),
    RecipeOptions(masks_per_image=MASKS, pairing="min", point_prob=0.7),
    RecipeOptions(masks_per_image=MASKS, pairing="optimal", box_output="multi", iterations=2),
    RecipeOptions(masks_per_image=MASKS, box_output="single", mask_only_iterations=1, focal_weight=5.0),
], ids=["distinct-both", "min", "optimal-multi", "single-mask-only"])
def test_static_k_gives_the_eager_losses_metrics_and_gradients(sam, batches, options) -> None:
    batch = batches[0]
    assert batch["input_size"][:, 1].max() < SIZE[1], "the frame must have padding for this test to mean much"
    eager, eager_loss, eager_grads = _step(sam, batch, options, EagerDecoder(SamV1(sam), options))
    static_decoder = _Counting(SamV1(sam), options, backend=None)
    static, static_loss, static_grads = _step(sam, batch, options, static_decoder)
    assert any(k < MASKS for k in static_decoder.counts)  # some decodes were padded
    for key, (value, count) in eager.terms.items():
        other, other_count = static.terms[key]
        assert other_count == count
        torch.testing.assert_close(other, value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(static_loss, eager_loss, rtol=1e-5, atol=1e-6)
    for it in eager.ious:
        assert torch.equal(static.miou(it), eager.miou(it))
    assert (static_grads - eager_grads).norm() <= 1e-4 * eager_grads.norm()


def test_static_k_records_match_eager(sam, batches) -> None:
    options = RecipeOptions(masks_per_image=MASKS)
    eager = interactive_step(SamV1(sam), batches[1], torch.Generator().manual_seed(4), options, keep_records=True)
    static = interactive_step(SamV1(sam), batches[1], torch.Generator().manual_seed(4), options, keep_records=True,
                              decoder=StaticKDecoder(SamV1(sam), options, backend=None))
    for a, b in zip(eager.records, static.records):
        for ra, rb in zip(a["point"], b["point"]):
            for key in ("points", "labels", "gt", "paired", "pred"):
                assert torch.equal(ra[key], rb[key]), key  # same shapes (cropped to the image), same values
        if a["box"] is not None:
            assert torch.equal(a["box"]["pred"], b["box"]["pred"]) and torch.equal(a["box"]["gt"], b["box"]["gt"])


@pytest.mark.slow
def test_compiled_static_k_is_one_graph_per_kind_of_round_whatever_k_and_image_size(sam, batches) -> None:
    graphs: list[str] = []

    def counting(gm: torch.fx.GraphModule, example_inputs: list) -> object:
        graphs.append(gm.code)
        return gm.forward

    torch._dynamo.reset()
    options = RecipeOptions(masks_per_image=MASKS)
    decoder = StaticKDecoder(SamV1(sam), options, backend=counting)
    sizes, splits = set(), set()
    try:
        for n, batch in enumerate(batches):
            out, _, _ = _step(sam, batch, options, decoder, seed=n)
            sizes.update(tuple(s.tolist()) for s in batch["input_size"])
            splits.add(tuple(sorted(count for (it, name), (_, count) in out.terms.items() if name == "total")))
            if n == 0:
                first = len(graphs)
    finally:
        torch._dynamo.reset()
    assert len(sizes) > 1 and len(splits) > 1  # the images and the numbers of prompts per round changed
    # kinds: round 1, 2, 3 of points, boxes (3 outputs + single): 4 graphs, none broken, none compiled again
    assert first <= 4 and len(graphs) == 4
    assert not any("nonzero" in code for code in graphs)


def test_static_k_refuses_more_prompts_than_rows(sam, batches) -> None:
    options = RecipeOptions(masks_per_image=MASKS)
    small = StaticKDecoder(SamV1(sam), replace(options, masks_per_image=1), backend=None)
    with pytest.raises(ValueError, match="more than masks_per_image"):
        interactive_step(SamV1(sam), batches[0], torch.Generator().manual_seed(0), options, decoder=small)


def test_lorasam_compile_decoder_option_uses_the_static_k_path(tiny_checkpoint: Path, batches) -> None:
    from lora_sam.training.module import LoRASAM

    plain = LoRASAM(4, 1, model_type="tiny", checkpoint=str(tiny_checkpoint), image_size=SIZE, masks_per_image=MASKS)
    compiled = LoRASAM(4, 1, model_type="tiny", checkpoint=str(tiny_checkpoint), image_size=SIZE,
                       masks_per_image=MASKS, compile_decoder=True)
    assert plain.decoder is None and isinstance(compiled.decoder, StaticKDecoder)
    assert compiled.hparams["compute"]["compile_decoder"] is True and compiled.decoder.rows == MASKS
    with torch.no_grad():  # validation: the static-K decoder side runs eagerly, nothing is compiled
        a = plain.interactive_step(batches[0], torch.Generator().manual_seed(2)).mean("total")
        b = compiled.interactive_step(batches[0], torch.Generator().manual_seed(2)).mean("total")
    torch.testing.assert_close(a, b)
