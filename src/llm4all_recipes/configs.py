"""Typed recipes: one dataclass per stage, parsed with TRL's parser (`trl.TrlParser`).

A recipe is `recipes/<model>/<stage>/<variant>.yaml`. Its top-level keys are the fields of the stage's
dataclass below (each with `help` metadata: `llm4all <stage> --help` lists them all); `--key value` on
the command line overrides a top-level key. Each dataclass checks its values (`check`) before any model is
loaded; reading YAML and the command line is parsing.py's job (`parse_recipe`).
"""

import importlib.util
import json
import os
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from transformers import SchedulerType
from trl import SFTConfig

from . import paths
from .data.mixture import check_sources
from .errors import RecipeError
from .fields import DatasetSource, _to_sources, arg
from .paths import check_path


# --------------------------------------------------------------------------- dataset mixture
@dataclass
class MixtureArgs:
    datasets: list[DatasetSource] = arg(
        factory=list,
        help="Training mixture: a list of sources (path, name, split, columns, weight, repeat). Each source is "
        "shuffled (data_seed, else seed) before it is subsampled to its share.",
    )
    eval_datasets: list[DatasetSource] = arg(
        factory=list,
        help="Held-out sets, each used whole and reported under its own name. Never carved out of a "
        "training source: a source listed in both `datasets` and `eval_datasets` is an error.",
    )
    mixture_size: int | None = arg(
        None,
        help="Total size of the training mixture, in rows (chat stages) or tokens (text stages). Default: the "
        "largest total for which every non-repeated source can supply its share.",
    )

    def __post_init__(self):
        self.datasets = _to_sources(self.datasets)
        self.eval_datasets = _to_sources(self.eval_datasets)
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:
            parent()


# --------------------------------------------------------------------------- common keys
@dataclass
class RunArgs:
    overwrite_output_dir: bool = arg(
        False, help="Replace an existing output_dir (and restart an interrupted run) instead of failing."
    )
    dry_run: bool = arg(
        False,
        help="Print the resolved recipe, the token count and the number of steps, then exit (no model).",
    )


@dataclass
class HubArgs:
    """How a stage publishes its output when `push_to_hub: true` (through `hub.publish()`, after the stage)."""

    hub_overwrite: bool = arg(
        False,
        help="Allow pushing to an existing Hub repo / local hub folder (default: refuse, never overwrite silently).",
    )
    hub_target: Literal["auto", "hub", "local"] = arg(
        "auto",
        help="Where push_to_hub publishes: the Hub, the local hub folder (./hub or $LLM4ALL_HUB_DIR), or auto "
        "(the Hub with a token and the network, else the local folder).",
    )
    card_datasets: list[str] = arg(
        factory=list,
        help="Hub dataset ids for the card's `datasets` front matter, besides those found from the recipe's sources "
        "(Hub ids, and local dataset folders that were published): e.g. the Hub copy of local training files.",
    )


@dataclass
class ModelArgs:
    model_name_or_path: str | None = arg(
        None, help="Hub model id, or a local folder such as a previous stage's output_dir."
    )
    model_revision: str | None = arg(None, help="Hub revision (branch, tag or commit) of the model.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = arg(
        "auto", help="Dtype of the loaded weights ('auto' keeps the checkpoint's)."
    )
    attn_implementation: str | None = arg(
        None, help="Attention kernel: eager, sdpa, flash_attention_2 ... (default: transformers' choice)."
    )


@dataclass
class LoraArgs:
    use_peft: bool = arg(False, help="Train LoRA adapters (peft) instead of the full model.")
    lora_r: int = arg(16, help="LoRA rank.")
    lora_alpha: int = arg(32, help="LoRA alpha (scaling = alpha / r).")
    lora_dropout: float = arg(0.05, help="LoRA dropout.")
    lora_target_modules: list[str] | None = arg(
        None, help="Module names to adapt (default: all linear layers)."
    )
    merge_lora: bool = arg(
        True,
        help="With use_peft: save the merged model at the root of output_dir (loads with plain transformers) "
        "and the adapter under adapter/. If false, only the adapter is saved.",
    )


def _cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


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

    from .tracking import tracker_names

    for name in tracker_names(report_to):
        if name in TRACKERS and not getattr(integrations, TRACKERS[name][0])():
            raise RecipeError(f"{name} is not installed: pip install {TRACKERS[name][1]} (or drop it from report_to)",
                              key="report_to")  # fmt: skip


def _has_accelerator() -> bool:
    import torch

    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or torch.backends.mps.is_available() or bool(xpu and xpu.is_available())


@dataclass
class TrainerArgs(MixtureArgs, RunArgs, HubArgs, SFTConfig):
    """Keys shared by every stage that trains with a TRL trainer (all of `trl.SFTConfig` included)."""

    COLUMNS: typing.ClassVar[tuple[str, ...]] = ()

    # Defaults that differ from TRL's, for sane runs on a laptop as on a GPU node.
    bf16: bool | None = arg(
        None, help="bf16 mixed precision. Default: on where a CUDA GPU supports it, off on CPU."
    )
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
            raise RecipeError(f"a positive number of optimizer steps, or -1 (the default) to train for "
                              f"num_train_epochs; got {self.max_steps}", key="max_steps")  # fmt: skip
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise RecipeError(
                f"nothing to train: max_steps is {self.max_steps} and num_train_epochs {self.num_train_epochs} (set one > 0)",
                key="num_train_epochs",
            )


TRAINABLE_HELP = (
    "What is trained: all (every parameter), factors (the low-rank down/up matrices of a compressed model only: "
    "embeddings, norms and lm_head stay as they are, as in SVD-LLM's update and Lillama), factors+norms, or lora "
    "(adapters, = use_peft). auto: factors for a low-rank model, all otherwise."
)
KEEP_BEST_HELP = (
    "Evaluate the held-out loss on the first of eval_datasets every eval_steps (default: save_steps), keep the "
    "checkpoint with the lowest one (load_best_model_at_end), and if no step beats the model as it started, write "
    "the starting model unchanged, with a warning and the numbers in the card."
)


