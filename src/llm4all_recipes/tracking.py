"""Experiment trackers (`report_to`): the same names as transformers' `report_to` (tensorboard, wandb, mlflow,
trackio, ...). Every stage with a `report_to` refuses a tracker that is not installed before any model loads
(`check_trackers`); the stages that do not train with a Trainer (compress, feature-distill) log through
accelerate's tracker API (`Trackers`). The training stages log through the Trainer itself."""

from pathlib import Path
from typing import Any

from .errors import RecipeError


def tracker_names(report_to: Any) -> list[str]:
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    return [n for n in names if n not in ("none", "")]


# report_to name -> (transformers' availability check, the package to install)
TRACKERS = {
    "tensorboard": ("is_tensorboard_available", "tensorboard"),
    "wandb": ("is_wandb_available", "wandb"),
    "mlflow": ("is_mlflow_available", "mlflow"),
    "trackio": ("is_trackio_available", "trackio"),
    "comet_ml": ("is_comet_available", "comet_ml"),
    "neptune": ("is_neptune_available", "neptune"),
    "clearml": ("is_clearml_available", "clearml"),
    "dvclive": ("is_dvclive_available", "dvclive"),
    "swanlab": ("is_swanlab_available", "swanlab"),
    "codecarbon": ("is_codecarbon_available", "codecarbon"),
    "azure_ml": ("is_azureml_available", "azureml-core"),
}


def check_trackers(report_to) -> None:
    """A tracker named in report_to must be installed: say which package, before any model loads."""
    from transformers import integrations

    for name in tracker_names(report_to):
        if name in TRACKERS and not getattr(integrations, TRACKERS[name][0])():
            raise RecipeError(
                f"{name} is not installed: pip install {TRACKERS[name][1]} (or drop it from report_to)", key="report_to"
            )


def _accelerator(names: list[str], folder: Path):
    from accelerate import Accelerator

    return Accelerator(log_with=names, project_dir=str(folder))


class Trackers:
    """`log(values, step)` to every tracker of the recipe (nothing when report_to is none); `close()` at the end.
    Runs go under `<folder>/runs` for the file-based trackers (tensorboard)."""

    def __init__(self, recipe: Any, stage: str, folder: Path):
        from .resolved import resolved_recipe

        names = tracker_names(getattr(recipe, "report_to", None))
        self.accelerator = _accelerator(names, Path(folder) / "runs") if names else None
        if self.accelerator is not None:
            config = {k: v for k, v in resolved_recipe(recipe).items() if isinstance(v, int | float | str | bool)}
            self.accelerator.init_trackers(getattr(recipe, "run_name", None) or f"llm4all-{stage}", config=config)

    def log(self, values: dict[str, float], step: int | None = None) -> None:
        if self.accelerator is not None:
            self.accelerator.log(values, step=step)

    def log_block(self, report: Any) -> None:
        """A distilled block's held-out loss along its steps (feature distillation)."""
        for step, loss in report.history:
            self.log({f"block_{report.layer}/held_out_loss": loss}, step=step)

    def log_perplexities(self, before: dict, after: dict) -> None:
        """Held-out perplexity of each eval set before (step 0) and after (step 1) the stage."""
        for step, values in enumerate((before, after)):
            self.log({f"{label}/perplexity": v["perplexity"] for label, v in values.items()}, step=step)

    def close(self) -> None:
        if self.accelerator is not None:
            self.accelerator.end_training()
