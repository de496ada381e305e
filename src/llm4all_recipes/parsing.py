"""Reading recipes: YAML files and `--key value` overrides, through TRL's parser (`trl.TrlParser`), into the
typed dataclasses of `configs`. (Writing them back is `resolved.py`.)

`parse_recipe` checks everything before any model is loaded — unknown keys, types, choices, files, value
ranges — and raises `RecipeError` naming the file, the key and its line.
"""

import argparse
import dataclasses
import difflib
import enum
import json
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from trl import TrlParser

from . import paths
from .configs import RECIPES, check_output_not_an_input
from .errors import RecipeError
from .fields import _flat


def _json_dict(text: str) -> dict:
    """`--ranks '{"o_proj": 32}'`: dict keys given on the command line are JSON."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def _json_list_item(item_type: Any):
    """A list key's item type that also reads a whole JSON list (`--datasets '[{"path": "a.jsonl", "weight": 2}]'`):
    such a value becomes a nested list, flattened when the recipe is built."""

    def convert(text: str):
        if not text.lstrip().startswith("["):
            return item_type(text)
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"invalid JSON list {text!r}: {exc.msg}") from None
        if not isinstance(items, list):
            raise argparse.ArgumentTypeError(f"expected a JSON list, got {text!r}")
        return [item_type(**i) if dataclasses.is_dataclass(item_type) and isinstance(i, dict) else i for i in items]

    convert.__name__ = getattr(item_type, "__name__", "value")
    return convert


class _Parser(TrlParser):
    """TRL's parser, raising `RecipeError` instead of printing usage and exiting; dict keys read JSON, list keys
    a JSON list as well as space-separated values."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, allow_abbrev=False, **kwargs)  # `--rat 0.5` is not `--ratio 0.5`
        for action in self._actions:
            if action.type is dict or typing.get_origin(action.type) is dict:
                action.type = _json_dict
            elif action.nargs in ("+", "*") and action.type is not None:
                action.type = _json_list_item(action.type)

    def error(self, message: str):
        key = None
        if message.startswith("argument --"):
            key = message.split()[1].lstrip("-").split("/")[0].rstrip(":")
        raise RecipeError(message, source="command line", key=key)


@dataclass
class RecipeFile:
    """Where a parsed recipe came from: kept on the recipe as `recipe.origin`."""

    path: str
    values: dict[str, Any]  # the YAML mapping as written
    lines: dict[str, int]  # key (dotted, with [i]) -> line in the file
    cli_keys: list[str]  # top-level keys overridden on the command line
    argv: list[str]

    def locate(self, err: RecipeError) -> RecipeError:
        top = (err.key or "").split("[")[0].split(".")[0]
        if top and top in self.cli_keys:
            return err.located("command line")
        return err.located(self.path, self.lines.get(err.key or "", self.lines.get(top)))


def read_yaml(path: str) -> tuple[dict[str, Any], dict[str, int]]:
    """Load a recipe mapping with the line of every key; duplicate keys are an error."""
    if not os.path.isfile(path):
        raise RecipeError("no such recipe file", source=path)
    text = Path(path).read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise RecipeError(
            f"invalid YAML: {getattr(exc, 'problem', exc)}", source=path, line=mark.line + 1 if mark else None
        ) from None
    if values is None:
        values, node = {}, None
    if not isinstance(values, dict):
        raise RecipeError("a recipe must be a YAML mapping of key: value", source=path)
    lines: dict[str, int] = {}

    def walk(n: Any, prefix: str) -> None:
        if isinstance(n, yaml.MappingNode):
            seen = set()
            for k, v in n.value:
                key = f"{prefix}.{k.value}" if prefix else str(k.value)
                if key in seen:
                    raise RecipeError("duplicate key", source=path, key=key, line=k.start_mark.line + 1)
                seen.add(key)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                lines[f"{prefix}[{i}]"] = item.start_mark.line + 1
                walk(item, f"{prefix}[{i}]")

    walk(node, "")
    return values, lines


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_value(value: Any, tp: Any) -> bool:
    """Does a YAML value fit a dataclass annotation? (numbers written as strings such as 1e-5 are accepted)."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(check_value(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is Literal:
        return value in typing.get_args(tp)
    if tp is bool:
        return isinstance(value, bool) or (isinstance(value, str) and value.lower() in ("true", "false"))
    if tp is int:
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, str) and value.lstrip("-").isdigit()
        )
    if tp is float:
        if isinstance(value, bool):
            return False
        if isinstance(value, int | float):
            return True
        try:
            float(value)
            return isinstance(value, str)
        except (TypeError, ValueError):
            return False
    if tp is str:
        return isinstance(value, str)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return value in {m.value for m in tp} or isinstance(value, tp)
    if origin in (list, Sequence, tuple) or tp in (list, tuple):
        args = typing.get_args(tp)
        return (
            isinstance(value, list) and all(check_value(v, args[0]) for v in value) if args else isinstance(value, list)
        )
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, dict)
    return True


def check_keys(cls: type, values: dict[str, Any], prefix: str = "") -> None:
    """Unknown keys (with a suggestion), missing required keys and wrong types, recursively."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in known:
            if not prefix and key == "env":
                continue
            raise unknown_key(key, known, full)
        tp = hints[key]
        if not check_value(value, tp):
            raise RecipeError(type_problem(value, tp), key=full)
        item_cls = _dataclass_item(tp)
        if item_cls is not None and isinstance(value, list):
            for i, item in enumerate(value):
                check_keys(item_cls, item, f"{full}[{i}].")
    for f in known.values():
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if prefix and required and f.name not in values:
            raise RecipeError("required key missing", key=f"{prefix}{f.name}")


