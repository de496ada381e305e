"""Recipe of the eval stage: perplexities, the forgetting report, French task ROUGE, lighteval tasks."""

import importlib.util
import typing
from dataclasses import dataclass

from ..data.mixture import check_sources
from ..errors import RecipeError
from ..fields import DatasetSource, _to_sources, arg
from ..paths import check_path
from .checks import _positive, check_context, check_model, check_output_dir, local_config
from .common import ModelArgs, StageArgs


@dataclass
class EvalRecipe(ModelArgs, StageArgs):
    """`llm4all eval`: perplexity (old/new domain, forgetting report), French task ROUGE, lighteval tasks."""

    COLUMNS: typing.ClassVar[tuple[str, ...]] = ()

    perplexity_datasets: list[DatasetSource] = arg(
        factory=list,
        help="Held-out text sets (a `text` column), each reported under its name (old_*/new_* for the forgetting "
        "report).",
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
    max_generations: int = arg(8, help="Budget of generations for the whole evaluation (each map-reduce step counts).")
    max_new_tokens: int = arg(64, help="Tokens per generation.")
    chunk_tokens: int = arg(384, help="Meetings too long for the context are summarised by chunks of this many tokens.")
    chunk_overlap: int = arg(64, help="Overlap of consecutive chunks, in tokens.")
    lighteval_tasks: list[str] = arg(
        factory=list,
        help="lighteval tasks: llm4all_simsamu_next_turn|0 and llm4all_meeting_summary|0 (on simsamu_dataset / "
        "meetings_dataset, offline), or any lighteval task string (needs the Hub).",
    )
    lighteval_max_samples: int | None = arg(None, help="Samples per lighteval task (default: all).")
    speech_recipe: str | None = arg(
        None,
        help="A speech-text model (speech-llm): the speech-sft recipe it was trained with. Its source, tasks, "
        "instructions and splits give the held-out rows (the same calls it never saw), scored per task: WER/CER of "
        "transcriptions, perplexity and ROUGE of next turns and fiches.",
    )
    speech_split: str = arg("test", help="The split of speech_recipe's rows that is evaluated.")
    cascade_asr: str | None = arg(
        None, help="The cascade the speech-text model is compared with: this Whisper transcribes the same audio ..."
    )
    cascade_lm: str | None = arg(
        None, help="... and this causal LM answers from the transcript (the instruction after it, same template)."
    )
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
        if self.speech_recipe or self.cascade_asr or self.cascade_lm:
            self.check_speech(static)
        if (
            self.simsamu_dataset is None
            and self.meetings_dataset is None
            and not self.perplexity_datasets
            and not self.lighteval_tasks
            and not self.speech_recipe
        ):
            raise RecipeError(
                "nothing to evaluate: give perplexity_datasets, a task dataset or lighteval_tasks",
                key="perplexity_datasets",
            )
        _positive(self, "max_generations", "max_new_tokens", "chunk_tokens", "perplexity_max_length")
        check_context(self.model_name_or_path, self.max_new_tokens, "max_new_tokens")
        if self.lighteval_tasks and importlib.util.find_spec("lighteval") is None:
            raise RecipeError(
                "lighteval is not installed: pip install 'llm4all-recipes[eval]' (or `make install`)",
                key="lighteval_tasks",
            )
        if not 0 <= self.chunk_overlap < self.chunk_tokens:
            raise RecipeError("need 0 <= chunk_overlap < chunk_tokens", key="chunk_overlap")
        check_output_dir(self, static)

    def check_speech(self, static: bool) -> None:
        if not self.speech_recipe:
            raise RecipeError(
                "the cascade is compared on speech_recipe's rows: give speech_recipe", key="speech_recipe"
            )
        check_path(self.speech_recipe, "speech_recipe", static)
        if bool(self.cascade_asr) != bool(self.cascade_lm):
            raise RecipeError("a cascade is a Whisper and a text model: give both, or neither", key="cascade_lm")
        for key in ("cascade_asr", "cascade_lm"):
            if getattr(self, key):
                check_model(getattr(self, key), static, "", key=key)
        if local_config(self.model_name_or_path) is not None:
            from ..models import model_kind

            if (kind := model_kind(self.model_name_or_path)) != "speech-llm":
                raise RecipeError(
                    f"speech_recipe evaluates a speech-llm; {self.model_name_or_path} is a {kind} model",
                    key="model_name_or_path",
                )
            if (
                self.cascade_asr
                and local_config(self.cascade_asr) is not None
                and local_config(self.cascade_lm) is not None
            ):
                from ..speech.assembly import check_parts

                check_parts(self.cascade_asr, self.cascade_lm, "cascade_asr", "cascade_lm")
