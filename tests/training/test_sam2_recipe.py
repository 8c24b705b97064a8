"""SAM 2.1 trained by Meta's rules: the loss against Meta's own ``training.loss_fns.MultiStepMultiMasksAndIous``, the
rules each family takes, a box step that trains the single output and gets correction clicks, clicks from the GT."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lora_sam.models.sam2_1.config import META_RECIPE
from lora_sam.training.losses import object_loss, sam_loss
from lora_sam.training.recipe import SAM_V1_RULES, RecipeOptions, interactive_step

pytest.importorskip("sam2")
loss_fns = pytest.importorskip("training.loss_fns", reason="Meta's training package (the sam2 wheel) and tensordict")

MINI = "sam2.1_mini"


def _meta_loss() -> object:
    """The loss of Meta's SAM 2.1 training config (sam2.1_hiera_b+_MOSE_finetune.yaml)."""
    return loss_fns.MultiStepMultiMasksAndIous(
        weight_dict={"loss_mask": 20, "loss_dice": 1, "loss_iou": 1, "loss_class": 1}, supervise_all_iou=True,
        iou_use_l1_loss=True, pred_obj_scores=True, focal_gamma_obj_score=0.0, focal_alpha_obj_score=-1.0)


def _ours(logits: torch.Tensor, ious: torch.Tensor, objects: torch.Tensor, target: torch.Tensor) -> dict:
    """Our loss of one decode by the SAM 2.1 rules: the best of 3 outputs (``min``) or the single one, IoU L1."""
    present = target.flatten(1).any(1)
    out = sam_loss(logits, ious, target[:, None], focal_weight=20.0, dice_weight=1.0, iou_weight=1.0,
                   min_only=logits.shape[1] > 1, iou_loss="l1", present=present)
    out["object"] = object_loss(objects, present)
    return {**out, "total": out["total"] + out["object"]}


@pytest.mark.parametrize("empty", [False, True], ids=["all-present", "one-empty-target"])
def test_the_sam2_loss_equals_metas_multistep_loss_values_and_gradients(empty: bool) -> None:
    """A first decode with 3 outputs then two single-output corrections, as SAM2Train gives them: the sum of our
    per-decode losses is Meta's loss, term by term, and so are the gradients of every input."""
    gen = torch.Generator().manual_seed(0)
    k, h, w = 5, 24, 32
    target = torch.rand(k, h, w, generator=gen) > 0.6
    if empty:
        target[2] = False
    steps = [(3 * torch.randn(k, m, h, w, generator=gen), torch.rand(k, m, generator=gen),
              torch.randn(k, 1, generator=gen)) for m in (3, 1, 1)]
    ours_in = [tuple(t.clone().requires_grad_() for t in s) for s in steps]
    meta_in = [tuple(t.clone().requires_grad_() for t in s) for s in steps]

    ours = [_ours(logits, ious, objects, target) for logits, ious, objects in ours_in]
    outs = {"multistep_pred_multimasks_high_res": [s[0] for s in meta_in],
            "multistep_pred_ious": [s[1] for s in meta_in],
            "multistep_object_score_logits": [s[2] for s in meta_in]}
    meta = _meta_loss()(outs_batch=[outs], targets_batch=target[None].float())
    for our_name, meta_name in (("focal", "loss_mask"), ("dice", "loss_dice"), ("iou", "loss_iou"),
                                ("object", "loss_class")):
        torch.testing.assert_close(sum(o[our_name] for o in ours), meta[meta_name], rtol=1e-5, atol=1e-6)
    our_total = sum(o["total"] for o in ours)
    torch.testing.assert_close(our_total, meta["core_loss"], rtol=1e-5, atol=1e-6)
    our_total.backward()
    meta["core_loss"].backward()
    for mine, theirs in zip(ours_in, meta_in):
        for a, b in zip(mine, theirs):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7)


