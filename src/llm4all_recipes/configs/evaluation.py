"""Recipe of the eval stage: perplexities, the forgetting report, French task ROUGE, lighteval tasks."""

import importlib.util
import typing
from dataclasses import dataclass

from ..data.mixture import check_sources
from ..errors import RecipeError
from ..fields import DatasetSource, _to_sources, arg
from ..paths import check_path
from .checks import _positive, check_context, check_model, check_output_dir
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
            raise RecipeError(
                "lighteval is not installed: pip install 'llm4all-recipes[eval]' (or `make install`)",
                key="lighteval_tasks",
            )
        if not 0 <= self.chunk_overlap < self.chunk_tokens:
            raise RecipeError("need 0 <= chunk_overlap < chunk_tokens", key="chunk_overlap")
        check_output_dir(self, static)
