"""Run folders: where every stage writes, and the rules that keep a user's data safe.

    <output_dir>/            model + tokenizer (+ chat_template.jinja), or a dataset
        recipe.yaml          the recipe as run (YAML keys with command-line overrides applied)
        metrics.json         what the stage measured
        lineage.json         every ancestor stage, then this one: recipe, command, library versions
        README.md            the model or dataset card
        checkpoint-N/        trainers only, for resume

A stage writes into `<output_dir>.tmp` and renames it at the very end, so a crash never leaves a half
output that looks finished. The rules (`staged_output`):

- **Paths**: an `output_dir` that is empty, `.`, the working directory, the checkout or any of their parents,
  a folder of `.git`, or an existing file is refused (`check_output_path`, also run when a recipe is parsed).
- **One writer**: `<output_dir>.tmp/.llm4all.lock` is locked (`flock`) by the process that writes; another run
  into the same output_dir is refused, naming the pid and host. The OS releases the lock when its process dies
  (even by kill -9): the next run takes the folder over, with a warning.
- **Only our own data is deleted**: `<output_dir>.tmp` carries `.llm4all-run.json` (stage + fingerprint of the
  recipe). A `.tmp` without it is not ours and is never touched; an existing `output_dir` is replaced only with
  `overwrite_output_dir` *and* when it is an llm4all output (it has `lineage.json`), re-checked at the rename.
- **Resume only what belongs to this recipe**: stages that resume (trainers, feature distillation) continue a
  `.tmp` only when its fingerprint equals this recipe's (run-only keys such as `overwrite_output_dir` or
  `logging_steps` aside); another recipe's interrupted run is refused with a one-line error. Stages that do
  not resume start from an emptied `.tmp`.
- Small state files are written atomically (`write_json`, `atomic_write`: a temporary file, then `os.replace`).
"""

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .errors import RecipeError
from .paths import check_output_path, tmp_dir, write_json
from .resolved import is_secret, resolved_recipe

if TYPE_CHECKING:
    from .cards import CardInfo

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
MARKER = ".llm4all-run.json"  # in <output_dir>.tmp: the stage and the fingerprint of the recipe writing it
LOCK = ".llm4all.lock"  # in <output_dir>.tmp: flock'ed by the one process writing it (pid, host inside)
# Keys that change how a run is launched, logged or published, not what it computes: a resume may change them.
RUN_ONLY_KEYS = frozenset(
    {
        "output_dir",
        "overwrite_output_dir",
        "dry_run",
        "resume_from_checkpoint",
        "push_to_hub",
        "hub_model_id",
        "hub_dataset_id",
        "hub_overwrite",
        "hub_target",
        "hub_private_repo",
        "hub_strategy",
        "card_datasets",
        "report_to",
        "run_name",
        "logging_steps",
        "logging_strategy",
        "logging_first_step",
        "logging_dir",
        "disable_tqdm",
        "log_level",
        "save_total_limit",
        "dataloader_num_workers",
        "eval_on_start",
    }
)
# <output_dir>.tmp -> (recipe, repo type, the dict the stage returns): what `finish` asks `staged_output` to publish
# once the folder is in place (the repo lands in that dict's "published")
_TO_PUBLISH: dict[str, tuple[Any, str, dict]] = {}
_HELD_LOCKS: dict[str, int] = {}  # lock path -> open file descriptor (held for as long as the run writes)


def is_run_output(folder: Path) -> bool:
    """A finished llm4all output (every stage writes lineage.json)."""
    return (folder / "lineage.json").is_file()


# --------------------------------------------------------------------------- fingerprint and lock
def fingerprint(recipe: Any, stage: str) -> tuple[str, dict[str, Any]]:
    """(hash, values) of what a run computes: its explicit recipe keys that differ from their defaults, run-only
    keys aside. A resume must match it exactly."""
    import dataclasses

    defaults = {f.name: f.default for f in dataclasses.fields(recipe) if f.default is not dataclasses.MISSING}
    values = {
        k: v for k, v in resolved_recipe(recipe).items() if k not in RUN_ONLY_KEYS and defaults.get(k, object()) != v
    }
    text = json.dumps({"stage": stage, "recipe": values}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16], values


