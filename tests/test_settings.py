"""The settings groups: each default written once, command lines made from the fields, run-folder round trips."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
from pathlib import Path

import pytest

from lora_sam.app.serve import AppConfig
from lora_sam.data.loaders import LoaderOptions
from lora_sam.data.samples import SampleOptions
from lora_sam.evaluation.options import EvalModels, EvalOptions
from lora_sam.lora import LoRAOptions
from lora_sam.runs.compare import CompareConfig
from lora_sam.runs.pretrain import PretrainConfig
from lora_sam.settings import add_options, field_help, from_args, from_dict, to_dict
from lora_sam.training.options import ComputeOptions, OptimOptions
from lora_sam.training.recipe import RecipeOptions

SRC = Path(__file__).resolve().parents[1] / "src" / "lora_sam"
GROUPS = (LoRAOptions, RecipeOptions, OptimOptions, ComputeOptions, SampleOptions, LoaderOptions, EvalOptions,
          EvalModels, CompareConfig, PretrainConfig, AppConfig)


def _literal(node: ast.expr | None) -> object:
    """The value of a literal default (a constant or a tuple of constants); ``...`` for anything else."""
    try:
        return ast.literal_eval(node) if node is not None else ...
    except ValueError:
        return ...


def _signature_defaults() -> list[tuple[str, str, object]]:
    """(where, parameter, literal default) of every function parameter in src with a literal default."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            a = node.args
            positional = a.posonlyargs + a.args
            pairs = list(zip(positional[len(positional) - len(a.defaults):], a.defaults))
            pairs += [(arg, d) for arg, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None]
            where = f"{path.relative_to(SRC)}:{node.lineno} {node.name}"
            found += [(where, arg.arg, _literal(d)) for arg, d in pairs if _literal(d) is not ...]
    return found


# ``seed``: every seeded function starts its own stream at 0 by convention; no group owns that default
NOT_SETTINGS = {"seed"}


def _group_defaults() -> list[tuple[str, str, object]]:
    """(where, field, literal default) of every field of the groups, as written in their class bodies."""
    found = []
    for group in GROUPS:
        path = Path(inspect.getsourcefile(group))
        for node in ast.parse(inspect.getsource(group)).body[0].body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                value = _literal(node.value)
                if value is not ...:
                    found.append((f"{path.name} {group.__name__}", node.target.id, value))
    return found


def test_each_group_default_is_written_once() -> None:
    """A default of a settings field is written once in src: in its group's class body, and not again as
    a function's default under the same name nor in a second group (shared ones are ``settings``' constants).
    None, () and False mean "not set" / "none" / "off" and may repeat."""
    defaults = {(name, repr(value)) for _, name, value in _group_defaults()
                if name not in NOT_SETTINGS and value not in (None, (), False)}
    seen: dict[tuple[str, str], list[str]] = {}
    for where, name, value in _group_defaults() + _signature_defaults():
        if (name, repr(value)) in defaults:
            seen.setdefault((name, repr(value)), []).append(where)
    repeated = [f"{name}={value}: {', '.join(places)}" for (name, value), places in seen.items() if len(places) > 1]
    assert not repeated, "defaults written more than once:\n" + "\n".join(repeated)


def test_no_function_in_src_takes_more_than_12_parameters() -> None:
    too_many = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
                count = len(names) + (a.vararg is not None) + (a.kwarg is not None)
                if count > 12:
                    too_many.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}: {count}")
    assert not too_many, "\n".join(too_many)


@pytest.mark.parametrize("group", GROUPS, ids=lambda g: g.__name__)
def test_every_field_has_help_and_round_trips(group: type) -> None:
    helps = field_help(group)
    assert not [f.name for f in dataclasses.fields(group) if not helps.get(f.name)], f"{group.__name__}: undocumented"
    value = group()
    assert from_dict(group, to_dict(value)) == value
    parser = argparse.ArgumentParser()
    add_options(parser, group)
    assert from_args(group, parser.parse_args([])) == value  # the command line's defaults are the group's


def test_command_line_reaches_nested_groups() -> None:
    parser = argparse.ArgumentParser()
    add_options(parser, CompareConfig)
    args = parser.parse_args(["--rank", "8", "--layers", "qkv", "--iterations", "2", "--pairing", "optimal",
                              "--eval-max-clicks", "7", "--image-size", "64", "96", "--original"])
    config = from_args(CompareConfig, args)
    assert config.lora == LoRAOptions(rank=8, layers="qkv")
    assert config.recipe == RecipeOptions(iterations=2, pairing="optimal")
    assert config.eval == EvalOptions(max_clicks=7) and config.image_size == (64, 96) and config.original
    assert from_dict(CompareConfig, to_dict(config)) == config
    with pytest.raises(SystemExit):
        parser.parse_args(["--eval-split", "all"])  # the evaluation's split is the training's: no option


def test_from_dict_names_an_unknown_field() -> None:
    with pytest.raises(ValueError, match="unknown settings \\['rnak'\\]"):
        from_dict(LoRAOptions, {"rnak": 4})


