"""Run stage recipes in order, each reading the previous one's output; finished steps are skipped.

llm4all pipeline --config recipes/tiny-llama/pipeline.yaml [--force true]
llm4all demo        # the pipeline of recipes/tiny-llama/, offline
"""

import json
import os
import time
from pathlib import Path

from ..configs import PipelineRecipe, parse_recipe
from . import runner


def run(recipe: PipelineRecipe, callbacks=None):
    # 1. Every step's recipe is checked before anything runs (outputs of earlier steps may not exist yet).
    planned = [(step, parse_recipe(step.stage, step.argv(), static=True)) for step in recipe.steps]
    if recipe.dry_run:
        for step, parsed in planned:
            state = "done" if os.path.isdir(parsed.output_dir) else "to run"
            print(f"{step.stage:<16} {step.recipe:<50} -> {parsed.output_dir} ({state})")
        return []

    # 2. Run the unfinished ones (all with force), in order, in this process.
    rows = []
    for step, parsed in planned:
        if os.path.isdir(parsed.output_dir) and not recipe.force:
            rows.append(_row(step.stage, parsed.output_dir, "skipped", 0.0))
            continue
        argv = step.argv() + (["--overwrite_output_dir", "true"] if recipe.force else [])
        stage_recipe = parse_recipe(step.stage, argv)
        start = time.perf_counter()
        runner(step.stage)(stage_recipe)
        rows.append(_row(step.stage, stage_recipe.output_dir, "ran", time.perf_counter() - start))
    print_summary(rows)
    return rows


def _row(stage: str, output_dir: str, status: str, seconds: float) -> dict:
    path = Path(output_dir) / "metrics.json"
    metrics = json.loads(path.read_text()) if path.is_file() else {}
    ppl = {label: v["perplexity"] for label, v in metrics.get("eval", {}).items() if "perplexity" in v}
    return {
        "stage": stage,
        "output_dir": output_dir,
        "status": status,
        "seconds": round(seconds, 1),
        "parameters": metrics.get("parameters"),
        "perplexity": ppl,
    }


def print_summary(rows: list[dict]) -> None:
    print("\n| stage | status | time (s) | parameters | perplexity | output |")
    print("|---|---|---:|---:|---|---|")
    for r in rows:
        ppl = ", ".join(f"{k} {v:.2f}" for k, v in r["perplexity"].items()) or "-"
        params = f"{r['parameters']:,}" if r["parameters"] else "-"
        print(f"| {r['stage']} | {r['status']} | {r['seconds']} | {params} | {ppl} | {r['output_dir']} |")
