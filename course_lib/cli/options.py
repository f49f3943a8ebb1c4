"""Options of `course-lib` commands taken from the config dataclasses (``TrainConfig``,
``GPTConfig``): each field has one spelling, one type and one help text, whichever command
offers it (`train`, `finetune`, `compress`)."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any


def add_config_options(
    parser: argparse.ArgumentParser,
    cls: type,
    names: tuple[str, ...],
    prefix: str = "",
    defaults: dict[str, Any] | None = None,
    notes: dict[str, str] | None = None,
    aliases: dict[str, list[str]] | None = None,
) -> None:
    """--some-field for each of ``names``, a field of the dataclass ``cls``: its type (bool:
    --x / --no-x), its help text. The default is ``defaults[name]``, said in the help, or None
    ("not given": the command decides); ``notes[name]`` adds a word to the help;
    ``aliases[name]`` are older spellings that still work (e.g. ``--steps``)."""
    defaults, notes, aliases = defaults or {}, notes or {}, aliases or {}
    unknown = set(names) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"{cls.__name__} has no field {sorted(unknown)}")  # a bug, not input
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in names:
            continue
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        base = typing.get_origin(kind) or kind
        if base in (typing.Union, types.UnionType):
            base = typing.get_origin(args[0]) or args[0]
        said = [notes[f.name]] if f.name in notes else []
        if f.name in defaults:
            said.append(f"default: {defaults[f.name]}")
        help = prefix + f.metadata.get("help", f.name)
        if said:  # "(...; default: 16)", within the help's own brackets if it ends in some
            help = (
                f"{help[:-1]}; {'; '.join(said)})"
                if help.endswith(")")
                else f"{help} ({'; '.join(said)})"
            )
        option = dict(default=defaults.get(f.name), help=help.replace("%", "%%"))
        if base is bool:
            option["action"] = argparse.BooleanOptionalAction
        elif base is tuple:
            option.update(type=float, nargs=len(args), metavar=tuple(f"B{i}" for i in range(2)))
        else:
            option["type"] = str if base is Path else base
        spellings = ["--" + f.name.replace("_", "-"), *aliases.get(f.name, [])]
        parser.add_argument(*spellings, dest=f.name, **option)
