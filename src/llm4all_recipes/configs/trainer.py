"""The keys of every stage that trains with a TRL trainer (`TrainerArgs`: all of `trl.SFTConfig` included), with
defaults that suit a laptop as well as a GPU node."""

import typing
from dataclasses import dataclass
from typing import Literal

from trl import SFTConfig

from ..errors import RecipeError
from ..fields import arg
from ..tracking import check_trackers
from .checks import _positive, check_hub, check_mixture, check_output_dir
from .common import HubArgs, MixtureArgs, RunArgs


def _cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def _has_accelerator() -> bool:
    import torch

    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or torch.backends.mps.is_available() or bool(xpu and xpu.is_available())


@dataclass
class TrainerArgs(MixtureArgs, RunArgs, HubArgs, SFTConfig):
    """Keys shared by every stage that trains with a TRL trainer (all of `trl.SFTConfig` included)."""

    COLUMNS: typing.ClassVar[tuple[str, ...]] = ()

    # Defaults that differ from TRL's, for sane runs on a laptop as on a GPU node.
    bf16: bool | None = arg(None, help="bf16 mixed precision. Default: on where a CUDA GPU supports it, off on CPU.")
    gradient_checkpointing: bool | None = arg(
        None, help="Deprecated alias of activation_checkpointing (kept for old recipes)."
    )
    activation_checkpointing: bool | None = arg(
        False, help="Recompute activations in the backward pass (saves memory on big models)."
    )
    precision: Literal["auto", "fp32-master", "bf16-stochastic", "bf16"] = arg(
        "auto",
        help="How a model loaded in bf16 (dtype) trains (docs/PRECISION.md): fp32-master (float32 weights and AdamW "
        "states, bf16 autocast, saved back in dtype), bf16-stochastic (bf16 weights, AdamW with stochastic rounding: "
        "small updates are not rounded away), bf16 (plain AdamW on bf16 weights: most updates at lr 1e-5 are lost). "
        "auto: fp32-master when its weights, gradients and AdamW states take at most 70%% of the device's memory, "
        "else bf16-stochastic. A float32 dtype trains in float32 (with bf16 autocast where bf16 is on).",
    )
    save_total_limit: int | None = arg(2, help="Number of checkpoint-N folders kept for resume.")
    use_cpu: bool | None = arg(
        None,
        help="Train on the CPU. Default: true when no GPU is available (which also lets torchrun run several "
        "gloo CPU processes; transformers does not set up CPU distribution otherwise).",
    )

    def __post_init__(self):
        if self.bf16 is None:
            self.bf16 = (not self.fp16) and _cuda_bf16()
        if self.use_cpu is None:
            self.use_cpu = not _has_accelerator()
        super().__post_init__()

    def check(self, static: bool) -> None:
        """Value checks run before any model is loaded (`static`: for `validate`, see `check_path`)."""
        self.check_data(static)
        check_output_dir(self, static)
        check_hub(self.push_to_hub, self.hub_model_id, "hub_model_id")
        _positive(self, "learning_rate", "max_length", "mixture_size", "per_device_train_batch_size")
        self.check_length()
        check_trackers(self.report_to)

    def check_data(self, static: bool) -> None:
        check_mixture(self, static)

    def check_length(self) -> None:
        if self.max_steps == 0 or self.max_steps < -1:
            raise RecipeError(
                f"a positive number of optimizer steps, or -1 (the default) to train for "
                f"num_train_epochs; got {self.max_steps}",
                key="max_steps",
            )
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise RecipeError(
                f"nothing to train: max_steps is {self.max_steps} and num_train_epochs {self.num_train_epochs} (set "
                "one > 0)",
                key="num_train_epochs",
            )
