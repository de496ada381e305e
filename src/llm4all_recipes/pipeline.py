"""Run stage recipes in order, in one process; finished steps are skipped.

    llm4all pipeline --config recipes/tiny-llama/pipeline.yaml [--force true] [--from kd]
    llm4all demo        # the pipeline of recipes/tiny-llama/, offline

Steps chain through their paths: each recipe reads earlier steps' default output_dir (outputs/<model>/<stage>/
<variant>); a step's `overrides` can re-point them. Every step's recipe is checked before anything runs. A step
is finished when its output_dir exists (publish steps: when the local hub copy is newer than its source).
`--force true` reruns every step; `--from NAME` reruns that step (a name, or a stage) and every later one.
The run ends with one row per step: parameters, old/new-domain perplexity, ROUGE (WER/CER of a transcription),
wall time, published repo.
"""

import json
import os
import time
from pathlib import Path

from .configs import PipelineRecipe
from .errors import RecipeError
from .hub import local_repo_dir, resolve_target
from .parsing import parse_recipe
from .paths import PLANNED_OUTPUTS
from .stages import STAGES


def destination(recipe) -> str | None:
    """Where a publish step (or a stage's push_to_hub) puts the output, when it is the local hub folder."""
    if hasattr(recipe, "repo_id"):  # publish stage
        target, repo, kind = recipe.target, recipe.repo_id, recipe.repo_type
        kind = (
            "dataset"
            if kind == "dataset" or (kind == "auto" and (Path(recipe.path) / "dataset_dict.json").exists())
            else "model"
        )
    elif getattr(recipe, "push_to_hub", False):
        target, repo = (
            recipe.hub_target,
            getattr(recipe, "hub_model_id", None) or getattr(recipe, "hub_dataset_id", None),
        )
        kind = "dataset" if hasattr(recipe, "hub_dataset_id") and recipe.hub_dataset_id else "model"
    else:
        return None
    if resolve_target(target) != "local":
        return f"https://huggingface.co/{'datasets/' if kind == 'dataset' else ''}{repo}"
    return str(local_repo_dir(repo, kind))


def is_done(recipe) -> bool:
    if hasattr(recipe, "repo_id"):
        dest = destination(recipe)
        return bool(dest) and Path(dest).is_dir() and Path(dest).stat().st_mtime >= Path(recipe.path).stat().st_mtime
    return os.path.isdir(recipe.output_dir)


def run(recipe: PipelineRecipe, callbacks=None):
    # 1. Every step's recipe is checked first (static: outputs of earlier steps may not exist yet).
    planned, outputs = [], set()
    for step in recipe.steps:
        token = PLANNED_OUTPUTS.set(frozenset(outputs))
        try:
            parsed = parse_recipe(step.stage, step.argv(), static=True)
        finally:
            PLANNED_OUTPUTS.reset(token)
        planned.append((step, parsed))
        if getattr(parsed, "output_dir", None):
            outputs.add(os.path.abspath(parsed.output_dir))
    start_at = 0
    if recipe.from_step:
        names = [step.name for step, _ in planned]
        hits = [i for i, (step, _) in enumerate(planned) if recipe.from_step in (step.name, step.stage)]
        if not hits:
            raise RecipeError(f"no step named {recipe.from_step!r} (steps: {', '.join(names)})", key="from_step")
        start_at = hits[0]
    if recipe.dry_run:
        for i, (step, parsed) in enumerate(planned):
            state = "to run" if recipe.force or (i >= start_at and recipe.from_step) or not is_done(parsed) else "done"
            print(f"{step.name:<32} {step.recipe:<52} {state}")
        return []

    # 2. Run what is not finished (or forced), in order, in this process.
    rows = []
    for i, (step, parsed) in enumerate(planned):
        rerun = recipe.force or (recipe.from_step is not None and i >= start_at)
        if is_done(parsed) and not rerun:
            rows.append(_row(step, parsed, "skipped", 0.0))
            continue
        argv = step.argv()
        if rerun and hasattr(parsed, "overwrite_output_dir"):
            argv += ["--overwrite_output_dir", "true"]
        stage_recipe = parse_recipe(step.stage, argv)
        start = time.perf_counter()
        try:
            STAGES[step.stage].run(stage_recipe)
        except RecipeError as err:
            raise stage_recipe.origin.locate(err) from None
        rows.append(_row(step, stage_recipe, "ran", time.perf_counter() - start))
    print_summary(rows)
    return rows


def _row(step, recipe, status: str, seconds: float) -> dict:
    folder = Path(getattr(recipe, "output_dir", None) or "")
    metrics_file = folder / "metrics.json"
    metrics = (
        json.loads(metrics_file.read_text()) if getattr(recipe, "output_dir", None) and metrics_file.is_file() else {}
    )
    ppl = {k: v["perplexity"] for k, v in metrics.get("eval", {}).items() if isinstance(v, dict) and "perplexity" in v}
    ppl |= metrics.get("perplexity", {}).get("this model", {})
    rouge = {}
    for task in ("simsamu", "meetings"):
        scores = metrics.get(task)
        if isinstance(scores, dict):  # an eval's task scores (build-dataset reports counts under these names)
            rouge |= {f"{task} {k}": v for k, v in scores.items() if k.startswith("rouge")}
    asr = (metrics.get("asr") or {}).get("overall") or {}
    rouge |= {k.upper(): asr[k] for k in ("wer", "cer") if k in asr}  # transcribe
    for c in metrics.get("comparison") or []:  # a speech-text model's eval, beside the cascade
        rouge[f"{c['task']} {c['metric']} (cascade {c['cascade']:.3g})"] = c["speech-llm"]
    blocks = metrics.get("blocks") or []
    if metrics.get("train", {}).get("kept") == "start" or (blocks and all(b["best_step"] == 0 for b in blocks)):
        status += " — UNCHANGED: no step improved the held-out loss"
    return {
        "step": step.name,
        "status": status,
        "seconds": round(seconds, 1),
        "parameters": metrics.get("parameters"),
        "perplexity": ppl,
        "rouge": rouge,
        "output": str(folder) if getattr(recipe, "output_dir", None) else "",
        "published": destination(recipe) or "",
    }


def print_summary(rows: list[dict]) -> None:
    print("\n| step | status | time (s) | parameters | perplexity old / new | ROUGE / WER | output | published |")
    print("|---|---|---:|---:|---|---|---|---|")
    for r in rows:
        old = next((v for k, v in r["perplexity"].items() if k.startswith("old")), None)
        new = next((v for k, v in r["perplexity"].items() if k.startswith("new")), None)
        ppl = (
            f"{old:.1f} / {new:.1f}"
            if old and new
            else ", ".join(f"{k} {v:.1f}" for k, v in r["perplexity"].items()) or "-"
        )
        rouge = ", ".join(f"{k} {v:.3f}" for k, v in r["rouge"].items()) or "-"
        params = f"{r['parameters']:,}" if r["parameters"] else "-"
        print(
            f"| {r['step']} | {r['status']} | {r['seconds']} | {params} | {ppl} | {rouge} | {r['output'] or '-'} | "
            f"{r['published'] or '-'} |"
        )
