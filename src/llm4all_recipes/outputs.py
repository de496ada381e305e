"""Stage outputs, as every stage writes them.

    <output_dir>/            model + tokenizer (+ chat_template.jinja), or a dataset
        recipe.yaml          the recipe as run (YAML keys with command-line overrides applied)
        metrics.json         what the stage measured
        lineage.json         every ancestor stage, then this one: recipe, command, library versions
        README.md            the model or dataset card
        checkpoint-N/        trainers only, for resume

A stage writes into `<output_dir>.tmp` and renames it at the very end, so a crash never leaves a
half output that looks finished. A trainer's `.tmp` survives a crash: rerunning resumes from it.
"""

import contextlib
import datetime as _dt
import json
import logging
import os
import platform
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from .configs import resolved_recipe

logger = logging.getLogger(__name__)

TRACKED_LIBRARIES = (
    "torch",
    "transformers",
    "trl",
    "peft",
    "datasets",
    "accelerate",
    "huggingface-hub",
    "llm4all-recipes",
)


def tmp_dir(output_dir: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(output_dir).rstrip('/')}.tmp")


@contextlib.contextmanager
def staged_output(output_dir: str | os.PathLike, *, overwrite: bool = False, keep_on_error: bool = False):
    """Yield `<output_dir>.tmp`; on success replace `<output_dir>` with it (main process only).

    On error the temporary folder is removed, unless `keep_on_error` (stages that resume keep what they saved:
    checkpoint-N/ folders, per-block states).
    `overwrite` starts from an empty temporary folder.
    """
    from accelerate import PartialState

    state = PartialState()
    final, tmp = Path(output_dir), tmp_dir(output_dir)
    if state.is_main_process:
        if overwrite and tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    try:
        yield tmp
    except BaseException:
        if state.is_main_process:
            if keep_on_error and tmp.is_dir() and any(tmp.iterdir()):
                logger.error("run interrupted: %s kept; rerun the same command to resume from it", tmp)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        raise
    state.wait_for_everyone()
    if state.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        logger.info("output written to %s", final)
    state.wait_for_everyone()


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TRACKED_LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def redact(argv: list[str]) -> list[str]:
    """Command-line values of token-like keys are never written anywhere."""
    out = list(argv)
    for i, a in enumerate(out):
        if a.startswith("--") and "token" in a:
            if "=" in a:
                out[i] = a.split("=", 1)[0] + "=***"
            elif i + 1 < len(out):
                out[i + 1] = "***"
    return out


def launch_command(stage: str, recipe: Any) -> str:
    argv = redact(getattr(getattr(recipe, "origin", None), "argv", sys.argv[1:]))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    prefix = f"accelerate launch --num_processes {world} -m llm4all_recipes" if world > 1 else "llm4all"
    return " ".join([prefix, stage, *argv])


def write_json(path: str | os.PathLike, obj: Any) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def read_lineage(model_path: str | None) -> list[dict[str, Any]]:
    """Ancestor stages of a model: its folder's lineage.json, or a root entry for a plain Hub/local model."""
    if not model_path:
        return []
    path = Path(model_path) / "lineage.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))["stages"]
    return [{"stage": "base", "model": model_path}]


def write_run_files(
    folder: Path, *, stage: str, recipe: Any, metrics: dict[str, Any], parent: str | None
) -> list:
    """recipe.yaml, metrics.json and lineage.json; returns the lineage (ancestors first, this stage last)."""
    resolved = resolved_recipe(recipe)
    with open(folder / "recipe.yaml", "w", encoding="utf-8") as f:
        f.write(f"# Resolved recipe of this {stage} run (llm4all {stage} --config recipe.yaml reruns it).\n")
        yaml.safe_dump(resolved, f, sort_keys=False, allow_unicode=True)
    write_json(folder / "metrics.json", metrics)
    entry = {
        "stage": stage,
        "output_dir": str(getattr(recipe, "output_dir", folder)),
        "hub_repo_id": getattr(recipe, "hub_model_id", None) or getattr(recipe, "hub_dataset_id", None),
        "recipe_path": recipe.origin.path,
        "recipe": resolved,
        "command": launch_command(stage, recipe),
        "versions": library_versions(),
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    lineage = [*read_lineage(parent), entry]
    write_json(folder / "lineage.json", {"stages": lineage})
    return lineage


def finish(
    tmp: Path, *, stage: str, recipe: Any, metrics: dict, parent: str | None, card: dict[str, Any]
) -> None:
    """Write recipe.yaml, metrics.json, lineage.json and the README.md card (main process only)."""
    from accelerate import PartialState

    from .cards import dataset_repo_ids, render_model_card

    if not PartialState().is_main_process:
        return
    if "datasets" not in card:
        sources = [*getattr(recipe, "datasets", []), *getattr(recipe, "replay_datasets", [])]
        card = {
            **card,
            "datasets": dataset_repo_ids([s.path for s in sources], getattr(recipe, "card_datasets", [])),
        }
    # eval_before.json only serves a resume; training_args.bin is a pickle that recipe.yaml replaces
    for leftover in ("eval_before.json", "training_args.bin"):
        (tmp / leftover).unlink(missing_ok=True)
    lineage = write_run_files(tmp, stage=stage, recipe=recipe, metrics=metrics, parent=parent)
    text = render_model_card(stage=stage, lineage=lineage, parent=parent, **card)
    (tmp / "README.md").write_text(text, encoding="utf-8")