@dataclass
class TrainRecipe(ModelArgs, LoraArgs, TrainerArgs):
    """Keys shared by the stages that train an existing model (sft, kd, cpt)."""

    trainable: Literal["auto", "all", "factors", "factors+norms", "lora"] = arg("all", help=TRAINABLE_HELP)
    keep_best: bool = arg(False, help=KEEP_BEST_HELP)
    merge_with_base: float = arg(
        1.0,
        help="After training, interpolate the weights with the starting model (WiSE-FT): α = 1 keeps the trained "
        "model (off), 0 returns the starting model, 0.8 goes 80 %% of the way. Forgetting control "
        "(docs/CONTINUED_PRETRAINING.md); the same architecture and ranks, so low-rank students merge too.",
    )
    merge_method: Literal["linear", "slerp"] = arg(
        "linear", help="How merge_with_base interpolates each tensor: linear (WiSE-FT) or slerp (spherical)."
    )

    def __post_init__(self):
        if self.trainable == "lora":
            self.use_peft = True
        if self.keep_best is None:
            self.keep_best = bool(self.eval_datasets)
        if self.keep_best and self.eval_datasets:  # transformers' best-checkpoint machinery, on held-out loss
            self.eval_strategy = self.save_strategy = "steps"
            self.eval_steps = self.eval_steps or self.save_steps
            self.load_best_model_at_end, self.greater_is_better = True, False
            self.metric_for_best_model = f"eval_{_to_sources(self.eval_datasets)[0].tag}_loss"
        super().__post_init__()

    def check_training(self, static: bool) -> None:
        if self.keep_best and not self.eval_datasets:
            raise RecipeError("needs eval_datasets (held-out text to choose the best state on), or set it false",
                              key="keep_best")  # fmt: skip
        if not 0 <= self.merge_with_base <= 1:
            raise RecipeError(f"must be in [0, 1], got {self.merge_with_base}", key="merge_with_base")
        if self.merge_with_base != 1 and self.use_peft and not self.merge_lora:
            raise RecipeError("merging with the base needs the merged model: set merge_lora: true (or drop "
                              "merge_with_base)", key="merge_with_base")  # fmt: skip
        if self.use_peft and self.trainable not in ("auto", "all", "lora"):
            raise RecipeError(f"use_peft trains LoRA adapters: drop trainable: {self.trainable} (or use_peft)",
                              key="trainable")  # fmt: skip
        if (
            self.trainable in ("factors", "factors+norms")
            and not static
            and os.path.isdir(self.model_name_or_path)
        ):
            config = Path(self.model_name_or_path, "config.json")
            if config.is_file() and "compression_config" not in json.loads(config.read_text()):
                raise RecipeError(f"{self.trainable} needs a low-rank (compressed) model; {self.model_name_or_path} "
                                  "is dense", key="trainable")  # fmt: skip

    MODEL_ROLE: typing.ClassVar[str] = "the model"

    def check(self, static: bool) -> None:
        """The checks of every training stage (sft, kd, cpt), before any model loads."""
        check_model(self.model_name_or_path, static, f"{self.MODEL_ROLE} (a Hub id or a local model folder)")
        if is_local_speech_model(self.model_name_or_path):
            raise RecipeError(f"{self.model_name_or_path} is a speech model (Whisper): sft, kd and cpt train causal "
                              "language models; speech models are compressed and distilled (compress, "
                              "feature-distill)", key="model_name_or_path")  # fmt: skip
        check_context(self.model_name_or_path, self.max_length, "max_length")
        super().check(static)
        self.check_training(static)
        if self.use_peft:
            _positive(self, "lora_r", "lora_alpha")
            if not 0 <= self.lora_dropout < 1:
                raise RecipeError("must be in [0, 1)", key="lora_dropout")
        if self.chat_template_path is not None:
            self.chat_template_path = check_chat_template(self.chat_template_path, self.assistant_only_loss)


@dataclass
class SFTRecipe(TrainRecipe):
    """`llm4all sft`: supervised fine-tuning on conversations (`messages` column)."""

    COLUMNS: typing.ClassVar[tuple[str, ...]] = ("messages",)

    assistant_only_loss: bool = arg(
        True,
        help="Compute the loss on assistant tokens only (needs {% generation %} markers in the chat template).",
    )
    chat_template_path: str | None = arg(
        None,
        help="A .jinja chat template file, or the name of one shipped with the package (e.g. 'chatml'). "
        "Default: the tokenizer's own template.",
    )


@dataclass
class KDArgs:
    kd_loss: Literal["forward_kl", "reverse_kl", "jsd"] = arg(
        "forward_kl",
        help="Divergence: forward_kl (classic KD), reverse_kl, or jsd (generalized JSD, see kd_beta).",
    )
    kd_beta: float = arg(
        0.5, help="jsd: weight of the teacher in the mixture, in [0, 1] (0 = forward KL, 1 = reverse KL)."
    )
    kd_temperature: float = arg(
        1.0, help="Softmax temperature τ > 0 of both distributions; the loss is scaled by τ²."
    )
    kd_alpha: float = arg(
        0.0, help="Weight of the cross-entropy on the labels, in [0, 1]: α·CE + (1−α)·τ²·D."
    )

    def check_kd(self) -> None:
        if not self.kd_temperature > 0:
            raise RecipeError(f"must be > 0, got {self.kd_temperature}", key="kd_temperature")
        if not 0 <= self.kd_beta <= 1:
            raise RecipeError(f"must be in [0, 1], got {self.kd_beta}", key="kd_beta")
        if not 0 <= self.kd_alpha <= 1:
            raise RecipeError(f"must be in [0, 1], got {self.kd_alpha}", key="kd_alpha")


@dataclass
class KDRecipe(KDArgs, TrainRecipe):
    """`llm4all kd`: off-policy logit distillation of the student (model_name_or_path) from a teacher."""

    data_format: Literal["text", "messages"] = arg(
        "text",
        help="text: raw text, packed, every token trained (healing); messages: chat, assistant tokens only.",
    )
    teacher_model_name_or_path: str | None = arg(
        None, help="The teacher (Hub id or folder); optional with teacher_cache (then checked against it)."
    )
    teacher_dtype: Literal["auto", "float32", "bfloat16", "float16"] = arg(
        "auto", help="Dtype the teacher is loaded in."
    )
    teacher_cache: str | None = arg(
        None,
        help="A `cache-teacher` output: its packed data and top-k teacher log-probs replace datasets and teacher runs.",
    )
    perplexity_max_length: int = arg(
        256, help="Window of the perplexity measured before/after on eval_datasets (text)."
    )
    packing: bool | None = arg(
        None, help="Pack rows into blocks of max_length (default: true for text, false for messages)."
    )
    packing_strategy: str = arg("wrapped", help="Packing of text: wrapped (contiguous blocks), bfd, bfd_split.",
                                choices=["bfd", "bfd_split", "wrapped"])  # fmt: skip
    assistant_only_loss: bool | None = arg(
        None, help="Distil assistant tokens only (default: true for messages)."
    )
    chat_template_path: str | None = arg(
        None, help="A .jinja chat template (messages), or a shipped name (chatml)."
    )

    kd_hidden_coef: float = arg(
        0.0,
        help="Weight of a hidden-state loss added to the logit loss: Σ ‖s − t‖²/‖t‖² between each student block's "
        "output and its teacher block's (a pruned student: the kept blocks and channels of its pruning_config), "
        "mean over blocks. Needs an online teacher. 0: logits only.",
    )
    trainable: Literal["auto", "all", "factors", "factors+norms", "lora"] = arg("auto", help=TRAINABLE_HELP)
    keep_best: bool | None = arg(None, help=KEEP_BEST_HELP + " Default: on when eval_datasets are given.")

    MODEL_ROLE: typing.ClassVar[str] = "the student"

    @property
    def COLUMNS(self) -> tuple[str, ...]:
        return () if self.teacher_cache else (self.data_format,)

    def __post_init__(self):
        if self.packing is None:
            self.packing = self.data_format == "text"
        if self.assistant_only_loss is None:
            self.assistant_only_loss = self.data_format == "messages"
        self.prediction_loss_only = True  # held-out loss only: no logits gathered over the eval sets
        super().__post_init__()

    def check(self, static: bool) -> None:
        if not self.teacher_model_name_or_path and not self.teacher_cache:
            raise RecipeError("required: a teacher, or a teacher_cache", key="teacher_model_name_or_path")
        if self.teacher_model_name_or_path:
            check_model(self.teacher_model_name_or_path, static, "", key="teacher_model_name_or_path")
        super().check(static)
        self.check_kd()
        _positive(self, "perplexity_max_length")
        if self.kd_hidden_coef < 0:
            raise RecipeError(f"must be >= 0, got {self.kd_hidden_coef}", key="kd_hidden_coef")
        if self.kd_hidden_coef and self.teacher_cache:
            raise RecipeError(
                "the hidden-state loss needs an online teacher, not a teacher_cache", key="kd_hidden_coef"
            )

    def check_data(self, static: bool) -> None:
        if not self.teacher_cache:
            return check_mixture(self, static, eval_columns=("text",))  # held-out text for every data_format
        check_path(self.teacher_cache, "teacher_cache", static)
        if self.datasets:
            raise RecipeError("the teacher cache fixes the training data: remove `datasets`", key="datasets")

        check_sources(self.eval_datasets, "eval_datasets", ("text",), static)