def _diff(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new), key=lambda k: (k not in new, k))
    parts = [
        f"{k}: {old.get(k, '(default)')!r} -> {new.get(k, '(default)')!r}" for k in keys if old.get(k) != new.get(k)
    ]
    return "; ".join(parts[:4]) + (f"; and {len(parts) - 4} more" if len(parts) > 4 else "")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(folder: Path) -> None:
    """Hold `folder/.llm4all.lock` for this process (flock: released by the OS when the process dies)."""
    import fcntl

    path = folder / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RecipeError(f"cannot write in {folder}: {exc.strerror}", key="output_dir") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 4096).decode("utf-8", "replace")
        os.close(fd)
        try:
            who = json.loads(holder)
            who = f"pid {who['pid']} on {who['host']}, since {who['started']}: {who.get('command', '')}"
        except (ValueError, KeyError, TypeError):
            who = "another process"
        raise RecipeError(
            f"another run is writing {folder} ({who}); wait for it to finish, or choose another output_dir",
            key="output_dir",
        ) from None
    if not path.exists() or os.stat(path).st_ino != os.fstat(fd).st_ino:  # its holder finished and renamed it meanwhile
        os.close(fd)
        raise RecipeError(
            f"another run just finished writing {folder}; run again to see what is there", key="output_dir"
        )
    previous = os.read(fd, 4096).decode("utf-8", "replace")
    with contextlib.suppress(ValueError, KeyError, TypeError):
        old = json.loads(previous)
        if old["pid"] != os.getpid():
            gone = (
                "no longer running"
                if old["host"] != socket.gethostname() or not _process_alive(old["pid"])
                else "not holding it"
            )
            logger.warning("taking over %s from pid %s on %s (%s)", folder, old["pid"], old["host"], gone)
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(redact(sys.argv)),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    _HELD_LOCKS[str(path)] = fd


def release_lock(folder: Path, moved_to: Path | None = None) -> None:
    """Let go of the lock taken on `folder` (now at `moved_to` if the folder was renamed) and remove its file."""
    fd = _HELD_LOCKS.pop(str(folder / LOCK), None)
    if fd is not None:
        with contextlib.suppress(FileNotFoundError):
            ((moved_to or folder) / LOCK).unlink()
        os.close(fd)


# --------------------------------------------------------------------------- the staged output folder
def _empty(folder: Path) -> None:
    """Remove a run folder's content, except its lock (which this process holds)."""
    for child in folder.iterdir():
        if child.name == LOCK:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _has_work(folder: Path) -> bool:
    return folder.is_dir() and any(c.name not in (LOCK, MARKER) for c in folder.iterdir())


