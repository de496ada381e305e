"""Recipes of the stages that make training data: cache-teacher, select, generate and build-dataset (with the
split and simsamu keys that transcribe shares)."""

import typing
from dataclasses import dataclass
from typing import Literal

from ..data.mixture import check_sources
from ..data.templates import check_chat_template, prompt_variables
from ..errors import RecipeError
from ..fields import DatasetSource, _to_sources, arg
from ..paths import check_path
from .checks import _positive, check_context, check_hub, check_mixture, check_model, check_output_dir
from .common import MixtureArgs, ModelArgs, StageArgs


@dataclass
class CacheTeacherRecipe(MixtureArgs, StageArgs):
    """`llm4all cache-teacher`: tokenise and pack the data, run the teacher once, store its top-k per token."""

    teacher_model_name_or_path: str | None = arg(None, help="The teacher (Hub id or folder).")
    teacher_dtype: Literal["auto", "float32", "bfloat16", "float16"] = arg("auto", help="Dtype the teacher runs in.")
    data_format: Literal["text", "messages"] = arg(
        "text",
        help="text: packed into contiguous blocks; messages: one chat per row, assistant tokens trained.",
    )
    max_length: int = arg(256, help="Tokens per row (the block length of packed text).")
    top_k: int = arg(64, help="Teacher log-probs kept per token (the vocabulary size makes the cache exact).")
    kd_temperature: float = arg(1.0, help="Temperature of the cached log-probs (the kd recipe must use the same).")
    cache_dtype: Literal["float16", "float32"] = arg("float16", help="Storage dtype of the log-probs.")
    batch_size: int = arg(8, help="Rows per teacher forward.")
    shard_rows: int = arg(1024, help="Rows per memory-mapped shard file.")
    device: str = arg("auto", help="Where the teacher runs: auto (cuda when available), cpu, cuda ...")
    chat_template_path: str | None = arg(None, help="messages: a .jinja chat template or a shipped name (chatml).")

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
            self.chat_template_path = check_chat_template(self.chat_template_path, self.data_format == "messages")
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
    band: list[float] = arg(factory=lambda: [0.1, 0.9], help="keep: band — the [low, high] perplexity quantiles kept.")
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
            raise RecipeError(f"expected [low, high] quantiles with 0 <= low < high <= 1, got {self.band}", key="band")
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
    system_prompt: str | None = arg(None, help="A system message (shipped prompt name or .jinja file), or none.")
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
    max_new_tokens: int = arg(256, help="Tokens generated at most per answer (an answer that reaches it is truncated).")
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
            raise RecipeError("required: the input dataset (a build-dataset output or a Hub id)", key="dataset")
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
        for key, needed in (
            ("prompt", self.input_column),
            ("chunk_prompt", self.input_column),
            ("merge_prompt", "summaries"),
            ("system_prompt", None),
        ):
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
    download_audio: bool = arg(False, help="simsamu from the Hub: also download the .m4a audio (not used here).")
    # meetings
    layout: Literal["auto", "turns", "summre"] = arg("auto", help="meetings: input layout (auto-detected by columns).")
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