@dataclass
class CPTRecipe(KDArgs, TrainRecipe):
    """`llm4all cpt`: continued pretraining on new text, with replay of old text and an optional KL to the model
    before training (forgetting control)."""

    COLUMNS: typing.ClassVar[tuple[str, ...]] = ("text",)

    replay_datasets: list[DatasetSource] = arg(
        factory=list,
        help="Old-domain text replayed during continued pretraining (same entry format as datasets).",
    )
    replay_share: float = arg(
        0.0,
        help="Share of the training tokens taken from replay_datasets, in [0, 1); the literature uses 5-25 %% "
        "(0 = naive continued pretraining).",
    )
    kl_coef: float = arg(
        0.0, help="Weight of the KL to the reference model (0 = off); the first step's with kl_coef_end."
    )
    kl_coef_end: float | None = arg(
        None,
        help="Weight of the KL at the last step, linear from kl_coef in between (unset: constant kl_coef).",
    )
    kl_on: Literal["replay", "all", "new"] = arg(
        "all",
        help="Tokens the KL applies to: all tokens (the best measured, docs/CONTINUED_PRETRAINING.md), replay "
        "tokens only, or new-domain tokens only.",
    )
    merge_grid: list[float] = arg(
        factory=list,
        help="Choose merge_with_base on the held-out old_*/new_* eval sets among these α (e.g. [0.5, 0.6, 0.7, "
        "0.8, 0.9]): the lowest old-domain perplexity among the α that keep >= merge_min_gain of the trained "
        "model's new-domain gain; the starting model (α = 0) when training made the new domain worse. Every α is a "
        "point of the forgetting report. Chosen on the eval sets: report a "
        "held-out set of your own for an unbiased number.",
    )
    merge_min_gain: float = arg(
        0.95, help="Share of the trained model's new-domain perplexity gain an α of merge_grid must keep."
    )
    reference_model_name_or_path: str | None = arg(
        None,
        help="The model the KL pulls towards. Default: model_name_or_path (the model before this stage).",
    )
    reference_dtype: Literal["auto", "float32", "bfloat16", "float16"] = arg(
        "auto", help="Dtype of the reference model."
    )
    perplexity_max_length: int = arg(
        256, help="Window of the perplexity measured before/after on eval_datasets."
    )
    max_length: int | None = arg(
        256, help="Block length: new and replay text are packed separately into blocks."
    )
    lr_scheduler_type: str = arg(
        "cosine",
        help="Re-warm then re-decay: cosine after warmup_steps (or warmup_stable_decay with lr_scheduler_kwargs).",
        choices=[t.value for t in SchedulerType],
    )

    def __post_init__(self):
        self.replay_datasets = _to_sources(self.replay_datasets)
        self.prediction_loss_only = True
        super().__post_init__()

    @property
    def kl_active(self) -> bool:
        """Whether any step has a KL term (and so the reference model is loaded)."""
        return self.kl_coef > 0 or (self.kl_coef_end or 0) > 0

    def check(self, static: bool) -> None:
        super().check(static)
        if not 0 <= self.replay_share < 1:
            raise RecipeError(f"must be in [0, 1), got {self.replay_share}", key="replay_share")
        if self.replay_share > 0 and not self.replay_datasets:
            raise RecipeError("replay_share > 0 needs replay_datasets", key="replay_datasets")
        if self.replay_datasets and self.replay_share == 0:
            raise RecipeError("replay_datasets are only read with replay_share > 0", key="replay_share")

        check_sources(self.replay_datasets, "replay_datasets", ("text",), static)
        for key in ("kl_coef", "kl_coef_end"):
            if (getattr(self, key) or 0) < 0:
                raise RecipeError(f"must be >= 0, got {getattr(self, key)}", key=key)
        if self.kl_active and self.kl_on == "replay" and self.replay_share == 0:
            raise RecipeError("kl_on: replay needs replay tokens (replay_share > 0)", key="kl_on")
        if self.merge_grid:
            if any(not 0 <= a <= 1 for a in self.merge_grid):
                raise RecipeError(f"every α must be in [0, 1], got {self.merge_grid}", key="merge_grid")
            if self.merge_with_base != 1:
                raise RecipeError(
                    "set merge_with_base or merge_grid (which chooses it), not both", key="merge_grid"
                )
            labels = [source.tag for source in self.eval_datasets]
            if not any(x.startswith("old") for x in labels) or not any(x.startswith("new") for x in labels):
                raise RecipeError("needs an old_* and a new_* set in eval_datasets (the held-out domains α is chosen "
                                  f"on), got {labels}", key="merge_grid")  # fmt: skip
        if not 0 < self.merge_min_gain <= 1:
            raise RecipeError(f"must be in (0, 1], got {self.merge_min_gain}", key="merge_min_gain")
        if self.reference_model_name_or_path:
            check_model(self.reference_model_name_or_path, static, "", key="reference_model_name_or_path")
        self.check_kd()
        _positive(self, "perplexity_max_length")


@dataclass
class TinyModelRecipe(TrainerArgs):
    """`llm4all tiny-model`: the embedded default — tiny Llama + French BPE tokenizer, briefly pretrained."""

    COLUMNS: typing.ClassVar[tuple[str, ...]] = ("text",)

    model_config: dict[str, Any] = arg(
        factory=dict,
        help="transformers LlamaConfig keys (hidden_size, num_hidden_layers, ...); with `model_type: whisper`, "
        "WhisperConfig keys (d_model, encoder_layers, ...): a random tiny Whisper + processor, not trained.",
    )
    tokenizer_files: list[str] = arg(
        factory=list,
        help="jsonl files (a `text` or `messages` column) the byte-level BPE tokenizer is trained on.",
    )
    tokenizer_vocab_size: int = arg(
        2048, help="Vocabulary size of the trained tokenizer (special tokens included)."
    )
    chat_template_path: str | None = arg(
        "chatml",
        help="Chat template (.jinja file or shipped name) stored with the tokenizer; needs generation markers.",
    )
    packing: bool = arg(True, help="Concatenate documents into blocks of max_length tokens (pretraining).")
    packing_strategy: str = arg(
        "wrapped",
        help="How documents are packed: wrapped (cut mid-document, classic LM pretraining), bfd, bfd_split.",
        choices=["bfd", "bfd_split", "wrapped"],
    )
    max_length: int | None = arg(256, help="Block length in tokens.")

    @property
    def whisper(self) -> bool:
        return self.model_config.get("model_type") == "whisper"

    def check(self, static: bool) -> None:
        if not self.model_config:
            raise RecipeError("required: the LlamaConfig of the tiny model", key="model_config")
        if not self.tokenizer_files:
            raise RecipeError("required: text files to train the tokenizer on", key="tokenizer_files")
        for i, path in enumerate(self.tokenizer_files):
            check_path(path, f"tokenizer_files[{i}]", static)
        if self.model_config.get("model_type", "llama") not in ("llama", "whisper"):
            raise RecipeError("model_type: llama (default) or whisper", key="model_config.model_type")
        if self.whisper:  # random weights: no training data, no perplexity
            for key in ("datasets", "eval_datasets"):
                if getattr(self, key):
                    raise RecipeError("a tiny Whisper is not trained: remove it", key=key)
            check_output_dir(self, static)
            check_hub(self.push_to_hub, self.hub_model_id, "hub_model_id")
            _positive(self, "tokenizer_vocab_size")
            return
        if not self.eval_datasets:
            raise RecipeError("required: held-out text to measure perplexity on", key="eval_datasets")
        super().check(static)
        _positive(self, "tokenizer_vocab_size")
        self.chat_template_path = check_chat_template(self.chat_template_path, require_generation=True)


@dataclass
class StageArgs(RunArgs, HubArgs):
    """Output and publishing keys of the stages that do not train with a TRL trainer."""

    output_dir: str | None = arg(
        None, help="Default: outputs/<model>/<stage>/<variant>, from the recipe's path."
    )
    seed: int = arg(42, help="Random seed (sampling, splits).")
    push_to_hub: bool = arg(False, help="Publish the output after the stage (see hub_target).")
    hub_private_repo: bool | None = arg(
        None,
        help="Visibility of the Hub repo. Unset: a new repo is private, an existing one keeps its visibility; "
        "true/false sets it (an existing repo's too).",
    )


