"""Typed configs that map one-to-one to CLI flags and YAML recipe keys.

A config is a plain dataclass. Each field becomes `--field-name` (underscores to dashes), its
`help` metadata becomes the flag's help, and a YAML file with the same keys fills the same object.
Positional arguments are fields with `metadata={"positional": True}`.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pocketlm.errors import UserError

T = TypeVar("T")


def field(default: Any = dataclasses.MISSING, help: str = "", *, positional: bool = False,
          choices: list | None = None, nargs: str | None = None, default_factory: Any = dataclasses.MISSING,
          metavar: str | None = None):
    meta = {"help": help, "positional": positional, "choices": choices, "nargs": nargs, "metavar": metavar}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(inner type, is_optional) for annotations like `int | None`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        tp, _ = _base_type(hints[f.name])
        is_list = typing.get_origin(tp) is list
        elem = typing.get_args(tp)[0] if is_list else tp
        kwargs: dict[str, Any] = {"help": meta.get("help", "")}
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        if meta.get("metavar"):
            kwargs["metavar"] = meta["metavar"]
        if meta.get("positional"):
            kwargs["type"] = elem
            if is_list:
                kwargs["nargs"] = meta.get("nargs") or "*"
            elif f.default is not dataclasses.MISSING:
                kwargs["nargs"] = "?"
                kwargs["default"] = f.default
            parser.add_argument(f.name, **kwargs)
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if elem is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                                help=f"{kwargs['help']} (default: {'on' if default else 'off'})")
            continue
        if is_list:  # repeatable: --prompt a --prompt b, or --prompt a b
            kwargs["nargs"] = meta.get("nargs") or "+"
            kwargs["action"] = "extend"
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            # checked by `make`, not argparse, so a --config YAML file can supply it
            kwargs["help"] = f"{kwargs['help']} (required)"
        if default is not None and default != []:
            kwargs["help"] = f"{kwargs['help']} (default: {default})"
        parser.add_argument(flag, type=elem, default=argparse.SUPPRESS, **kwargs)


def from_namespace(cls: type[T], ns: argparse.Namespace, base: T | None = None) -> T:
    """Build `cls` from parsed flags; flags the user did not give keep `base`'s (or the default) value."""
    values = dataclasses.asdict(base) if base is not None else {}
    for f in dataclasses.fields(cls):
        if hasattr(ns, f.name):
            value = getattr(ns, f.name)
            if f.metadata.get("positional") and value in ([], None):
                continue  # not given: keep the YAML value, or let `make` report it missing
            values[f.name] = value
    return make(cls, values, source="command line")


def make(cls: type[T], values: dict, source: str = "config") -> T:
    """Build `cls` from `values` (a YAML file's, a recipe step's or the parsed flags), converted to the field
    types and checked: `lr: 3e-4` (YAML reads it as a string), `batch_size: "16"` and a single path where a
    list is due are converted; a list where a number is due, or a value outside a field's choices, is a
    one-line error naming the key and `source`."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise UserError(f"{source}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        positional = {f.name for f in dataclasses.fields(cls) if f.metadata.get("positional")}
        flags = ", ".join(m.upper() if m in positional else "--" + m.replace("_", "-") for m in missing)
        raise UserError(f"{source}: missing required option(s) {flags}")
    return _validated(cls, values, source)


def _key(name: str) -> str:
    return name.replace("_", "-")


def _validated(cls: type[T], values: dict, source: str) -> T:
    """`values` converted to `cls`'s field types by pydantic (lax mode: "3e-4" is a float, "16" an int, 600 a
    string where one is due), with choices checked."""
    from pydantic import ConfigDict, TypeAdapter, ValidationError
    hints = typing.get_type_hints(cls)
    values = dict(values)
    for f in dataclasses.fields(cls):  # one path where a list of them is due: `faq: my.csv`
        tp, _ = _base_type(hints[f.name])
        if typing.get_origin(tp) is list and isinstance(values.get(f.name), str | Path):
            values[f.name] = [values[f.name]]
    if "__pydantic_config__" not in cls.__dict__:
        cls.__pydantic_config__ = ConfigDict(coerce_numbers_to_str=True, arbitrary_types_allowed=True)
    try:
        cfg = TypeAdapter(cls).validate_python(values)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(part) for part in err["loc"])
        want = _describe(hints.get(err["loc"][0])) if err["loc"] and err["loc"][0] in hints else ""
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise UserError(f"{source}: {_key(key)}: {err['input']!r} is not {want or 'valid'} "
                        f"({err['msg'].lower()}){more}") from None
    for f in dataclasses.fields(cls):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if choices and value is not None and value not in choices:
            raise UserError(f"{source}: {_key(f.name)}: {value!r} is not one of {', '.join(map(str, choices))}")
    return cfg


def _describe(tp: Any) -> str:
    tp, optional = _base_type(tp)
    if typing.get_origin(tp) is list:
        text = f"a list of {_describe(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    else:
        text = {int: "a whole number", float: "a number", str: "a string", bool: "true or false",
                Path: "a path"}.get(tp, getattr(tp, "__name__", str(tp)))
    return text + (" (or null)" if optional else "")


def load_yaml(cls: type[T], path: str | Path) -> T:
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of option names to values")
    values = {k.replace("-", "_"): v for k, v in values.items()}
    return make(cls, values, source=str(path))


def to_dict(cfg: Any) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(cfg).items()}
