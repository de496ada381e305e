"""Typed recipes: one dataclass per stage, parsed with TRL's parser (`trl.TrlParser`).

A recipe is `recipes/<model>/<stage>/<variant>.yaml`. Its top-level keys are the fields of the stage's
dataclass (each with `help` metadata: `llm4all <stage> --help` lists them all); `--key value` on the command
line overrides a top-level key. Each dataclass checks its values (`check`) before any model is loaded; reading
YAML and the command line is parsing.py's job (`parse_recipe`).

One module per stage family: common (the shared argument groups), trainer (TrainerArgs: every TRL-trainer
key), training (sft, kd, cpt, tiny-model), data (cache-teacher, select, generate, build-dataset), speech
(transcribe, speech-sft), evaluation (eval), compression (compress, feature-distill, prune, export-dense,
convert), release (merge, publish); the value checks they share are in checks. Here: `RECIPES` (stage name ->
recipe class) and the pipeline recipe, which runs stage recipes and checks their stages against `RECIPES` (so they
live together).
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import paths
from ..data.templates import has_generation_markers, read_chat_template
from ..errors import RecipeError
from ..fields import arg
from .checks import check_output_not_an_input
from .compression import CompressRecipe, ConvertRecipe, ExportDenseRecipe, FeatureDistillRecipe, PruneRecipe
from .data import BuildDatasetRecipe, CacheTeacherRecipe, GenerateRecipe, SelectRecipe
from .evaluation import EvalRecipe
from .release import MergeRecipe, PublishRecipe
from .speech import SpeechSFTRecipe, TranscribeRecipe
from .training import CPTRecipe, KDRecipe, SFTRecipe, TinyModelRecipe


@dataclass
class PipelineStep:
    """One stage of a pipeline: a stage recipe, optionally with overrides."""

    recipe: str = arg(
        help="Path of a stage recipe (recipes/<model>/<stage>/<variant>.yaml); its folder names the stage."
    )
    overrides: dict[str, Any] = arg(factory=dict, help="Top-level keys overridden for this step (as --key value).")
    step_name: str | None = arg(None, help="Name of the step (for --from); default <stage>:<variant>.")

    @property
    def stage(self) -> str:
        return paths.stage_of(self.recipe)

    @property
    def name(self) -> str:
        return self.step_name or f"{self.stage}:{Path(self.recipe).stem}"

    def argv(self) -> list[str]:
        out = ["--config", self.recipe]
        for key, value in self.overrides.items():
            out += [f"--{key}", value if isinstance(value, str) else json.dumps(value)]
        return out


@dataclass
class PipelineRecipe:
    """`llm4all pipeline`: stage recipes run in order, each reading the previous one's output."""

    steps: list[PipelineStep] = arg(factory=list, help="The stage recipes, in order.")
    force: bool = arg(False, help="Rerun every step, replacing finished outputs (default: skip finished steps).")
    from_step: str | None = arg(
        None, help="Rerun from this step on (a step name such as kd:heal, or a stage); also `--from`."
    )
    dry_run: bool = arg(False, help="Only check every step's recipe and print what would run.")

    def __post_init__(self):
        self.steps = [s if isinstance(s, PipelineStep) else PipelineStep(**s) for s in self.steps]

    def check(self, static: bool) -> None:
        if not self.steps:
            raise RecipeError("required: at least one step", key="steps")
        for i, step in enumerate(self.steps):
            if step.stage not in RECIPES or step.stage == "pipeline":
                raise RecipeError(
                    f"cannot tell the stage of {step.recipe} (its folder must be one of: "
                    f"{', '.join(s for s in RECIPES if s != 'pipeline')})",
                    key=f"steps[{i}].recipe",
                )
            if not os.path.isfile(step.recipe):
                raise RecipeError(f"no such recipe file: {step.recipe}", key=f"steps[{i}].recipe")
            if step.name in [s.name for s in self.steps[:i]]:
                raise RecipeError(f"two steps are named {step.name!r}: give one a `step_name`", key=f"steps[{i}]")


RECIPES: dict[str, type] = {
    "build-dataset": BuildDatasetRecipe,
    "transcribe": TranscribeRecipe,
    "speech-sft": SpeechSFTRecipe,
    "tiny-model": TinyModelRecipe,
    "compress": CompressRecipe,
    "feature-distill": FeatureDistillRecipe,
    "export-dense": ExportDenseRecipe,
    "convert": ConvertRecipe,
    "prune": PruneRecipe,
    "merge": MergeRecipe,
    "cache-teacher": CacheTeacherRecipe,
    "kd": KDRecipe,
    "select": SelectRecipe,
    "generate": GenerateRecipe,
    "cpt": CPTRecipe,
    "sft": SFTRecipe,
    "eval": EvalRecipe,
    "publish": PublishRecipe,
    "pipeline": PipelineRecipe,
}


__all__ = [
    "RECIPES",
    "BuildDatasetRecipe",
    "CPTRecipe",
    "CacheTeacherRecipe",
    "CompressRecipe",
    "ConvertRecipe",
    "EvalRecipe",
    "ExportDenseRecipe",
    "FeatureDistillRecipe",
    "GenerateRecipe",
    "KDRecipe",
    "MergeRecipe",
    "PipelineRecipe",
    "PipelineStep",
    "PruneRecipe",
    "PublishRecipe",
    "SFTRecipe",
    "SelectRecipe",
    "TinyModelRecipe",
    "TranscribeRecipe",
    "check_output_not_an_input",
    "has_generation_markers",
    "read_chat_template",
]