@dataclass
class CacheTeacherRecipe(MixtureArgs, StageArgs):
    """`llm4all cache-teacher`: tokenise and pack the data, run the teacher once, store its top-k per token."""

    teacher_model_name_or_path: str | None = arg(None, help="The teacher (Hub id or folder).")
    teacher_dtype: Literal["auto", "float32", "bfloat16", "float16"] = arg(
        "auto", help="Dtype the teacher runs in."
    )
    data_format: Literal["text", "messages"] = arg(
        "text",
        help="text: packed into contiguous blocks; messages: one chat per row, assistant tokens trained.",
    )
    max_length: int = arg(256, help="Tokens per row (the block length of packed text).")
    top_k: int = arg(64, help="Teacher log-probs kept per token (the vocabulary size makes the cache exact).")
    kd_temperature: float = arg(
        1.0, help="Temperature of the cached log-probs (the kd recipe must use the same)."
    )
    cache_dtype: Literal["float16", "float32"] = arg("float16", help="Storage dtype of the log-probs.")
    batch_size: int = arg(8, help="Rows per teacher forward.")
    shard_rows: int = arg(1024, help="Rows per memory-mapped shard file.")
    device: str = arg("auto", help="Where the teacher runs: auto (cuda when available), cpu, cuda ...")
    chat_template_path: str | None = arg(
        None, help="messages: a .jinja chat template or a shipped name (chatml)."
    )

    @property
    def COLUMNS(self) -> tuple[str, ...]:
        return (self.data_format,)

    def check(self, static: bool) -> None:
        if not self.teacher_model_name_or_path:
            raise RecipeError("required: the teacher", key="teacher_model_name_or_path")
        check_model(self.teacher_model_name_or_path, static, "", key="teacher_model_name_or_path")
        if not self.kd_temperature > 0:
            raise RecipeError(f"must be > 0, got {self.kd_temperature}", key="kd_temperature")
        _positive(self, "max_length", "top_k", "batch_size", "shard_rows")
        if self.chat_template_path is not None:
            self.chat_template_path = check_chat_template(
                self.chat_template_path, self.data_format == "messages"
            )
        check_mixture(self, static)
        check_output_dir(self, static)


@dataclass
class SelectRecipe(ModelArgs, MixtureArgs, StageArgs):
    """`llm4all select`: keep the new documents worth training on (perplexity band, no duplicates, no eval overlap)."""

    COLUMNS: typing.ClassVar[tuple[str, ...]] = ("text",)

    keep: Literal["lowest", "highest", "band"] = arg(
        "band",
        help="By perplexity under model_name_or_path: the lowest (closest to what the model knows), the highest "
        "(most novel), or a quantile band (drops boilerplate at the bottom and noise at the top).",
    )
    band: list[float] = arg(
        factory=lambda: [0.1, 0.9], help="keep: band — the [low, high] perplexity quantiles kept."
    )
    keep_fraction: float = arg(0.5, help="keep: lowest / highest — the fraction of documents kept.")
    score_max_length: int = arg(512, help="Tokens of each document scored (its beginning).")
    batch_size: int = arg(8, help="Documents per scoring forward.")
    near_duplicate_threshold: float = arg(
        0.8, help="MinHash-LSH Jaccard similarity above which a document is a near duplicate."
    )
    decontaminate: list[DatasetSource] = arg(
        factory=list,
        help="Evaluation sets to protect: documents sharing a word n-gram with them are removed.",
    )
    decontamination_ngram: int = arg(13, help="n of the word n-grams checked against the protected sets.")
    device: str = arg("auto", help="Where the scoring model runs.")
    hub_dataset_id: str | None = arg(None, help="<namespace>/<name> of the published dataset.")

    def __post_init__(self):
        self.decontaminate = _to_sources(self.decontaminate)
        super().__post_init__()

    def check(self, static: bool) -> None:
        check_model(self.model_name_or_path, static, "the reference model that scores perplexity")
        if len(self.band) != 2 or not 0 <= self.band[0] < self.band[1] <= 1:
            raise RecipeError(
                f"expected [low, high] quantiles with 0 <= low < high <= 1, got {self.band}", key="band"
            )
        if not 0 < self.keep_fraction <= 1:
            raise RecipeError("must be in (0, 1]", key="keep_fraction")
        if not 0 < self.near_duplicate_threshold <= 1:
            raise RecipeError("must be in (0, 1]", key="near_duplicate_threshold")
        _positive(self, "score_max_length", "batch_size", "decontamination_ngram")
        check_mixture(self, static)

        check_sources(self.decontaminate, "decontaminate", ("text",), static)
        check_output_dir(self, static)
        check_hub(self.push_to_hub, self.hub_dataset_id, "hub_dataset_id")


@dataclass
class GenerateRecipe(ModelArgs, StageArgs):
    """`llm4all generate`: a teacher (model_name_or_path) writes a target column for a dataset from a French prompt
    (machine-generated summaries, fiches de régulation): the data of sequence-level distillation."""

    dataset: str | None = arg(
        None, help="Input dataset: a `save_to_disk` folder (a build-dataset output) or a Hub dataset id."
    )
    splits: list[str] | None = arg(None, help="Splits to generate for (default: every split of `dataset`).")
    input_column: str = arg("transcript", help="The column the prompt is written from.")
    output_column: str = arg("summary", help="The column the teacher writes.")
    keep_existing: bool = arg(
        True,
        help="Rows whose output column already holds a text (a human target) keep it; false: the teacher writes all.",
    )
    prompt: str | None = arg(
        "meeting_summary",
        help="The instruction: a shipped prompt (data/prompts/<name>.jinja) or a .jinja file; it must use the input "
        "column as a variable, e.g. {{ transcript }}. null: the input column holds a chat history ([{role, content}], "
        "e.g. simsamu-turns' `prompt`) and the teacher writes the next assistant turn.",
    )
    system_prompt: str | None = arg(
        None, help="A system message (shipped prompt name or .jinja file), or none."
    )
    chunk_prompt: str | None = arg(
        None,
        help="Map-reduce for inputs longer than the teacher's context: the prompt for one chunk (variables: the input "
        "column, index, total), e.g. meeting_chunk_summary. Unset: long inputs are counted and left out.",
    )
    merge_prompt: str | None = arg(
        None,
        help="Map-reduce: the prompt merging the chunk outputs (variable: summaries), e.g. meeting_merge_summaries.",
    )
    chunk_tokens: int = arg(1024, help="Map-reduce: tokens of one chunk (whole lines when possible).")
    chunk_overlap: int = arg(128, help="Map-reduce: tokens repeated between consecutive chunks.")
    context_length: int | None = arg(
        None, help="Prompt + answer tokens the teacher reads (default: its max_position_embeddings)."
    )
    max_new_tokens: int = arg(
        256, help="Tokens generated at most per answer (an answer that reaches it is truncated)."
    )
    do_sample: bool = arg(False, help="Sample (with temperature / top_p) instead of greedy decoding.")
    temperature: float = arg(0.7, help="do_sample: softmax temperature.")
    top_p: float = arg(0.95, help="do_sample: nucleus mass.")
    batch_size: int = arg(8, help="Prompts generated together (left-padded).")
    engine: Literal["transformers", "vllm"] = arg(
        "transformers",
        help="transformers' generate, or vLLM (`pip install vllm`, GPU) on the same prompt token ids.",
    )
    shard_size: int = arg(
        64, help="Rows per shard file: a rerun after an interruption starts at the first unfinished shard."
    )
    drop_truncated: bool = arg(True, help="Leave out answers that reached max_new_tokens without ending.")
    min_words: int = arg(5, help="Leave out answers with fewer words.")
    max_words: int | None = arg(None, help="Leave out answers with more words.")
    french_only: bool = arg(True, help="Leave out answers that do not look French (function-word check).")
    required_fields: list[str] = arg(
        factory=list,
        help="Labels every answer must contain (a structured fiche: Motif, Bilan, Décision ...).",
    )
    dedup: bool = arg(True, help="Leave out exact duplicate answers (whitespace-normalised), the first kept.")
    hub_dataset_id: str | None = arg(None, help="<namespace>/<name> of the published dataset.")
    license: str | None = arg(None, help="Licence of the generated dataset (card); default: the input's.")

    def check(self, static: bool) -> None:
        check_model(self.model_name_or_path, static, "the teacher that writes the targets")
        check_context(self.model_name_or_path, self.max_new_tokens, "max_new_tokens")
        if not self.dataset:
            raise RecipeError(
                "required: the input dataset (a build-dataset output or a Hub id)", key="dataset"
            )
        check_path(self.dataset, "dataset", static, hub_ok=True)
        _positive(self, "max_new_tokens", "batch_size", "shard_size", "chunk_tokens", "temperature")
        if not 0 < self.top_p <= 1:
            raise RecipeError(f"must be in (0, 1], got {self.top_p}", key="top_p")
        if not 0 <= self.chunk_overlap < self.chunk_tokens:
            raise RecipeError("must be >= 0 and < chunk_tokens", key="chunk_overlap")
        if self.engine == "vllm":
            import importlib.util

            if importlib.util.find_spec("vllm") is None:
                raise RecipeError(
                    "engine: vllm needs vLLM installed (`pip install vllm`, on a GPU machine)", key="engine"
                )
        if self.prompt is None and self.chunk_prompt:
            raise RecipeError(
                "map-reduce needs an instruction prompt (prompt: null writes next turns)", key="chunk_prompt"
            )
        if bool(self.chunk_prompt) != bool(self.merge_prompt):
            raise RecipeError("map-reduce needs both chunk_prompt and merge_prompt", key="chunk_prompt")
        from .data.templates import prompt_variables

        for key, needed in (("prompt", self.input_column), ("chunk_prompt", self.input_column),
                            ("merge_prompt", "summaries"), ("system_prompt", None)):  # fmt: skip
            value = getattr(self, key)
            if value is None:
                continue
            try:
                variables = prompt_variables(value)
            except (OSError, ValueError) as exc:
                raise RecipeError(str(exc), key=key) from None
            if needed and needed not in variables:
                raise RecipeError(
                    f"the template does not use the input column: no {{{{ {needed} }}}} in {value} "
                    f"(it uses: {', '.join(sorted(variables)) or 'no variable'})",
                    key=key,
                )
        check_output_dir(self, static)
        check_hub(self.push_to_hub, self.hub_dataset_id, "hub_dataset_id")


