"""Recipes of the stages that make a model smaller without a TRL trainer: compress and feature-distill (low-rank),
prune, and the checkpoint conversions export-dense and convert."""

import typing
from dataclasses import dataclass
from typing import Literal

from ..errors import RecipeError
from ..fields import arg
from ..tracking import check_trackers
from .checks import _positive, check_hub, check_mixture, check_model, check_output_dir, is_local_speech_model
from .common import MixtureArgs, ModelArgs, StageArgs


@dataclass
class CalibrationArgs:
    num_calibration_samples: int = arg(128, help="Calibration windows drawn (seeded) from the `datasets` text.")
    calibration_seq_len: int = arg(512, help="Tokens per calibration window.")
    calibration_batch_size: int = arg(8, help="Windows per forward pass of a decoder layer.")
    device: str = arg("auto", help="Where each decoder layer runs: auto (cuda when available), cpu, cuda, cuda:1 ...")
    perplexity_max_length: int = arg(512, help="Window of the perplexity measured before/after on eval_datasets.")
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
        if speech is not None:  # a speech recipe given a text model, or the reverse, is refused before it runs
            from ..data.mixture import peek_columns

            for i, src in enumerate(self.datasets):
                columns = peek_columns(src, f"datasets[{i}]")
                if columns is not None and ("audio" in columns) != speech:
                    raise RecipeError(
                        f"{src.path} holds recordings (an `audio` column) but {self.model_name_or_path} is a text model"
                        if not speech
                        else f"{self.model_name_or_path} is a speech model but {src.path} has "
                        "no `audio` column (recordings with their transcripts)",
                        key=f"datasets[{i}]",
                    )
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
    ratio: float = arg(0.2, help="Fraction of the targeted linear parameters removed (SVD-LLM convention), in (0, 1).")
    method: Literal["svd", "asvd", "whitening", "svd_llm_v2", "outcov", "refit"] = arg(
        "whitening",
        help="Initialiser: svd (plain truncated SVD), asvd (activation-scaled), whitening (SVD-LLM, Cholesky of "
        "the input Gram), svd_llm_v2 (SVD-LLM V2's truncation: eigendecomposition of the Gram, no Cholesky, exact "
        "where the Gram is singular), outcov (projection on the top output-covariance eigenvectors), refit "
        "(whitening fitted to the original model's outputs from the inputs the already compressed layers give, one "
        "input of a block at a time: docs/COMPRESSION.md).",
    )
    asvd_alpha: float = arg(0.5, help="asvd: the scaling is diag(mean|x|^alpha).")
    jitter: float = arg(1e-6, help="whitening: first relative jitter tried when the Gram is not positive definite.")
    rank_allocation: Literal["uniform", "bottom_first", "loss", "svd_llm_v2", "explicit", "module_ratios"] = arg(
        "uniform",
        help="uniform ranks; bottom_first (Lillama: lower ranks from the first layers upward until the budget is "
        "met); loss (greedy on each matrix's truncation error); svd_llm_v2 (SVD-LLM V2: within each kind of "
        "matrix, ratios inversely proportional to the log of each one's truncation loss); "
        "explicit (`ranks`); module_ratios (`module_ratios`, "
        "measured on the model by benchmarks/sensitivity.py).",
    )
    ranks: dict[str, int] = arg(factory=dict, help="explicit allocation: {module name or glob: rank}.")
    module_ratios: dict[str, float] = arg(
        factory=dict,
        help="module_ratios allocation: {module name or glob: ratio removed from each matrix it matches}, the first "
        "matching pattern deciding; unmatched matrices stay dense; together they must remove `ratio`.",
    )
    exclude: list[str] = arg(
        factory=list,
        help="Matrices left dense (names or globs, e.g. v_proj); `ratio` still counts every targeted matrix, so the "
        "others are compressed more. Not with explicit or module_ratios (say it in those).",
    )
    rank_multiple: int = arg(1, help="Round ranks to a multiple (8, 64 on GPUs) without exceeding the budget.")
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
        if self.rank_allocation == "module_ratios" and not self.module_ratios:
            raise RecipeError(
                "rank_allocation: module_ratios needs `module_ratios: {module: ratio}`", key="module_ratios"
            )
        if self.module_ratios and self.rank_allocation != "module_ratios":
            raise RecipeError("`module_ratios` is only read with rank_allocation: module_ratios", key="module_ratios")
        if self.exclude and self.rank_allocation in ("explicit", "module_ratios"):
            raise RecipeError(
                f"rank_allocation: {self.rank_allocation} already says which matrices stay dense", key="exclude"
            )
        if not 0 < self.min_rank_fraction < 1:
            raise RecipeError("must be in (0, 1)", key="min_rank_fraction")
        if self.method == "refit" and self.propagate == "original":
            raise RecipeError("method refit fits each layer to the inputs the compressed layers give", key="propagate")
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
        "cosine",
        help="Per block: linear warm-up over warmup_ratio of its steps, then cosine decay to 10 %% of "
        "the peak (cosine), or a constant rate after the warm-up.",
    )
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
        _positive(
            self, "learning_rate", "tokens_per_block", "num_holdout_samples", "eval_every", "early_stopping_patience"
        )
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
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
    )

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
            raise RecipeError("required: a `ratio` or explicit sizes (" + ", ".join(self.SIZES) + ")", key="ratio")
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
