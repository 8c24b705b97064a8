"""Adapter files: the LoRA tensors of a model in ``.safetensors``, with what is needed to rebuild it;
and the merged export (``lora-sam export``): base checkpoint + adapter folded into an official SAM checkpoint.

The file's metadata records ``rank``, ``alpha``, ``targets`` (the patterns asked for),
``layers`` (the layers replaced), ``model_type`` and ``image_size`` (the training
resolution, for information: LoRA changes only Linear / Conv weights, so an adapter
loads into the same model type at any resolution) and ``base_fingerprint``, a hash of a few
frozen base tensors, so an adapter applied to another base checkpoint is refused.

``export_merged`` rebuilds the model at 1024 px from the base checkpoint (its own position
embedding kept), merges the adapter's updates into the Linear / Conv weights and saves it in its family's
official format: for SAM v1 the plain ``state_dict``, which
``segment_anything.sam_model_registry[model_type](checkpoint=out)`` loads with strict key checking and
``SamPredictor`` runs as any SAM; for SAM 2.1 ``{"model": state_dict}`` with every key of Meta's
checkpoint (the memory modules included), which ``sam2.build_sam.build_sam2(config, out)`` loads strictly.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from lora_sam.errors import UserError
from lora_sam.io import atomic_path
from lora_sam.lora import inject_lora, lora_layers, lora_state_dict, merge_lora
from lora_sam.models.families import build, family_of, model_types, model_types_help, original_frame
from lora_sam.settings import MODEL_TYPE

FORMAT = "lora_sam.adapter/1"  # the files' format name: written into every adapter, kept across module moves


@dataclass(frozen=True)
class AdapterInfo:
    rank: int
    alpha: float
    targets: list[str]
    layers: list[str]
    model_type: str | None
    image_size: list[int] | None
    base_fingerprint: str | None = None
    family: str | None = None  # files written before adapters recorded it have none


_FINGERPRINT_TENSORS = (
    "mask_decoder.iou_token.weight",
    "mask_decoder.mask_tokens.weight",
    "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
    "prompt_encoder.not_a_point_embed.weight",
)
"""SAM v1's names; SAM 2's are the same with ``sam_`` before each."""


def base_fingerprint(module: nn.Module) -> str | None:
    """sha256 (16 hex digits) of a few SAM tensors that LoRA never wraps; None for a non-SAM module."""
    state = module.state_dict()
    keys = next((keys for keys in (_FINGERPRINT_TENSORS, tuple(f"sam_{k}" for k in _FINGERPRINT_TENSORS))
                 if all(k in state for k in keys)), None)
    if keys is None:
        return None
    digest = hashlib.sha256()
    for key in keys:
        digest.update(state[key].detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _network_facts(module: nn.Module) -> tuple[str | None, str | None, list[int] | None]:
    """(family, model type, training frame) of a network, each None where its family cannot tell (or it has
    no family)."""
    try:
        family = family_of(module)
    except ValueError:
        return None, None, None
    return family.name, family.model_type_of(module), list(family.wrap(module).image_size)


def _info_of(module: nn.Module, targets: Sequence[str] | str | None, model_type: str | None,
             image_size: Sequence[int] | None) -> AdapterInfo:
    family, found_type, frame = _network_facts(module)
    if model_type and found_type and model_type != found_type:
        raise UserError(f"save_adapter: model_type={model_type!r}, but the network is a {found_type}: drop "
                        f"model_type (it is read from the network) or pass {found_type!r}")
    model_type, image_size = model_type or found_type, image_size or frame
    layers = lora_layers(module)
    if not layers:
        raise ValueError("this model has no LoRA layers: call inject_lora first")
    ranks = {layer.rank for layer in layers.values()}
    alphas = {layer.alpha for layer in layers.values()}
    if len(ranks) != 1 or len(alphas) != 1:
        raise ValueError(f"LoRA layers with mixed rank {sorted(ranks)} / alpha {sorted(alphas)} are not supported")
    if targets is None or isinstance(targets, str):
        targets = [targets or "default"]
    return AdapterInfo(rank=ranks.pop(), alpha=alphas.pop(), targets=list(targets), layers=list(layers),
                       model_type=model_type, image_size=list(image_size) if image_size else None,
                       base_fingerprint=base_fingerprint(module), family=family)


def save_adapter(
    module: nn.Module,
    path: str | os.PathLike,
    *,
    targets: Sequence[str] | str | None = None,
    model_type: str | None = None,
    image_size: Sequence[int] | None = None,
) -> AdapterInfo:
    """Write the LoRA tensors of ``module`` to ``path`` (``.safetensors``), atomically.

    The file records the model type, the family and the training frame: those given, else what the network's
    family tells of it (a model type given that contradicts the network is an error)."""
    info = _info_of(module, targets, model_type, image_size)
    tensors = {k: v.detach().contiguous().cpu() for k, v in lora_state_dict(module).items()}
    metadata = {"format": FORMAT, **{k: json.dumps(v) for k, v in asdict(info).items()}}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return info


def read_adapter_info(path: str | os.PathLike) -> AdapterInfo:
    """The metadata of an adapter file, with clear errors for missing or foreign files."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"adapter file {path} is a folder: pass the .safetensors file inside it "
                                f"(a LoRA run writes adapter.safetensors)")
    if not path.is_file():
        raise FileNotFoundError(f"adapter file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise ValueError(f"adapter file {path} is not a readable .safetensors file ({err})") from err
    if meta.get("format") != FORMAT:
        raise ValueError(f"adapter file {path} was not written by lora_sam (metadata 'format' is "
                         f"{meta.get('format')!r}, expected {FORMAT!r})")
    try:
        return AdapterInfo(**{k: json.loads(meta[k]) for k in AdapterInfo.__dataclass_fields__ if k in meta})
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"adapter file {path}: metadata field {err} is missing or damaged") from err


