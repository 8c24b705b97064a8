"""Settings groups as frozen dataclasses, and the command lines made from them.

A group's fields, defaults and help texts are written once, in its dataclass: the help of a field is
its entry in the class docstring's ``Args:`` section. ``add_options`` adds one ``--field-name``
option per field to an ``argparse`` parser (a nested group's fields too, with the prefix its field's
metadata names; a field's ``listing`` metadata, a function, adds the values to choose from to its help), ``from_args`` builds the dataclass back from the parsed arguments, and
``to_dict`` / ``from_dict`` write it into a run folder's JSON and read it back.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import operator
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, TypeVar

__all__ = ["MASKS_PER_IMAGE", "MAX_CLICKS", "MODEL_TYPE", "VAL_FRACTION", "add_options", "as_group", "field_help",
           "from_args", "from_dict", "to_dict"]

T = TypeVar("T")

# Defaults that several groups share (written here once; each group's field refers to it)
MODEL_TYPE = "vit_b"
"""The SAM model type when none is named."""
MASKS_PER_IMAGE = 16
"""K, the targets of one image per training step: the recipe's and the data's (the loader draws them)."""
VAL_FRACTION = 0.1
"""The share of the data held out for validation: training's split, which the evaluation reuses."""
MAX_CLICKS = 20
"""Clicks per target in the evaluation (and the budget of NoC)."""


def field_help(cls: type) -> dict[str, str]:
    """Each field's help text, from the ``Args:`` section of ``cls``'s docstring (``a, b: text`` documents both)."""
    doc = typing.cast(str, cls.__doc__ or "")
    section = doc.split("Args:", 1)[1] if "Args:" in doc else ""
    helps: dict[str, str] = {}
    names: list[str] = []
    for line in section.splitlines():
        entry = re.match(r"^\s{4,8}([a-z_][a-z0-9_, ]*):\s*(.*)$", line)
        if entry and (not names or len(line) - len(line.lstrip()) <= 8):
            names = [n.strip() for n in entry.group(1).split(",")]
            for name in names:
                helps[name] = entry.group(2).strip()
        elif line.strip() and names:
            for name in names:
                helps[name] += " " + line.strip()
        elif not line.strip() and helps:
            break
    return helps


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without ``| None``, whether None was allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return functools.reduce(operator.or_, args), len(args) < len(typing.get_args(annotation))
    return annotation, False


def _argument(annotation: Any, default: Any) -> dict[str, Any]:
    """``add_argument`` keywords for a field of this annotation."""
    kind, optional = _unwrap(annotation)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        return {"choices": args, "type": type(args[0])}
    if origin is tuple and typing.get_origin(args[0]) is tuple:  # sizes: 160x256 320x512
        return {"nargs": "+", "type": _size, "metavar": "HxW"}
    if origin is tuple and len(args) == 2 and args[1] is not Ellipsis:
        return {"nargs": 2, "type": args[0], "metavar": ("H", "W") if args[0] is int else None}
    if origin in (typing.Union, types.UnionType):  # str | tuple[str, ...]: one name or several
        return {"nargs": "+", "type": str}
    if origin is tuple:
        return {"nargs": "*" if optional else "+", "type": args[0]}
    return {"type": kind}


