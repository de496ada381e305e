"""Recipes of the stages that train: sft, kd and cpt (an existing model), tiny-model (a new one)."""

import json
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from transformers import SchedulerType

from ..data.mixture import check_sources
from ..data.templates import check_chat_template
from ..errors import RecipeError
from ..fields import DatasetSource, _to_sources, arg
from ..paths import check_path
from .checks import (
    _positive,
    check_context,
    check_hub,
    check_mixture,
    check_model,
    check_output_dir,
    is_local_speech_model,
    local_config,
)
from .common import LoraArgs, ModelArgs
from .trainer import TrainerArgs

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
            raise RecipeError(
                "needs eval_datasets (held-out text to choose the best state on), or set it false", key="keep_best"
            )
        if not 0 <= self.merge_with_base <= 1:
            raise RecipeError(f"must be in [0, 1], got {self.merge_with_base}", key="merge_with_base")
        if self.merge_with_base != 1 and self.use_peft and not self.merge_lora:
            raise RecipeError(
                "merging with the base needs the merged model: set merge_lora: true (or drop merge_with_base)",
                key="merge_with_base",
            )
        if self.use_peft and self.trainable not in ("auto", "all", "lora"):
            raise RecipeError(
                f"use_peft trains LoRA adapters: drop trainable: {self.trainable} (or use_peft)", key="trainable"
            )
        if self.trainable in ("factors", "factors+norms") and not static and os.path.isdir(self.model_name_or_path):
            config = Path(self.model_name_or_path, "config.json")
            if config.is_file() and "compression_config" not in json.loads(config.read_text()):
                raise RecipeError(
                    f"{self.trainable} needs a low-rank (compressed) model; {self.model_name_or_path} is dense",
                    key="trainable",
                )

    MODEL_ROLE: typing.ClassVar[str] = "the model"

    def check(self, static: bool) -> None:
        """The checks of every training stage (sft, kd, cpt), before any model loads."""
        check_model(self.model_name_or_path, static, f"{self.MODEL_ROLE} (a Hub id or a local model folder)")
        if is_local_speech_model(self.model_name_or_path):
            raise RecipeError(
                f"{self.model_name_or_path} is a speech model (Whisper): sft, kd and cpt train causal "
                "language models; speech models are compressed and distilled (compress, "
                "feature-distill)",
                key="model_name_or_path",
            )
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
    kd_temperature: float = arg(1.0, help="Softmax temperature τ > 0 of both distributions; the loss is scaled by τ².")
    kd_alpha: float = arg(0.0, help="Weight of the cross-entropy on the labels, in [0, 1]: α·CE + (1−α)·τ²·D.")

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
    packing_strategy: str = arg(
        "wrapped",
        help="Packing of text: wrapped (contiguous blocks), bfd, bfd_split.",
        choices=["bfd", "bfd_split", "wrapped"],
    )
    assistant_only_loss: bool | None = arg(None, help="Distil assistant tokens only (default: true for messages).")
    chat_template_path: str | None = arg(None, help="A .jinja chat template (messages), or a shipped name (chatml).")

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
    perplexity_max_length: int = arg(256, help="Window of the perplexity measured before/after on eval_datasets.")
    max_length: int | None = arg(256, help="Block length: new and replay text are packed separately into blocks.")
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
                raise RecipeError("set merge_with_base or merge_grid (which chooses it), not both", key="merge_grid")
            labels = [source.tag for source in self.eval_datasets]
            if not any(x.startswith("old") for x in labels) or not any(x.startswith("new") for x in labels):
                raise RecipeError(
                    "needs an old_* and a new_* set in eval_datasets (the held-out domains α is chosen "
                    f"on), got {labels}",
                    key="merge_grid",
                )
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
    tokenizer_vocab_size: int = arg(2048, help="Vocabulary size of the trained tokenizer (special tokens included).")
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
    audio_encoder: str | None = arg(
        None,
        help="`model_type: speech-llm`: the Whisper checkpoint (Hub id or folder) whose encoder hears the audio.",
    )
    language_model: str | None = arg(
        None, help="`model_type: speech-llm`: the causal LM checkpoint (Hub id or folder) that reads and writes."
    )

    @property
    def whisper(self) -> bool:
        return self.model_config.get("model_type") == "whisper"

    @property
    def speech_llm(self) -> bool:
        return self.model_config.get("model_type") == "speech-llm"

    def check(self, static: bool) -> None:
        if not self.model_config:
            raise RecipeError("required: the LlamaConfig of the tiny model", key="model_config")
        if self.speech_llm:
            return self._check_speech_llm(static)
        for key in ("audio_encoder", "language_model"):
            if getattr(self, key):
                raise RecipeError("only with model_config.model_type: speech-llm", key=key)
        if not self.tokenizer_files:
            raise RecipeError("required: text files to train the tokenizer on", key="tokenizer_files")
        for i, path in enumerate(self.tokenizer_files):
            check_path(path, f"tokenizer_files[{i}]", static)
        if self.model_config.get("model_type", "llama") not in ("llama", "whisper"):
            raise RecipeError("model_type: llama (default), whisper or speech-llm", key="model_config.model_type")
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

    def _check_speech_llm(self, static: bool) -> None:
        """Assembled from two checkpoints, not trained here (speech-sft trains it)."""
        unknown = set(self.model_config) - {"model_type", "stack_factor", "projector_hidden_size"}
        if unknown:
            raise RecipeError(
                f"unknown key(s) {sorted(unknown)}: a speech-llm takes stack_factor, projector_hidden_size",
                key="model_config",
            )
        for key in ("stack_factor", "projector_hidden_size"):
            value = self.model_config.get(key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise RecipeError(f"must be a positive integer, got {value!r}", key=f"model_config.{key}")
        for key in ("tokenizer_files", "datasets", "eval_datasets"):
            if getattr(self, key):
                raise RecipeError("a speech-llm is assembled, not trained here: remove it", key=key)
        for key in ("audio_encoder", "language_model"):
            check_model(getattr(self, key), static, "a checkpoint", key=key)
        if local_config(self.audio_encoder) is not None and local_config(self.language_model) is not None:
            from ..speech.assembly import check_parts

            check_parts(self.audio_encoder, self.language_model, "audio_encoder", "language_model")
        check_output_dir(self, static)
        check_hub(self.push_to_hub, self.hub_model_id, "hub_model_id")