@dataclass
class EvalRecipe(ModelArgs, StageArgs):
    """`llm4all eval`: perplexity (old/new domain, forgetting report), French task ROUGE, lighteval tasks."""

    COLUMNS: typing.ClassVar[tuple[str, ...]] = ()

    perplexity_datasets: list[DatasetSource] = arg(
        factory=list,
        help="Held-out text sets (a `text` column), each reported under its name (old_*/new_* for the forgetting report).",
    )
    compare_to: list[str] | None = arg(
        None,
        help="Models also measured on the perplexity sets (the forgetting report). Default: the model's ancestors "
        "listed in its lineage.json that are local model folders.",
    )
    old_domain: str | None = arg(
        None, help="Name of the old-domain perplexity set (default: the one starting with old)."
    )
    new_domain: str | None = arg(
        None, help="Name of the new-domain perplexity set (default: the one starting with new)."
    )
    simsamu_dataset: str | None = arg(
        None,
        help="A per-turn simsamu dataset (prompt/completion): ROUGE-L of the generated next regulator turn.",
    )
    simsamu_split: str = arg("test", help="Split of simsamu_dataset.")
    meetings_dataset: str | None = arg(
        None, help="A meetings dataset: ROUGE-1/2/L of generated summaries (map-reduce when long)."
    )
    meetings_split: str = arg("test", help="Split of meetings_dataset.")
    max_generations: int = arg(
        8, help="Budget of generations for the whole evaluation (each map-reduce step counts)."
    )
    max_new_tokens: int = arg(64, help="Tokens per generation.")
    chunk_tokens: int = arg(
        384, help="Meetings too long for the context are summarised by chunks of this many tokens."
    )
    chunk_overlap: int = arg(64, help="Overlap of consecutive chunks, in tokens.")
    lighteval_tasks: list[str] = arg(
        factory=list,
        help="lighteval tasks: llm4all_simsamu_next_turn|0 and llm4all_meeting_summary|0 (on simsamu_dataset / "
        "meetings_dataset, offline), or any lighteval task string (needs the Hub).",
    )
    lighteval_max_samples: int | None = arg(None, help="Samples per lighteval task (default: all).")
    perplexity_max_length: int = arg(256, help="Window of the strided perplexity.")
    device: str = arg("auto", help="Where the models run.")
    update_model_card: bool = arg(
        True,
        help="Also add the results to the evaluated model's own card (model-index) when it is a local folder.",
    )

    def __post_init__(self):
        self.perplexity_datasets = _to_sources(self.perplexity_datasets)

    def check(self, static: bool) -> None:
        check_model(self.model_name_or_path, static, "the model to evaluate")

        check_sources(self.perplexity_datasets, "perplexity_datasets", ("text",), static)
        for key in ("simsamu_dataset", "meetings_dataset"):
            if getattr(self, key):
                check_path(getattr(self, key), key, static, hub_ok=True)
        for i, path in enumerate(self.compare_to or []):
            check_model(path, static, "", key=f"compare_to[{i}]")
        if (
            self.simsamu_dataset is None
            and self.meetings_dataset is None
            and not self.perplexity_datasets
            and not self.lighteval_tasks
        ):
            raise RecipeError(
                "nothing to evaluate: give perplexity_datasets, a task dataset or lighteval_tasks",
                key="perplexity_datasets",
            )
        _positive(self, "max_generations", "max_new_tokens", "chunk_tokens", "perplexity_max_length")
        check_context(self.model_name_or_path, self.max_new_tokens, "max_new_tokens")
        if self.lighteval_tasks and importlib.util.find_spec("lighteval") is None:
            raise RecipeError("lighteval is not installed: pip install 'llm4all-recipes[eval]' (or `make install`)",
                              key="lighteval_tasks")  # fmt: skip
        if not 0 <= self.chunk_overlap < self.chunk_tokens:
            raise RecipeError("need 0 <= chunk_overlap < chunk_tokens", key="chunk_overlap")
        check_output_dir(self, static)


@dataclass
class SplitArgs:
    """How rows are dealt into splits, by group (simsamu: situation; meetings: meeting)."""

    splits: dict[str, float] = arg(
        factory=lambda: {"train": 0.8, "validation": 0.1, "test": 0.1},
        help="Split shares (of rows), assigned by group (simsamu: situation; meetings: meeting) so that no group "
        "is in two splits. Sources that come with their own splits keep them (never re-carved).",
    )
    folds: int | None = arg(None, help="k-fold instead of `splits`: the groups are dealt into `folds` folds.")
    fold: int = arg(0, help="With `folds`: the fold used as `test` (the others are `train`).")

    def check_splits(self) -> None:
        if self.folds is not None:
            if self.folds < 2:
                raise RecipeError("must be >= 2", key="folds")
            if not 0 <= self.fold < self.folds:
                raise RecipeError(f"must be in [0, {self.folds})", key="fold")
        elif not self.splits or any(v < 0 for v in self.splits.values()) or sum(self.splits.values()) <= 0:
            raise RecipeError("shares must be >= 0 with a positive sum", key="splits")


@dataclass
class SimsamuArgs:
    """Keys of the simsamu layout's calls (build-dataset from transcripts, transcribe from recordings)."""

    per_turn: bool = arg(
        False,
        help="simsamu dialogue: one row per regulator turn with its history (`prompt`/`completion` columns too, "
        "for next-turn evaluation).",
    )
    skip_speakers: list[str] = arg(
        factory=lambda: ["inintelligible"],
        help="simsamu: speaker labels skipped (and counted) instead of an error.",
    )
    summaries: str | None = arg(
        None,
        help="jsonl of summaries ({id|meeting_id, summary}); simsamu default: summaries.jsonl at the source root "
        "when present.",
    )
    license: str | None = arg(None, help="Licence of the built dataset (card); simsamu default: mit.")
    hub_dataset_id: str | None = arg(None, help="<namespace>/<name> of the published dataset.")