def _size(text: str) -> tuple[int, int]:
    """``160x256`` -> (160, 256)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a size is HxW, such as 160x256; got {text!r}") from None
    return h, w


def add_options(parser: argparse.ArgumentParser | Any, cls: type, *, prefix: str = "",
                skip: tuple[str, ...] = (), given_only: bool = False, base: Any = None) -> None:
    """One ``--prefix-field-name`` option per field of ``cls`` (nested groups with their metadata's prefix),
    its default the field's (``base``'s value when given: a nested group's default instance) and its help the
    docstring's. ``given_only``: an option not given is left out of the parsed arguments
    (``from_args(..., base=preset)`` then keeps the preset's value)."""
    hints, helps = typing.get_type_hints(cls), field_help(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = getattr(base, f.name) if base is not None else (
            f.default if f.default is not dataclasses.MISSING else f.default_factory())  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            title = f"{f.name} ({type(default).__name__})"
            group = parser.add_argument_group(title) if hasattr(parser, "add_argument_group") else parser
            add_options(group, type(default), prefix=prefix + f.metadata.get("prefix", ""),
                        skip=tuple(f.metadata.get("skip", ())), given_only=given_only, base=default)
            continue
        name = prefix + f.name
        text = helps.get(f.name, "").rstrip(".")
        if "listing" in f.metadata:  # the values to list, known when the parser is made (every model type, ...)
            text = f"{text}: {f.metadata['listing']()}"
        text = text.replace("%", "%%")
        flag = "--" + prefix.replace("_", "-") + f.metadata.get("flag", f.name.replace("_", "-"))
        if f.metadata.get("append"):  # a repeatable option, one value each time
            parser.add_argument(flag, dest=name, action="append", default=None, metavar=f.metadata.get("metavar"),
                                help=f"{text} (repeatable)")
            continue
        shown = " ".join("x".join(map(str, v)) if isinstance(v, tuple) else str(v) for v in default) \
            if isinstance(default, tuple) else default
        parser.add_argument(flag, dest=name, default=argparse.SUPPRESS if given_only else default,
                            help=f"{text} (default: {shown})".strip(), **_argument(hints[f.name], default))


def from_args(cls: type[T], args: argparse.Namespace, *, prefix: str = "", base: T | None = None,
              skip: tuple[str, ...] = ()) -> T:
    """``cls`` from the options ``add_options`` added (fields it skipped, ``skip`` and a nested group's, come from
    ``base`` or the defaults, even where another option of the parser has their name)."""
    values: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        default = getattr(base, f.name) if base is not None else (
            f.default if f.default is not dataclasses.MISSING else f.default_factory())  # type: ignore[misc]
        if f.name in skip:
            values[f.name] = default
        elif dataclasses.is_dataclass(default):
            values[f.name] = from_args(type(default), args, prefix=prefix + f.metadata.get("prefix", ""),
                                       base=default, skip=tuple(f.metadata.get("skip", ())))
        elif hasattr(args, prefix + f.name):
            value = getattr(args, prefix + f.name)
            if value is None and f.metadata.get("append"):
                value = default
            if isinstance(value, list) and len(value) == 1 and _one_or_many(hints[f.name]):
                value = value[0]  # ``str | tuple[str, ...]`` given one value: the single form (a preset name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
        elif base is not None:
            values[f.name] = default
    return cls(**values)


def _one_or_many(annotation: Any) -> bool:
    """Whether a field takes one value or a tuple of them (``str | tuple[str, ...]``)."""
    kind, _ = _unwrap(annotation)
    return typing.get_origin(kind) in (typing.Union, types.UnionType)


def to_dict(options: Any) -> dict[str, Any]:
    """A settings group as JSON / YAML stores it (tuples as lists, nested groups as dicts)."""
    def plain(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(options))


def as_group(cls: type[T], value: T | Mapping[str, Any] | None) -> T:
    """A settings group from itself, from ``to_dict``'s dict (a run's hparams.yaml) or from None (its defaults)."""
    return value if isinstance(value, cls) else from_dict(cls, value or {})


def from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
    """``cls`` from ``to_dict``'s dict (keys it does not know are an error naming them)."""
    known = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown settings {unknown}; it has {sorted(known)}")
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for name, value in values.items():
        kind, _ = _unwrap(hints[name])
        if dataclasses.is_dataclass(kind) and isinstance(value, Mapping):
            value = from_dict(kind, value)  # type: ignore[arg-type]
        elif isinstance(value, list):
            value = tuple(value)
        out[name] = value
    return cls(**out)
