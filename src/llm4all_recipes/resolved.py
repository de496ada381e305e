"""What of a recipe is written back to disk (the output folder, the card, trackers, the log): the keys the user
gave, overrides applied, secrets left out by name."""

import dataclasses
import enum
import re
from typing import Any

_SECRET = re.compile(r"(^|_)(token|secret|password|api_key)$")
_NOT_SECRET = frozenset({"pad_token", "eos_token", "bos_token", "unk_token"})  # special tokens, not credentials


def is_secret(key: str) -> bool:
    """Keys whose values are credentials (hub_token ...): never written to a file, a log or a card."""
    return bool(_SECRET.search(key)) and key not in _NOT_SECRET


def resolved_recipe(recipe: Any) -> dict[str, Any]:
    """The recipe as run: the keys written in the YAML file, command-line overrides applied. Secrets and the
    `env:` mapping (environment variables, often credentials) are left out."""
    origin = recipe.origin  # parsing.RecipeFile
    keys = list(dict.fromkeys([*origin.values, *origin.cli_keys, "output_dir"]))
    return {k: _plain(getattr(recipe, k)) for k in keys if k != "env" and not is_secret(k) and hasattr(recipe, k)}


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(
        value, type
    ):  # nested entries: only what differs from defaults
        return {
            f.name: _plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if f.default is dataclasses.MISSING or getattr(value, f.name) != f.default
        }
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