def load_adapter(module: nn.Module, path: str | os.PathLike) -> AdapterInfo:
    """Load an adapter into a model that already has the same LoRA layers; says what differs if not."""
    info = read_adapter_info(path)
    layers = lora_layers(module)
    problems = []
    found_family, found_type, _ = _network_facts(module)
    if info.family and found_family and info.family != found_family:
        problems.append(f"family: adapter {info.family}, model {found_family}")
    elif info.model_type and found_type and info.model_type != found_type:
        problems.append(f"model type: adapter {info.model_type}, model {found_type}")
    found_base = base_fingerprint(module)
    if info.base_fingerprint and found_base and info.base_fingerprint != found_base:
        problems.append(f"base weights: the adapter was trained on another base checkpoint (fingerprint "
                        f"{info.base_fingerprint}, this model {found_base}); build the model from the checkpoint "
                        f"the run used")
    if set(layers) != set(info.layers):
        only_file = sorted(set(info.layers) - set(layers))
        only_model = sorted(set(layers) - set(info.layers))
        problems.append(f"LoRA layers differ (targets in the file: {info.targets}); only in the file: "
                        f"{only_file[:4]}{' ...' if len(only_file) > 4 else ''}; only in the model: "
                        f"{only_model[:4]}{' ...' if len(only_model) > 4 else ''}")
    ranks = {layer.rank for layer in layers.values()}
    if ranks and ranks != {info.rank}:
        problems.append(f"rank: adapter {info.rank}, model {sorted(ranks)}")
    alphas = {layer.alpha for layer in layers.values()}
    if alphas and alphas != {float(info.alpha)}:
        problems.append(f"alpha: adapter {info.alpha}, model {sorted(alphas)}")
    if problems:
        raise ValueError(f"adapter {path} does not fit this model: " + "; ".join(problems)
                         + ". Build the model with the adapter's settings, or use apply_adapter().")
    tensors = load_file(str(path))
    expected = lora_state_dict(module)
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in tensors.items()
             if k in expected and v.shape != expected[k].shape]
    if wrong or set(tensors) != set(expected):
        raise ValueError(f"adapter {path} does not fit this model: tensor shapes differ: {wrong[:4]}")
    module.load_state_dict(tensors, strict=False)
    return info


def apply_adapter(module: nn.Module, path: str | os.PathLike) -> AdapterInfo:
    """Inject LoRA with the adapter's own settings into a plain model, then load its tensors."""
    info = read_adapter_info(path)
    inject_lora(module, info.rank, info.alpha, info.layers)
    return load_adapter(module, path)


def merged_sam(
    adapter: str | os.PathLike | None,
    base_checkpoint: str | os.PathLike | None = None,
    model_type: str | None = None,
) -> nn.Module:
    """The base in its own frame (1024 px; LiteMedSAM 256 px) with ``adapter`` (if any) folded in: the model
    ``export_merged`` saves.

    ``model_type`` defaults to the adapter's own (a different one is an error), else ``settings.MODEL_TYPE``.
    """
    if adapter is not None:
        info = read_adapter_info(adapter)
        if model_type and info.model_type and model_type != info.model_type:
            raise UserError(f"adapter {adapter} was trained on {info.model_type}, not {model_type} (the model type "
                            f"asked for): drop the model type (it is read from the adapter) or pass {info.model_type}")
        model_type = model_type or info.model_type
        if model_type is None:
            raise UserError(f"adapter {adapter} does not record its model type (written before adapters recorded "
                            f"it): pass the model type it was trained on (lora-sam: --model-type; one of "
                            f"{', '.join(model_types())})")
    model_type = model_type or MODEL_TYPE
    sam = build(model_type, base_checkpoint, original_frame(model_type)).module
    if adapter is not None:
        apply_adapter(sam, adapter)
        sam = merge_lora(sam)
    return sam


def export_merged(
    adapter: str | os.PathLike,
    out: str | os.PathLike,
    base_checkpoint: str | os.PathLike | None = None,
    model_type: str | None = None,
) -> Path:
    """Write ``base_checkpoint`` + ``adapter`` merged, in its family's official format, to ``out``.

    Args:
        adapter: a ``.safetensors`` adapter written by ``save_adapter`` (or a training run).
        base_checkpoint: the official checkpoint the adapter was trained on; None resolves it like
            ``build_sam`` does ($LORA_SAM_CHECKPOINT, then the default path).
        model_type: defaults to the adapter's own; a different one is an error.
    Returns:
        ``out`` as a Path.
    """
    merged = merged_sam(adapter, base_checkpoint, model_type)
    state = {k: v.detach().contiguous() for k, v in merged.state_dict().items()}
    out = Path(out)
    with atomic_path(out) as tmp:
        torch.save(family_of(merged).to_checkpoint(state), tmp)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("adapter", type=Path, help="adapter file (.safetensors) from a LoRA run")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="base SAM checkpoint the adapter was trained on (default: $LORA_SAM_CHECKPOINT, "
                             "then ~/.cache/lora_sam/<official file>)")
    parser.add_argument("--model-type", default=None,
                        help=f"the base's model type: {model_types_help()} (default: the adapter's)")
    parser.add_argument("--out", type=Path, required=True, help="where to write the merged checkpoint (.pth)")


def run(args: argparse.Namespace) -> int:
    out = export_merged(args.adapter, args.out, args.checkpoint, args.model_type)
    info = read_adapter_info(args.adapter)
    side = original_frame(info.model_type or args.model_type or MODEL_TYPE)[0]
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): {info.model_type} with the rank-{info.rank} "
          f"adapter merged into {len(info.layers)} layers, its family's official format, {side} px")
    return 0
