"""Experiment trackers (`report_to`) for the stages that do not train with a Trainer (compress,
feature-distill): the same names as transformers' `report_to` (tensorboard, wandb, mlflow, trackio, ...), sent
through accelerate's tracker API. The training stages log through the Trainer itself."""

from pathlib import Path
from typing import Any


def tracker_names(report_to: Any) -> list[str]:
    names = [report_to] if isinstance(report_to, str) else list(report_to or [])
    return [n for n in names if n not in ("none", "")]


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
            config = {
                k: v for k, v in resolved_recipe(recipe).items() if isinstance(v, int | float | str | bool)
            }
            self.accelerator.init_trackers(
                getattr(recipe, "run_name", None) or f"llm4all-{stage}", config=config
            )

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