def claim(recipe: Any, stage: str, *, resume: bool) -> Path:
    """Make `<output_dir>.tmp` this run's (main process): checks, lock, fingerprint. Returns the folder."""
    final, tmp = Path(recipe.output_dir), tmp_dir(recipe.output_dir)
    overwrite = bool(getattr(recipe, "overwrite_output_dir", False))
    check_output_path(recipe.output_dir)
    if final.exists() and not overwrite:
        raise RecipeError(
            f"{final} already holds a finished run; pass --overwrite_output_dir true to replace it", key="output_dir"
        )
    if final.exists() and not is_run_output(final):
        raise RecipeError(
            f"{final} exists and is not an llm4all output (no lineage.json): it is never replaced; move it "
            "away or choose another output_dir",
            key="output_dir",
        )
    if tmp.exists() and not (tmp / MARKER).exists() and not (tmp / LOCK).exists() and any(tmp.iterdir()):
        raise RecipeError(
            f"{tmp} exists and was not made by llm4all (no {MARKER}): it is never touched; move it away "
            "or choose another output_dir",
            key="output_dir",
        )
    try:
        tmp.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RecipeError(f"cannot create {tmp}: {exc.strerror}", key="output_dir") from None
    acquire_lock(tmp)
    digest, values = fingerprint(recipe, stage)
    marker = tmp / MARKER
    if marker.exists():
        try:
            previous = json.loads(marker.read_text(encoding="utf-8"))
        except ValueError:
            previous = {}
        same = previous.get("fingerprint") == digest and previous.get("stage") == stage
        if resume and _has_work(tmp) and not same and not overwrite:
            release_lock(tmp)
            what = (
                _diff(previous.get("recipe", {}), values)
                if previous.get("stage") == stage
                else f"a {previous.get('stage')} run"
            )
            raise RecipeError(
                f"{tmp} holds an interrupted run of another recipe ({what}); rerun that recipe to resume it, or "
                "pass --overwrite_output_dir true to discard it and start over",
                key="output_dir",
            )
        if _has_work(tmp) and (overwrite or not resume):
            logger.warning(
                "%s: discarding what an interrupted %s run left there", tmp, previous.get("stage", "llm4all")
            )
            _empty(tmp)
        elif _has_work(tmp):
            logger.warning("%s: resuming the interrupted run of this recipe", tmp)
    write_json(marker, {"stage": stage, "fingerprint": digest, "recipe": values})
    return tmp


def _replace(tmp: Path, final: Path, overwrite: bool) -> None:
    """Rename the finished `.tmp` into place; an existing output is replaced only if allowed (checked again now)."""
    if not final.exists():
        os.replace(tmp, final)
        (final / MARKER).unlink()
        return
    if not overwrite or not is_run_output(final):
        why = "no --overwrite_output_dir" if not overwrite else "it is not an llm4all output"
        raise RecipeError(
            f"{final} appeared while this run was writing ({why}): the finished run is kept in {tmp}; move "
            f"{final} away and rename {tmp} to {final}",
            key="output_dir",
        )
    aside = final.with_name(f".{final.name}.replaced-{os.getpid()}")
    os.replace(final, aside)
    os.replace(tmp, final)
    (final / MARKER).unlink()
    shutil.rmtree(aside)


def _everyone(state, error: Exception | None) -> None:
    """Raise on every process the error the main process met (so no rank waits forever at a barrier)."""
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = [error]
        broadcast_object_list(box, from_process=0)
        error = box[0]
    if error is not None:
        raise error


@contextlib.contextmanager
def staged_output(recipe: Any, stage: str, *, resume: bool = False):
    """Yield `<output_dir>.tmp`, claimed for this run; on success rename it to `output_dir` (main process only),
    then publish it if `finish` / `finish_dataset` asked (the recipe's `push_to_hub`).

    `resume`: the stage continues an interrupted run of the same recipe from what it saved in the folder
    (checkpoint-N/, per-block states), and keeps that on error; otherwise the folder starts empty and is
    removed on error.
    """
    from accelerate import PartialState

    state = PartialState()
    final, tmp = Path(recipe.output_dir), tmp_dir(recipe.output_dir)
    error = None
    if state.is_main_process:
        try:
            claim(recipe, stage, resume=resume)
        except RecipeError as err:
            error = err
    _everyone(state, error)
    state.wait_for_everyone()
    try:
        yield tmp
    except BaseException:
        _TO_PUBLISH.pop(str(tmp), None)
        if state.is_main_process:
            if resume and _has_work(tmp):
                logger.error("run interrupted: %s kept; rerun the same command to resume from it", tmp)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
            release_lock(tmp)
        raise
    state.wait_for_everyone()
    error = None
    if state.is_main_process:
        try:
            _replace(tmp, final, bool(getattr(recipe, "overwrite_output_dir", False)))
        except RecipeError as err:
            error = err
        release_lock(tmp, moved_to=final if error is None else None)
        if error is None:
            logger.info("output written to %s", final)
    _everyone(state, error)
    state.wait_for_everyone()
    if (pending := _TO_PUBLISH.pop(str(tmp), None)) is not None:
        from .hub import publish_stage_output

        asked, repo_type, result = pending
        result["published"] = publish_stage_output(asked, repo_type)


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in TRACKED_LIBRARIES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def redact(argv: list[str]) -> list[str]:
    """Command-line values of secret keys (`--hub_token ...`) are never written anywhere."""
    out = list(argv)
    for i, a in enumerate(out):
        if a.startswith("--") and is_secret(a[2:].split("=", 1)[0]):
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