@dataclass
class BuildDatasetRecipe(SplitArgs, SimsamuArgs, StageArgs):
    """`llm4all build-dataset`: a dataset (save_to_disk + card) from the simsamu or a meetings layout."""

    COLUMNS: typing.ClassVar[tuple[str, ...]] = ()
    SIMSAMU_ONLY: typing.ClassVar[tuple[str, ...]] = (
        "per_turn",
        "skip_speakers",
        "punctuation",
        "download_audio",
    )
    MEETINGS_ONLY: typing.ClassVar[tuple[str, ...]] = (
        "layout",
        "tokenizer_name_or_path",
        "chunk_tokens",
        "chunk_overlap",
    )

    builder: Literal["simsamu", "meetings", "text"] = arg(
        "simsamu", help="Which builder reads `source` (text: a folder of jsonl files, one split per file)."
    )
    source: str | None = arg(
        None,
        help="Input: a Hub dataset id (fetched with snapshot_download when online) or a local folder/file in "
        "the same layout (simsamu: the call folders and root tables; meetings: jsonl/parquet/dataset folder).",
    )
    task: Literal["dialogue", "summary", "transcript"] | None = arg(
        None,
        help="simsamu: `dialogue` (default) = the call as a chat (system prompt, regulator = assistant); `summary` = "
        "transcript -> fiche de régulation (calls without a summary are counted and left out). meetings: `summary` "
        "(default) = transcript -> compte rendu, same rule. Both: `transcript` = one row per call/meeting, its "
        "speaker-named transcript as `text` (summaries not needed: continued-pretraining text, `generate` input).",
    )
    # simsamu
    punctuation: bool = arg(True, help="simsamu: keep the PUNCTUATION terms of the transcripts.")
    download_audio: bool = arg(
        False, help="simsamu from the Hub: also download the .m4a audio (not used here)."
    )
    # meetings
    layout: Literal["auto", "turns", "summre"] = arg(
        "auto", help="meetings: input layout (auto-detected by columns)."
    )
    tokenizer_name_or_path: str | None = arg(
        None, help="meetings: a tokenizer to cut long transcripts into token-bounded `chunks` (map-reduce)."
    )
    chunk_tokens: int = arg(1024, help="meetings: chunk size in tokens.")
    chunk_overlap: int = arg(128, help="meetings: overlap between consecutive chunks, in tokens.")

    def check(self, static: bool) -> None:
        if not self.source:
            raise RecipeError("required: a Hub dataset id or a local path", key="source")
        check_path(self.source, "source", static, hub_ok=True)
        if self.summaries:
            check_path(self.summaries, "summaries", static)
        given = {*self.origin.values, *self.origin.cli_keys}
        other = {
            "simsamu": self.MEETINGS_ONLY,
            "meetings": self.SIMSAMU_ONLY,
            "text": self.SIMSAMU_ONLY + self.MEETINGS_ONLY,
        }
        for key in other[self.builder]:
            if key in given:
                raise RecipeError(f"does not apply to the {self.builder} builder", key=key)
        tasks = {
            "simsamu": ("dialogue", "summary", "transcript"),
            "meetings": ("summary", "transcript"),
            "text": (),
        }
        if self.task is not None and self.task not in tasks[self.builder]:
            raise RecipeError(f"the {self.builder} builder has no task {self.task!r}", key="task")
        if self.task is None:
            self.task = {"simsamu": "dialogue", "meetings": "summary", "text": None}[self.builder]
        self.check_splits()
        if self.per_turn and self.task != "dialogue":
            raise RecipeError("per_turn applies to task: dialogue", key="per_turn")
        if not 0 <= self.chunk_overlap < self.chunk_tokens:
            raise RecipeError("need 0 <= chunk_overlap < chunk_tokens", key="chunk_overlap")
        check_output_dir(self, static)
        check_hub(self.push_to_hub, self.hub_dataset_id, "hub_dataset_id")


@dataclass
class TranscribeRecipe(ModelArgs, SplitArgs, SimsamuArgs, StageArgs):
    """`llm4all transcribe`: Whisper turns recordings into a dataset (build-dataset's layout) + WER/CER."""

    COLUMNS: typing.ClassVar[tuple[str, ...]] = ()

    source: str | None = arg(
        None,
        help="Recordings: a simsamu-layout folder (<call>/<call>.m4a + optional .rttm/.srt), a .jsonl manifest "
        "(or a folder of them, one split per file) with an `audio` path relative to it and an optional `text` "
        "reference, a save_to_disk dataset with an `audio` column, or a Hub dataset id (snapshot_download).",
    )
    task: Literal["dialogue", "summary", "transcript"] = arg(
        "dialogue",
        help="simsamu layout: the rows built from the ASR text, as build-dataset's tasks (dialogue: the call as a "
        "chat, regulator = assistant; summary: transcript -> fiche; transcript: speaker-named text). dialogue and "
        "summary need speaker turns (an RTTM): calls without one are counted and left out.",
    )
    language: str = arg("fr", help="Whisper language token (a code such as fr, or a name such as french).")
    timestamps: bool = arg(
        True,
        help="Recordings without turns (manifests, calls without RTTM/SRT): long-form with timestamps (segments). "
        "false: a recording that fits one window is transcribed as one clip, batched, without timestamps (for "
        "models trained without them); longer ones stay long-form.",
    )
    batch_size: int = arg(8, help="Segments per generate() call (sorted by length).")
    num_beams: int = arg(1, help="Beam size (1: greedy, Whisper's default).")
    max_new_tokens: int = arg(128, help="Tokens generated per segment (Whisper windows hold at most 448).")
    shard_size: int = arg(
        8,
        help="Recordings per shard: each finished shard is saved in <output_dir>.tmp, so an interrupted run "
        "resumes at the first unfinished one.",
    )
    device: str = arg("auto", help="auto (cuda when available), cpu, cuda, cuda:1 ...")

    def check(self, static: bool) -> None:
        check_model(self.model_name_or_path, static, "the Whisper checkpoint")
        if not self.source:
            raise RecipeError(
                "required: a simsamu-layout folder, an audio manifest or a Hub dataset id", key="source"
            )
        check_path(self.source, "source", static, hub_ok=True)
        from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

        if self.language.lower() not in LANGUAGES and self.language.lower() not in TO_LANGUAGE_CODE:
            raise RecipeError(f"not a Whisper language: {self.language!r} (e.g. fr, french)", key="language")
        _positive(self, "batch_size", "num_beams", "max_new_tokens", "shard_size")
        if self.max_new_tokens > 440:
            raise RecipeError(
                "must be <= 440 (Whisper's 448-token window minus its prompt)", key="max_new_tokens"
            )
        self.check_splits()
        if self.per_turn and self.task != "dialogue":
            raise RecipeError("per_turn applies to task: dialogue", key="per_turn")
        if self.summaries:
            check_path(self.summaries, "summaries", static)
        check_output_dir(self, static)
        check_hub(self.push_to_hub, self.hub_dataset_id, "hub_dataset_id")