def test_each_family_takes_its_own_rules_and_explicit_ones_win() -> None:
    from lora_sam import LoRASAM

    sam2 = LoRASAM(model_type=MINI, checkpoint="random")
    assert {k: getattr(sam2.recipe, k) for k in META_RECIPE} == META_RECIPE
    assert sam2.hparams.recipe["iou_loss"] == "l1"  # hparams.yaml records the rules the run took
    mixed = LoRASAM(model_type=MINI, checkpoint="random", iterations=3, pairing="distinct")
    assert (mixed.recipe.iterations, mixed.recipe.pairing, mixed.recipe.object_weight) == (3, "distinct", 1.0)
    v1 = LoRASAM(model_type="tiny", checkpoint="random")
    assert {k: getattr(v1.recipe, k) for k in SAM_V1_RULES} == SAM_V1_RULES
    with pytest.raises(ValueError, match="no object-score head"):
        LoRASAM(model_type="tiny", checkpoint="random", object_weight=1.0)


@pytest.fixture(scope="module")
def sam2_batch(synthetic_root: Path) -> dict:
    from lora_sam import get_loaders

    train, _ = get_loaders(synthetic_root, batch_size=1, image_size=(224, 224), frame="square", val_fraction=0.0,
                           num_workers=0, masks_per_image=3)
    return next(iter(train))


def _full_mini() -> object:
    from lora_sam.models import families

    torch.manual_seed(0)
    model = families.build(MINI, "random", (224, 224))
    families.unfreeze(model.module)
    return model


def test_a_box_step_by_sam2_rules_trains_the_single_output_and_gets_correction_clicks(sam2_batch: dict) -> None:
    """Boxes only, SAM 2.1's defaults: 8 decodes of the single-mask output (the box, then 7 clicks with the box
    kept and the last logits fed back); only the single output's hypernetwork MLP gets a gradient."""
    model = _full_mini()
    calls = []
    decode = model.decode

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append({k: kwargs.get(k) for k in ("multimask", "all_outputs", "boxes", "points", "mask_input")})
        return decode(*args, **kwargs)

    model.decode = spy
    result = interactive_step(model, sam2_batch, torch.Generator().manual_seed(0), RecipeOptions(point_prob=0.0),
                              keep_records=True)
    assert len(calls) == 8
    assert all(not c["multimask"] and not c["all_outputs"] and c["boxes"] is not None for c in calls)
    assert calls[0]["points"] is None and calls[0]["mask_input"] is None
    for n, c in enumerate(calls[1:], start=1):  # one more click per round, the previous logits fed back
        assert c["points"].shape[1] == n and c["mask_input"] is not None
        torch.testing.assert_close(c["boxes"], calls[0]["boxes"])
    assert len(result.records[0]["box_rounds"]) == 8
    result.mean("total").backward()
    mlps = model.module.sam_mask_decoder.output_hypernetworks_mlps
    assert mlps[0].layers[0].weight.grad.abs().sum() > 0
    for mlp in mlps[1:]:  # the 3 multimask outputs never reach the loss
        assert mlp.layers[0].weight.grad is None or mlp.layers[0].weight.grad.abs().sum() == 0
    head = model.module.sam_mask_decoder.pred_obj_score_head
    assert head.layers[-1].weight.grad.abs().sum() > 0  # the object score trains
    assert "object" in {name for _, name in result.terms}


def test_correction_clicks_drawn_from_the_target_are_positive_and_inside_it(sam2_batch: dict) -> None:
    """``gt_click_prob=1``: every correction click lies in the target and is positive, whatever the prediction (the
    error-region clicks of a random model include negatives)."""
    model = _full_mini()
    options = RecipeOptions(point_prob=1.0, iterations=4, gt_click_prob=1.0)
    record = interactive_step(model, sam2_batch, torch.Generator().manual_seed(0), options,
                              keep_records=True).records[0]
    last = record["point"][-1]
    points, labels, target = last["points"], last["labels"], last["target"]
    assert (labels == 1).all()
    for k in range(points.shape[0]):
        for x, y in points[k].round().long().tolist():
            assert target[k, min(y, target.shape[1] - 1), min(x, target.shape[2] - 1)]
    errors = interactive_step(model, sam2_batch, torch.Generator().manual_seed(0),
                              RecipeOptions(point_prob=1.0, iterations=4, gt_click_prob=0.0),
                              keep_records=True).records[0]["point"][-1]["labels"]
    assert (errors[:, 1:] != 1).any()  # without it some clicks are negative: the test can tell the two apart