def read_lineage(model_path: str | None) -> list[dict[str, Any]]:
    """Ancestor stages of a model: its folder's lineage.json, or a root entry for a plain Hub/local model."""
    if not model_path:
        return []
    path = Path(model_path) / "lineage.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))["stages"]
    return [{"stage": "base", "model": model_path}]


def write_run_files(folder: Path, *, stage: str, recipe: Any, metrics: dict[str, Any], parent: str | None) -> list:
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


def finish(tmp: Path, *, stage: str, recipe: Any, metrics: dict, parent: str | None, card: "CardInfo") -> None:
    """Write recipe.yaml, metrics.json, lineage.json and the README.md card (main process only); once the folder
    is in place, `staged_output` publishes it and records where in `metrics["published"]`."""
    import dataclasses

    from accelerate import PartialState

    from .cards import dataset_repo_ids, render_model_card

    _TO_PUBLISH[str(tmp)] = (recipe, "model", metrics)
    if not PartialState().is_main_process:
        return
    card = dataclasses.replace(card)
    if card.model_name is None:
        card.model_name = getattr(recipe, "hub_model_id", None) or Path(recipe.output_dir).name
    if card.datasets is None:
        sources = [*getattr(recipe, "datasets", []), *getattr(recipe, "replay_datasets", [])]
        card.datasets = dataset_repo_ids([s.path for s in sources], getattr(recipe, "card_datasets", []))
    # eval_before.json only serves a resume; training_args.bin is a pickle that recipe.yaml replaces
    for leftover in ("eval_before.json", "training_args.bin"):
        (tmp / leftover).unlink(missing_ok=True)
    lineage = write_run_files(tmp, stage=stage, recipe=recipe, metrics=metrics, parent=parent)
    config = tmp / "config.json"  # a model whose code ships with it (low-rank) loads with trust_remote_code
    if config.is_file():
        from transformers.models.auto.modeling_auto import MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES

        from .speech.speech_llm import MODEL_TYPE as SPEECH_LLM_TYPE

        values = json.loads(config.read_text())
        if "auto_map" in values:
            card.load_kwargs = ", trust_remote_code=True"
        model_type = values.get("base_config", values).get("model_type")
        card.speech = model_type in MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES
        card.speech_llm = model_type == SPEECH_LLM_TYPE
    text = render_model_card(stage=stage, lineage=lineage, parent=parent, **vars(card))
    (tmp / "README.md").write_text(text, encoding="utf-8")


def finish_dataset(
    tmp: Path,
    *,
    stage: str,
    recipe: Any,
    dataset: Any,
    report: dict,
    facts: dict,
    metrics: dict | None = None,
    card_report: dict | None = None,
    parent: str | None = None,
    source: str | None = None,
) -> None:
    """A dataset stage's run files: recipe.yaml, metrics.json (`metrics`, default the stage's `report`), lineage.json
    and the dataset card (README.md: `facts` + the splits and skipped rows of `card_report`, default `report`).
    Once the folder is in place, `staged_output` publishes it and records where in `report["published"]`."""
    from .cards import render_dataset_card

    _TO_PUBLISH[str(tmp)] = (recipe, "dataset", report)
    lineage = write_run_files(
        tmp, stage=stage, recipe=recipe, metrics=report if metrics is None else metrics, parent=parent
    )
    card = render_dataset_card(
        recipe=recipe,
        dataset=dataset,
        report=report if card_report is None else card_report,
        lineage=lineage,
        facts=facts,
        source=source,
    )
    (tmp / "README.md").write_text(card, encoding="utf-8")
