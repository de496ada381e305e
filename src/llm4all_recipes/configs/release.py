"""Recipes of the stages that release checkpoints: merge (weight averaging) and publish (to the Hub)."""

import typing
from dataclasses import dataclass
from typing import Literal

from ..errors import RecipeError
from ..fields import arg
from ..paths import check_path
from .checks import check_hub, check_model, check_output_dir
from .common import HubArgs, StageArgs


@dataclass
class MergeRecipe(StageArgs):
    """`llm4all merge`: a weighted average of checkpoints of one architecture (WiSE-FT with the base: two models)."""

    COLUMNS: typing.ClassVar[tuple[str, ...]] = ()
    models: list[str] = arg(
        factory=list,
        help="Checkpoints to merge (Hub ids or folders), same architecture and, for low-rank ones, the same ranks. "
        "The first is the reference: its tokenizer, config and lineage are kept.",
    )
    method: Literal["linear", "slerp", "task_arithmetic"] = arg(
        "linear",
        help="linear: Σ wᵢ θᵢ; slerp: spherical interpolation of two models, t = weights[1]; task_arithmetic: "
        "θ₀ + Σᵢ wᵢ (θᵢ − θ₀), the first model being the base (its weight unused, the others any scale).",
    )
    weights: list[float] | None = arg(
        None,
        help="One weight per model. linear/slerp: >= 0, summing to 1 (default: equal); two models: [1 - α, α] is "
        "WiSE-FT. task_arithmetic: the scale of each task vector (default 1 each).",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = arg(
        "auto", help="Dtype the models are loaded and merged in (the average is computed in float32)."
    )
    hub_model_id: str | None = arg(None, help="<namespace>/<name> of the published checkpoint.")

    def check(self, static: bool) -> None:
        if len(self.models) < 2:
            raise RecipeError("required: at least two checkpoints to merge", key="models")
        for i, model in enumerate(self.models):
            check_model(model, static, "a checkpoint to merge", key=f"models[{i}]")
        if self.weights is None:
            n = len(self.models)
            self.weights = [0.0] + [1.0] * (n - 1) if self.method == "task_arithmetic" else [1 / n] * n
        if len(self.weights) != len(self.models):
            raise RecipeError(f"{len(self.weights)} weights for {len(self.models)} models", key="weights")
        if self.method == "slerp" and len(self.models) != 2:
            raise RecipeError(f"slerp merges exactly two models, got {len(self.models)}", key="models")
        if self.method != "task_arithmetic" and (any(w < 0 for w in self.weights) or abs(sum(self.weights) - 1) > 1e-6):
            raise RecipeError(f"weights must be >= 0 and sum to 1 (got {self.weights})", key="weights")
        check_output_dir(self, static)
        check_hub(self.push_to_hub, self.hub_model_id, "hub_model_id")


@dataclass
class PublishRecipe(HubArgs):
    """`llm4all publish`: push a stage's output folder to the Hub (or the local hub folder)."""

    COLUMNS: typing.ClassVar[tuple[str, ...]] = ()

    path: str | None = arg(None, help="The folder to publish: a stage's output_dir.")
    repo_id: str | None = arg(None, help="<namespace>/<name> of the Hub repo.")
    repo_type: Literal["auto", "model", "dataset"] = arg(
        "auto", help="auto: dataset for a save_to_disk folder, model otherwise."
    )
    private: bool | None = arg(
        None,
        help="Visibility. Unset: a new repo is private (release deliberately), an existing one keeps its "
        "visibility; true/false sets it (an existing repo's too).",
    )
    overwrite: bool = arg(False, help="Allow pushing to an existing repo or revision.")
    target: Literal["auto", "hub", "local"] = arg("auto", help="Same as hub_target in stage recipes.")
    revision: str | None = arg(
        None, help="A branch to push to (created from main); refused if it exists unless overwrite."
    )
    commit_message: str | None = arg(None, help="Commit message on the Hub.")
    dry_run: bool = arg(False, help="Print what would be published, and where, then exit.")

    def check(self, static: bool) -> None:
        if not self.path:
            raise RecipeError("required: the folder to publish", key="path")
        check_path(self.path, "path", static)
        check_hub(True, self.repo_id, "repo_id")