@dataclass
class CalibrationArgs:
    num_calibration_samples: int = arg(
        128, help="Calibration windows drawn (seeded) from the `datasets` text."
    )
    calibration_seq_len: int = arg(512, help="Tokens per calibration window.")
    calibration_batch_size: int = arg(8, help="Windows per forward pass of a decoder layer.")
    device: str = arg(
        "auto", help="Where each decoder layer runs: auto (cuda when available), cpu, cuda, cuda:1 ..."
    )
    perplexity_max_length: int = arg(
        512, help="Window of the perplexity measured before/after on eval_datasets."
    )
    report_to: list[str] = arg(
        factory=lambda: ["none"],
        help="Trackers that receive the per-layer / per-block losses and the held-out perplexities, as the "
        "training stages' report_to: tensorboard, wandb, mlflow, trackio, ... (none: only the logs and metrics.json).",
    )
    run_name: str | None = arg(None, help="The run's name in the trackers (default: llm4all-<stage>).")
    language: str = arg(
        "fr",
        help="Speech models (Whisper): the language token before the reference transcripts of the calibration "
        "and held-out recordings (their sources have `audio` and `text` columns).",
    )

    def check_calibration(self, static: bool) -> None:
        _positive(
            self,
            "num_calibration_samples",
            "calibration_seq_len",
            "calibration_batch_size",
            "perplexity_max_length",
        )
        if not self.datasets:
            raise RecipeError("required: calibration text (a `text` column)", key="datasets")
        check_mixture(self, static)
        speech = is_local_speech_model(getattr(self, "model_name_or_path", None))
        if (
            speech is not None
        ):  # a speech recipe given a text model, or the reverse, is refused before it runs
            from .data.mixture import peek_columns

            for i, src in enumerate(self.datasets):
                columns = peek_columns(src, f"datasets[{i}]")
                if columns is not None and ("audio" in columns) != speech:
                    raise RecipeError(
                        f"{src.path} holds recordings (an `audio` column) but {self.model_name_or_path} is a text "
                        "model" if not speech else f"{self.model_name_or_path} is a speech model but {src.path} has "
                        "no `audio` column (recordings with their transcripts)", key=f"datasets[{i}]")  # fmt: skip
        check_trackers(self.report_to)


@dataclass
class CompressRecipe(ModelArgs, MixtureArgs, CalibrationArgs, StageArgs):
    """`llm4all compress`: SVD-family low-rank initialisation of the decoder's linear layers."""

    COLUMNS: typing.ClassVar[tuple[str, ...]] = ("text",)

    hub_model_id: str | None = arg(None, help="<namespace>/<name> of the published checkpoint.")
    targets: list[str] = arg(
        factory=lambda: ["auto"],
        help="Linear layers of the decoder blocks to compress: `auto` (every attention and MLP projection: q/k/v/o and "
        "gate/up/down, or Phi-3's fused qkv_proj and gate_up_proj), a module's last name (q_proj) or a glob on its "
        "full name (model.layers.1?.mlp.*). Embeddings and lm_head are never touched.",
    )
    ratio: float = arg(
        0.2, help="Fraction of the targeted linear parameters removed (SVD-LLM convention), in (0, 1)."
    )
    method: Literal["svd", "asvd", "whitening", "outcov"] = arg(
        "whitening",
        help="Initialiser: svd (plain truncated SVD), asvd (activation-scaled), whitening (SVD-LLM, Cholesky of "
        "the input Gram), outcov (projection on the top output-covariance eigenvectors).",
    )
    asvd_alpha: float = arg(0.5, help="asvd: the scaling is diag(mean|x|^alpha).")
    jitter: float = arg(
        1e-6, help="whitening: first relative jitter tried when the Gram is not positive definite."
    )
    rank_allocation: Literal["uniform", "bottom_first", "loss", "explicit"] = arg(
        "uniform",
        help="uniform ranks; bottom_first (Lillama: lower ranks from the first layers upward until the budget is "
        "met); loss (greedy on each matrix's truncation error); explicit (`ranks`).",
    )
    ranks: dict[str, int] = arg(factory=dict, help="explicit allocation: {module name or glob: rank}.")
    rank_multiple: int = arg(
        1, help="Round ranks to a multiple (8, 64 on GPUs) without exceeding the budget."
    )
    min_rank_fraction: float = arg(0.25, help="bottom_first: lowest rank, as a fraction of mn/(m+n).")
    skip_first_layers: int = arg(0, help="bottom_first: leave the first N decoder layers dense.")
    propagate: Literal["compressed", "original"] = arg(
        "compressed",
        help="Feed layer i+1 with the outputs of compressed layer i (GPTQ) or of the original one.",
    )

    def check(self, static: bool) -> None:
        check_model(self.model_name_or_path, static, "the model to compress", weights=not self.dry_run)
        if not 0 < self.ratio < 1:
            raise RecipeError(f"must be in (0, 1), got {self.ratio}", key="ratio")
        if not self.targets:
            raise RecipeError("required: at least one module pattern", key="targets")
        if self.rank_allocation == "explicit" and not self.ranks:
            raise RecipeError("rank_allocation: explicit needs `ranks: {module: rank}`", key="ranks")
        if self.ranks and self.rank_allocation != "explicit":
            raise RecipeError("`ranks` is only read with rank_allocation: explicit", key="ranks")
        if not 0 < self.min_rank_fraction < 1:
            raise RecipeError("must be in (0, 1)", key="min_rank_fraction")
        _positive(self, "rank_multiple", "asvd_alpha")
        self.check_calibration(static)
        check_output_dir(self, static)
        check_hub(self.push_to_hub, self.hub_model_id, "hub_model_id")


@dataclass
class FeatureDistillRecipe(ModelArgs, MixtureArgs, CalibrationArgs, StageArgs):
    """`llm4all feature-distill`: Lillama — each compressed block learns its original block's outputs."""

    COLUMNS: typing.ClassVar[tuple[str, ...]] = ("text",)

    hub_model_id: str | None = arg(None, help="<namespace>/<name> of the published checkpoint.")
    teacher_model_name_or_path: str | None = arg(
        None, help="The original (dense) model. Default: the student's compression_config.base_model."
    )
    schedule: Literal["parallel", "sequential"] = arg(
        "parallel",
        help="parallel: every block learns from the teacher's own inputs (detached; blocks independent, as "
        "Lillama); sequential: from the outputs of the already distilled student blocks.",
    )
    joint_inputs: bool = arg(
        False,
        help="Also train on the other input stream (parallel + student inputs = Lillama's Teacher+Student loss).",
    )
    learning_rate: float = arg(1e-4, help="Peak AdamW learning rate of the low-rank factors.")
    lr_scheduler_type: Literal["cosine", "constant"] = arg(
        "cosine", help="Per block: linear warm-up over warmup_ratio of its steps, then cosine decay to 10 %% of "
        "the peak (cosine), or a constant rate after the warm-up.",
    )  # fmt: skip
    warmup_ratio: float = arg(0.05, help="Share of each block's steps spent warming the learning rate up.")
    weight_decay: float = arg(0.0, help="AdamW weight decay.")
    tokens_per_block: int | None = arg(
        None,
        help="Training tokens per block (the token budget). Default: one pass over the calibration windows. Speech "
        "models: transcript tokens, so that encoder and decoder blocks train the same number of steps.",
    )
    num_holdout_samples: int = arg(
        16,
        help="Held-out calibration windows (from the end of the token stream; speech: recordings distinct from the "
        "training ones) used to keep each block's best state.",
    )
    eval_every: int = arg(20, help="Steps between held-out evaluations of a block.")
    early_stopping_patience: int | None = arg(
        None,
        help="Stop a block after this many held-out evaluations in a row without improvement (its best state is "
        "kept); unset: spend the whole budget.",
    )

    def check(self, static: bool) -> None:
        check_model(self.model_name_or_path, static, "the compressed student (a compress output)")
        if self.teacher_model_name_or_path:
            check_model(self.teacher_model_name_or_path, static, "", key="teacher_model_name_or_path")
        _positive(self, "learning_rate", "tokens_per_block", "num_holdout_samples", "eval_every",
                  "early_stopping_patience")  # fmt: skip
        if not 0 <= self.warmup_ratio < 1:
            raise RecipeError(f"must be in [0, 1), got {self.warmup_ratio}", key="warmup_ratio")
        self.check_calibration(static)
        check_output_dir(self, static)
        check_hub(self.push_to_hub, self.hub_model_id, "hub_model_id")


