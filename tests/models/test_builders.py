"""``lora_sam.build_sam`` builds every model type of every family (``families.build_network``), and every command
that takes a model type lists those of both families in its ``--help``."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import lora_sam
from lora_sam.cli import main
from lora_sam.errors import UserError
from lora_sam.models import families
from lora_sam.models.sam_v1 import model as sam_v1


def test_lora_sam_build_sam_is_the_families_builder() -> None:
    assert lora_sam.build_sam is families.build_network is families.build_sam


@pytest.mark.parametrize("model_type", families.model_types())
def test_every_model_type_reaches_its_family_at_its_default_size(model_type: str, monkeypatch) -> None:
    """Each type goes to its own family's builder, with the family's default frame when no size is named
    (SAM v1 160x256, LiteMedSAM its own 256x256; SAM 2.1 its square 224x224) and the size given otherwise (the
    large types are not built here: the builder is recorded instead)."""
    family = families.family_of(model_type)
    calls = []
    recorded = dataclasses.replace(family, build=lambda *a: calls.append(a) or "network")
    monkeypatch.setitem(families._FAMILIES, family.name, recorded)
    assert lora_sam.build_sam(model_type, "random") == "network"
    assert lora_sam.build_sam(model_type, "random", (1024, 1024)) == "network"
    expected = {"sam2.1": (224, 224)}.get(family.name, (256, 256) if model_type == "lite_medsam"
                                          else sam_v1.DEFAULT_IMAGE_SIZE)
    assert calls == [(model_type, "random", expected), (model_type, "random", (1024, 1024))]


def test_sam2_types_build_their_network() -> None:
    """``lora_sam.build_sam("sam2.1_...")`` is the SAM 2.1 family's network, weights and frame as
    ``families.build`` gives them."""
    pytest.importorskip("sam2")
    mini = lora_sam.build_sam("sam2.1_mini", "builtin")
    same = families.build("sam2.1_mini", "builtin", (224, 224)).module
    assert type(mini).__name__ == "SAM2Base" and mini.image_size == 224
    assert all(torch.equal(a, b) for a, b in zip(mini.state_dict().values(), same.state_dict().values(), strict=True))
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="RANDOM"):
        hiera_t = lora_sam.build_sam("sam2.1_hiera_t", "random", 512)
    assert families.family_of(hiera_t).model_type_of(hiera_t) == "sam2.1_hiera_t" and hiera_t.image_size == 512


def test_sam_v1_types_build_as_before() -> None:
    sam = lora_sam.build_sam("tiny", "builtin")
    before = sam_v1.build_sam("tiny", "builtin")
    assert type(sam) is type(before) and sam_v1.image_size_of(sam) == (160, 256)
    assert all(torch.equal(a, b) for a, b in zip(sam.state_dict().values(), before.state_dict().values(), strict=True))
    assert sam_v1.image_size_of(lora_sam.build_sam("tiny", "builtin", 64)) == (64, 64)


def test_an_unknown_model_type_lists_every_family_s_types() -> None:
    with pytest.raises(UserError) as caught:
        lora_sam.build_sam("sam2_hiera_t")
    message = str(caught.value)
    assert "'sam2_hiera_t'" in message and all(t in message for t in families.model_types())


COMMANDS = ("segment-all", "export", "eval", "app", "demo", "compare", "summary", "pretrain")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_s_help_lists_both_families_model_types(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for model_type in ("vit_b", "tiny", "sam2.1_hiera_t", "sam2.1_mini"):
        assert model_type in text, f"lora-sam {command} --help does not name {model_type}"