def type_problem(value: Any, tp: Any) -> str:
    """Why `value` is not a `tp`, naming the allowed values of a Literal (also inside a list)."""
    options = [a for a in typing.get_args(tp) if a is not type(None)] if _is_union(tp) else [tp]
    for option in options:
        if typing.get_origin(option) is Literal and not isinstance(value, list | dict):
            return f"{value!r} is not one of: {', '.join(map(str, typing.get_args(option)))}"
        item_tp = typing.get_args(option)[0] if typing.get_origin(option) is list and typing.get_args(option) else None
        if item_tp is not None and isinstance(value, list):
            i, bad = next((i, v) for i, v in enumerate(value) if not check_value(v, item_tp))
            return f"item {i}: {type_problem(bad, item_tp)}"
    return f"expected {_type_name(tp)}, got {value!r} ({type(value).__name__})"


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def unknown_key(key: str, known: typing.Iterable[str], full: str) -> RecipeError:
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.75)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return RecipeError(f"unknown key{hint}", key=full)


def _dataclass_item(tp: Any) -> type | None:
    for arg_tp in typing.get_args(tp):
        if dataclasses.is_dataclass(arg_tp):
            return arg_tp
    return None


def _check_choices(parser: TrlParser, values: dict[str, Any]) -> None:
    for action in parser._actions:
        if action.choices and action.dest in values:
            value = values[action.dest]
            value = value.value if isinstance(value, enum.Enum) else value
            if str(value) not in [str(c.value if isinstance(c, enum.Enum) else c) for c in action.choices]:
                raise RecipeError(
                    f"invalid value {value!r}; choose one of: {', '.join(map(str, action.choices))}",
                    key=action.dest,
                )


def _cli_keys(argv: Sequence[str]) -> list[str]:
    return [a[2:].split("=")[0] for a in argv if a.startswith("--")]


def _guess_key(message: str, candidates: Sequence[str]) -> str | None:
    for key in sorted(candidates, key=len, reverse=True):
        if f"`{key}`" in message or f"--{key}" in message or f"'{key}'" in message or f" {key} " in message:
            return key
    return None


def split_config(argv: Sequence[str]) -> tuple[str | None, list[str]]:
    """Take `--config PATH` (or `--config=PATH`) out of argv."""
    rest, config = [], None
    it = iter(argv)
    for a in it:
        if a == "--config":
            config = next(it, None)
            if config is None:
                raise RecipeError("--config needs a recipe path", source="command line")
        elif a.startswith("--config="):
            config = a.split("=", 1)[1]
        else:
            rest.append(a)
    return config, rest


def parse_recipe(stage: str, argv: Sequence[str], *, static: bool = False) -> Any:
    """Parse `--config RECIPE.yaml [--key value ...]` into the stage's dataclass and check it.

    `static=True` (used by `validate`) does not require outputs of other stages to exist yet.
    """
    cls = RECIPES[stage]
    config, overrides = split_config(argv)
    if config is None:  # every key from the command line (handy for publish)
        values, lines, source = {}, {}, "command line"
    else:
        folder_stage = paths.stage_of(config)
        if folder_stage in RECIPES and folder_stage != stage:
            raise RecipeError(
                f"this recipe is a '{folder_stage}' recipe (its folder), not a '{stage}' one", source=config
            )
        values, lines = read_yaml(config)
        source = config
    cli = _cli_keys(overrides)
    origin = RecipeFile(source, values, lines, cli, list(argv))
    try:
        check_keys(cls, values)
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        for key in cli:  # command-line typos (never abbreviations: the parser has allow_abbrev off)
            if key not in known:
                raise unknown_key(key, known, key)
        parser = _Parser(cls)
        _check_choices(parser, values)
    except RecipeError as err:
        raise origin.locate(err) from None
    has_output = "output_dir" in {f.name for f in dataclasses.fields(cls)}
    if has_output and "output_dir" not in values and "output_dir" not in cli:
        default = paths.default_output_dir(config) if config else None
        if default is None:
            raise RecipeError(
                "required when the recipe is not under recipes/<model>/<stage>/",
                source=source,
                key="output_dir",
            )
        overrides += ["--output_dir", default]
    try:
        (recipe,) = parser.parse_args_and_config([*(["--config", config] if config else []), *overrides])
    except RecipeError as err:
        raise origin.locate(err) from None
    except (ValueError, TypeError) as exc:
        key = _guess_key(str(exc), [*values, *cli])
        raise origin.locate(RecipeError(str(exc).strip(), key=key)) from None
    for f in dataclasses.fields(recipe):  # list keys given as a JSON list on the command line
        value = getattr(recipe, f.name, None)
        if isinstance(value, list) and any(isinstance(v, list) for v in value):
            setattr(recipe, f.name, _flat(value))
    recipe.origin = origin
    try:
        if has_output:  # first: the one check that protects data (a stage replaces its output_dir)
            paths.check_output_path(recipe.output_dir)
            check_output_not_an_input(recipe)
        recipe.check(static)
    except RecipeError as err:
        raise origin.locate(err) from None
    return recipe