def test_the_readme_settings_example_runs() -> None:
    """The documentation's settings block (docs/training.md), verbatim: the groups passed whole equal the same
    fields given by name."""
    page = (SRC.parents[1] / "docs" / "training.md").read_text()
    section = page.split("## Settings", 1)[1]
    code = section.split("```python", 1)[1].split("```", 1)[0]
    exec(compile(code, "docs/training.md (Settings)", "exec"), {})


def test_old_flat_hparams_and_the_old_targets_name_still_load() -> None:
    """hparams.yaml written before the groups (flat keys, ``targets``, ``min_only``) builds the same module."""
    old = {"rank": 2, "alpha": 2.0, "model_type": "tiny", "checkpoint": "random", "image_size": [32, 48],
           "targets": "qkv", "finetune": "lora", "iterations": 2, "masks_per_image": 4, "lr": 1e-3,
           "weight_decay": 0.0, "warmup_steps": 5, "min_only": True, "focal_weight": 0.0, "dice_weight": 1.0,
           "iou_weight": 1.0, "on_nonfinite": "error", "seed": 3}
    from lora_sam.training.module import LoRASAM

    with pytest.warns(DeprecationWarning, match="layers="):
        module = LoRASAM(**old)
    assert module.lora_options == LoRAOptions(rank=2, alpha=2.0, layers="qkv")
    assert module.recipe == RecipeOptions(iterations=2, masks_per_image=4, pairing="min", focal_weight=0.0,
                                          dice_weight=1.0, iou_weight=1.0).with_rules()  # the rest: v1's rules
    assert module.optim == OptimOptions(lr=1e-3, weight_decay=0.0, warmup_steps=5)
    assert all(name.endswith("attn.qkv") for name in module.lora_layers)
    again = LoRASAM(**module.hparams)  # the new hparams.yaml (groups as dicts) reads back the same
    assert (again.lora_options, again.recipe, again.optim) == (module.lora_options, module.recipe, module.optim)
    with pytest.raises(TypeError, match="unknown options \\['itrations'\\]"):
        LoRASAM(model_type="tiny", checkpoint="random", image_size=(32, 48), itrations=2)


def test_demo_options_come_from_its_config_and_override_the_preset() -> None:
    """``lora-sam demo``'s options are DemoConfig's fields, its groups' included (the fine-tuning is a
    ``CompareConfig``, the --train-base recipe a ``RecipeOptions``); an option given wins over the preset
    (``--quick``'s), the others keep the preset's value."""
    from lora_sam.runs.demo import DEFAULT, QUICK, DemoConfig, add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--quick", "--steps", "7", "--image-size", "64", "96", "--lr-lora", "0.01",
                              "--iterations", "1", "--base-iterations", "2", "--eval-max-clicks", "4", "--rank", "2"])
    f = QUICK.finetune
    finetune = dataclasses.replace(f, steps=7, lr_lora=0.01, lora=dataclasses.replace(f.lora, rank=2),
                                   recipe=dataclasses.replace(f.recipe, iterations=1),
                                   eval=dataclasses.replace(f.eval, max_clicks=4))
    assert from_args(DemoConfig, args, base=QUICK) == dataclasses.replace(
        QUICK, image_size=(64, 96), finetune=finetune, base_recipe=dataclasses.replace(QUICK.base_recipe, iterations=2))
    assert from_args(DemoConfig, parser.parse_args([]), base=DEFAULT) == DEFAULT
    assert "--eval-masks-per-image" in parser.format_help()


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def test_one_spelling_per_setting_across_commands() -> None:
    """A setting has one option name in every command that takes it: ``lora-sam demo`` takes ``compare``'s
    (the demo sets the base, its frame and the original pipeline itself), and ``lora-sam summary`` LoRA's."""
    from lora_sam.runs import compare, demo, summary

    parsers = {name: argparse.ArgumentParser() for name in ("compare", "demo", "summary")}
    compare.add_arguments(parsers["compare"])
    demo.add_arguments(parsers["demo"])
    summary.add_arguments(parsers["summary"])
    flags = {name: _flags(parser) for name, parser in parsers.items()}
    assert flags["compare"] - {"--original", "--no-original", "--in-process", "--quiet", "--data"} <= flags["demo"]
    assert {"--rank", "--alpha", "--layers"} <= flags["summary"] & flags["compare"]
    old = {"--base-masks", "--max-clicks", "--eval-images", "--automatic-points", "--automatic-images"}
    assert not old & flags["demo"]  # the demo's own spellings of compare's settings, before it held the groups


def test_sams_loss_weights_are_written_once() -> None:
    """SAM's loss weights (focal 20, dice 1, IoU 1) live in ``checkpoints.SAM_RECIPE_DEFAULTS``: no function
    of src writes one of them again as a literal default under its name."""
    from lora_sam.models.checkpoints import SAM_RECIPE_DEFAULTS

    weights = {(k, repr(float(v))) for k, v in SAM_RECIPE_DEFAULTS.items() if k.endswith("_weight")}
    again = [f"{where} {name}={value}" for where, name, value in _signature_defaults()
             if isinstance(value, (int, float)) and (name, repr(float(value))) in weights]
    assert len(weights) == 3 and not again, again