@dataclass
class PruneRecipe(ModelArgs, MixtureArgs, CalibrationArgs, StageArgs):
    """`llm4all prune`: structured pruning to a smaller config of the same architecture (Minitron, ShortGPT)."""

    COLUMNS: typing.ClassVar[tuple[str, ...]] = ("text",)
    SIZES: typing.ClassVar[tuple[str, ...]] = (
        "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    )  # fmt: skip

    hub_model_id: str | None = arg(None, help="<namespace>/<name> of the published checkpoint.")
    ratio: float | None = arg(
        None,
        help="Fraction of the whole model's parameters to remove, in (0, 1): every axis in `axes` shrinks by the "
        "same fraction, the largest that removes at least this much. Or give explicit sizes instead.",
    )
    axes: list[Literal["mlp", "heads", "embedding", "depth"]] = arg(
        factory=lambda: ["mlp", "embedding"],
        help="What `ratio` shrinks: mlp (neurons, intermediate_size), heads (whole key/value groups), embedding "
        "(residual channels, hidden_size), depth (whole blocks). Default: Minitron's width pruning (mlp + embedding).",
    )
    hidden_size: int | None = arg(None, help="Explicit size: residual (embedding) channels kept.")
    intermediate_size: int | None = arg(None, help="Explicit size: MLP neurons kept per block.")
    num_hidden_layers: int | None = arg(None, help="Explicit size: decoder blocks kept.")
    num_attention_heads: int | None = arg(
        None,
        help="Explicit size: query heads kept per block, a multiple of the queries per key/value head (GQA groups "
        "are kept whole).",
    )
    depth_importance: Literal["block_influence", "perplexity"] = arg(
        "block_influence",
        help="How blocks are ranked: block_influence (ShortGPT: 1 − cos(input, output), streamed) or perplexity "
        "(the calibration perplexity with the block skipped; the whole model runs on `device`).",
    )
    size_multiple: int = arg(
        8, help="`ratio`: round hidden_size and intermediate_size down to a multiple (64 or 128 on GPUs)."
    )

    def check(self, static: bool) -> None:
        check_model(self.model_name_or_path, static, "the model to prune", weights=not self.dry_run)
        explicit = [k for k in self.SIZES if getattr(self, k) is not None]
        if self.ratio is None and not explicit:
            raise RecipeError(
                "required: a `ratio` or explicit sizes (" + ", ".join(self.SIZES) + ")", key="ratio"
            )
        if self.ratio is not None and explicit:
            raise RecipeError(f"give either `ratio` or explicit sizes, not both ({explicit[0]})", key="ratio")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise RecipeError(f"must be in (0, 1), got {self.ratio}", key="ratio")
        if not self.axes:
            raise RecipeError("required: at least one of mlp, heads, embedding, depth", key="axes")
        _positive(self, "size_multiple", *self.SIZES)
        self.check_calibration(static)
        check_output_dir(self, static)
        check_hub(self.push_to_hub, self.hub_model_id, "hub_model_id")


@dataclass
class ExportDenseRecipe(ModelArgs, StageArgs):
    """`llm4all export-dense`: multiply a low-rank checkpoint's factors out into a plain checkpoint."""

    COLUMNS: typing.ClassVar[tuple[str, ...]] = ()
    hub_model_id: str | None = arg(None, help="<namespace>/<name> of the published checkpoint.")

    def check(self, static: bool) -> None:
        check_model(self.model_name_or_path, static, "a low-rank checkpoint")
        check_output_dir(self, static)
        check_hub(self.push_to_hub, self.hub_model_id, "hub_model_id")


@dataclass
class ConvertRecipe(ModelArgs, StageArgs):
    """`llm4all convert`: a checkpoint published with pickle weights only (pytorch_model*.bin) as safetensors."""

    COLUMNS: typing.ClassVar[tuple[str, ...]] = ()
    hub_model_id: str | None = arg(None, help="<namespace>/<name> of the published checkpoint.")

    def check(self, static: bool) -> None:
        check_model(self.model_name_or_path, static, "the checkpoint to convert", weights=False)
        check_output_dir(self, static)
        check_hub(self.push_to_hub, self.hub_model_id, "hub_model_id")


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
        if self.method != "task_arithmetic" and (
            any(w < 0 for w in self.weights) or abs(sum(self.weights) - 1) > 1e-6
        ):
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


@dataclass
class PipelineStep:
    """One stage of a pipeline: a stage recipe, optionally with overrides."""

    recipe: str = arg(
        help="Path of a stage recipe (recipes/<model>/<stage>/<variant>.yaml); its folder names the stage."
    )
    overrides: dict[str, Any] = arg(
        factory=dict, help="Top-level keys overridden for this step (as --key value)."
    )
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
    force: bool = arg(
        False, help="Rerun every step, replacing finished outputs (default: skip finished steps)."
    )
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
                raise RecipeError(
                    f"two steps are named {step.name!r}: give one a `step_name`", key=f"steps[{i}]"
                )


RECIPES: dict[str, type] = {
    "build-dataset": BuildDatasetRecipe,
    "transcribe": TranscribeRecipe,
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


# --------------------------------------------------------------------------- value checks
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
    from .models import is_speech_model

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
        raise RecipeError(f"{tokens:,} tokens is beyond the model's context: {name} is {positions:,} in "
                          f"{Path(model, 'config.json')}", key=key)  # fmt: skip


def check_model(
    value: str | None, static: bool, what: str, key: str = "model_name_or_path", weights: bool = True
) -> None:
    """A required model: a Hub id or an existing folder (or, in `static` mode, one a stage will produce); a folder
    must hold whole safetensors weights unless only its config is read (`weights=False`: compress --dry_run)."""
    if not value:
        raise RecipeError(f"required: {what}", key=key)
    check_path(value, key, static, hub_ok=True)
    if weights and os.path.isdir(value):
        from .models import weights_problem

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
        (os.path.abspath(s.path) if not paths.is_hub_id(s.path) else s.path, s.name, s.split)
        for s in recipe.datasets
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
    "model_name_or_path", "teacher_model_name_or_path", "reference_model_name_or_path", "tokenizer_name_or_path",
    "teacher_cache", "models", "datasets", "eval_datasets", "replay_datasets", "decontaminate",
    "perplexity_datasets", "simsamu_dataset", "meetings_dataset", "dataset", "source", "chat_template_path",
    "tokenizer_files",
)  # fmt: skip


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


def has_generation_markers(template: str | None) -> bool:
    """True when a chat template marks assistant spans with {% generation %} (any whitespace control)."""
    return bool(template) and re.search(r"\{%-?\s*generation\s*-?%\}", template) is not None


def chat_template_file(value: str) -> Path:
    """The file of a chat template: a shipped name ('chatml') or a .jinja path (the recipe keeps what it was given,
    so no machine path reaches recipe.yaml or lineage.json)."""
    if not value.endswith((".jinja", ".j2")) and "/" not in value:
        return paths.CHAT_TEMPLATES_DIR / f"{value}.jinja"
    return Path(value)


def read_chat_template(value: str) -> str:
    return chat_template_file(value).read_text(encoding="utf-8")


def check_chat_template(value: str, require_generation: bool) -> str:
    """Check that a chat template exists (a shipped name or a file) and has `{% generation %}` markers when needed."""
    path = chat_template_file(value)
    if not path.is_file():
        if path.parent == paths.CHAT_TEMPLATES_DIR and not value.endswith((".jinja", ".j2")):
            shipped = sorted(p.stem for p in paths.CHAT_TEMPLATES_DIR.glob("*.jinja"))
            raise RecipeError(
                f"no shipped chat template named '{value}' (shipped: {', '.join(shipped)}); or give a .jinja file",
                key="chat_template_path",
            )
        raise RecipeError(f"no such file: {value}", key="chat_template_path")
    if require_generation and not has_generation_markers(path.read_text(encoding="utf-8")):
        raise RecipeError(
            f"{value} has no {{% generation %}} markers, which assistant_only_loss needs "
            "(wrap each assistant message in {% generation %}...{% endgeneration %})",
            key="chat_template_path",
        )
    return value
