"""Value checks shared by the recipes (`check`), run before any model is loaded: positive numbers, a model that
exists and fits the lengths asked of it, a held-out mixture, an output folder that is not an input, a Hub id."""

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .. import paths
from ..data.mixture import check_sources
from ..errors import RecipeError
from ..paths import check_path
from .common import MixtureArgs


def _positive(recipe: Any, *keys: str) -> None:
    for key in keys:
        value = getattr(recipe, key, None)
        if value is not None and value <= 0:
            raise RecipeError(f"must be > 0 (got {value})", key=key)


CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_target_positions")


def local_config(model: str | None) -> dict | None:
    """A local model folder's config.json (None for a Hub id, a missing or unreadable file)."""
    config = Path(model or "", "config.json")
    if not model or not config.is_file():
        return None
    try:
        values = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # check_model / the loader name a broken config
    return values if isinstance(values, dict) else None


def is_local_speech_model(model: str | None) -> bool | None:
    """models.is_speech_model for a local folder; None for a Hub id (nothing is fetched while checking)."""
    if local_config(model) is None:
        return None
    from ..models import is_speech_model

    return is_speech_model(model)


def model_context(model: str | None) -> tuple[int, str] | None:
    """(positions, config key) of a local model folder's context length; None for a Hub id or an unknown key."""
    if (values := local_config(model)) is None:
        return None
    for scope in (values, values.get("text_config") or {}):
        for key in CONTEXT_KEYS:
            if isinstance(scope.get(key), int):
                return scope[key], key
    return None


def check_context(model: str | None, tokens: int | None, key: str, extra: int = 0) -> None:
    """`tokens` (+ `extra` prompt tokens) must fit the model's positions: beyond them a model has no embedding
    (learned positions) or was never trained (rotary), and every sequence would be cut or fail later."""
    if not tokens or (found := model_context(model)) is None:
        return
    positions, name = found
    if tokens + extra > positions:
        raise RecipeError(
            f"{tokens:,} tokens is beyond the model's context: {name} is {positions:,} in {Path(model, 'config.json')}",
            key=key,
        )


def check_model(
    value: str | None, static: bool, what: str, key: str = "model_name_or_path", weights: bool = True
) -> None:
    """A required model: a Hub id or an existing folder (or, in `static` mode, one a stage will produce); a folder
    must hold whole safetensors weights unless only its config is read (`weights=False`: compress --dry_run)."""
    if not value:
        raise RecipeError(f"required: {what}", key=key)
    check_path(value, key, static, hub_ok=True)
    if weights and os.path.isdir(value):
        from ..models import weights_problem

        if problem := weights_problem(value):
            raise RecipeError(problem, key=key)


def check_mixture(recipe: MixtureArgs, static: bool, eval_columns: Sequence[str] | None = None) -> None:
    """Training sources exist and have the stage's columns; eval sources too (`eval_columns`, default the same)
    and are held out (none is also a training source)."""

    if not recipe.datasets:
        raise RecipeError("required: at least one training source", key="datasets")
    check_sources(recipe.datasets, "datasets", recipe.COLUMNS, static)
    check_sources(recipe.eval_datasets, "eval_datasets", eval_columns or recipe.COLUMNS, static)
    seen = {
        (os.path.abspath(s.path) if not paths.is_hub_id(s.path) else s.path, s.name, s.split) for s in recipe.datasets
    }
    for i, src in enumerate(recipe.eval_datasets):
        ident = (
            os.path.abspath(src.path) if not paths.is_hub_id(src.path) else src.path,
            src.name,
            src.split,
        )
        if ident in seen:
            raise RecipeError(
                f"{src.path} (split {src.split}) is also a training source: eval data must be held out",
                key=f"eval_datasets[{i}]",
            )


# Keys whose values a stage reads (models, data, caches, templates): its output_dir may be none of them, nor a
# folder above one, since a run replaces its output_dir (with overwrite_output_dir) and would destroy its input.
INPUT_KEYS = (
    "model_name_or_path",
    "teacher_model_name_or_path",
    "reference_model_name_or_path",
    "tokenizer_name_or_path",
    "teacher_cache",
    "models",
    "datasets",
    "eval_datasets",
    "replay_datasets",
    "decontaminate",
    "perplexity_datasets",
    "simsamu_dataset",
    "meetings_dataset",
    "dataset",
    "source",
    "chat_template_path",
    "tokenizer_files",
)


def check_output_not_an_input(recipe: Any) -> None:
    if not getattr(recipe, "output_dir", None):
        return
    out = os.path.realpath(recipe.output_dir)
    for key in INPUT_KEYS:
        value = getattr(recipe, key, None)
        for item in value if isinstance(value, list) else [value]:
            path = getattr(item, "path", item)
            if not isinstance(path, str) or not path:
                continue
            where = os.path.realpath(path)
            if where == out or where.startswith(out + os.sep):
                raise RecipeError(
                    f"{recipe.output_dir} {'is' if where == out else 'holds'} the input `{key}` ({path}): a run "
                    "replaces its output_dir, so it would destroy its own input; choose another output_dir",
                    key="output_dir",
                )


def check_output_dir(recipe: Any, static: bool) -> None:
    if static or recipe.dry_run or recipe.overwrite_output_dir:
        return
    if os.path.isdir(recipe.output_dir):
        raise RecipeError(
            f"{recipe.output_dir} already holds a finished run; pass --overwrite_output_dir true to replace it",
            key="output_dir",
        )


def check_hub(push: bool, repo_id: str | None, key: str) -> None:
    """A stage that publishes needs a well-formed `<namespace>/<name>` repo id."""
    if not push:
        return
    if not repo_id:
        raise RecipeError("required when publishing (push_to_hub: true)", key=key)
    if not paths.is_repo_id(repo_id):
        raise RecipeError(f"expected <namespace>/<name>, got {repo_id!r}", key=key)
