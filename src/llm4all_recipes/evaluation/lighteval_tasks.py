"""lighteval (0.13) custom tasks on the project's French datasets, run offline through lighteval's Python API.

Tasks (generative, 0-shot, greedy), on datasets in the Hub parquet layout that `publish` writes
(`<folder>/data/<split>-NNNNN-of-NNNNN.parquet` + a README.md whose `configs` name the `default` config):

* `llm4all_simsamu_next_turn` — SimSAMU per-turn rows (`prompt`: system + history, `completion`: the
  regulator's next turn). The model continues the conversation; metric `rougeL_fr`.
* `llm4all_meeting_summary` — meeting rows (`messages`: system, user = instruction + transcript, assistant;
  `summary`). The model answers the system + user messages; metrics `rouge1_fr`, `rouge2_fr`, `rougeL_fr`.

Metrics are ROUGE F1 from `llm4all_recipes.evaluation.rouge` (Unicode words, no English stemming), averaged
over the samples. Usage::

    from llm4all_recipes.evaluation.lighteval_tasks import run_lighteval
    scores = run_lighteval(
        "outputs/tiny-llama/sft/chat", ["llm4all_simsamu_next_turn|0", "llm4all_meeting_summary|0"],
        "outputs/tiny-llama/sft/chat/lighteval",
        simsamu="outputs/datasets/simsamu-turns", meetings="outputs/datasets/meetings", max_samples=50,
    )
    # {"llm4all_simsamu_next_turn|0": {"rougeL_fr": 0.21}, "llm4all_meeting_summary|0": {"rouge1_fr": ...}}

lighteval's own files land in `output_dir`: `results/<model>/results_<date>.json` and
`details/<model>/<date>/details_<task>_<date>.parquet` (prompt, generation and scores of each sample). Any
other lighteval task string (`gsm8k|0`, ...) may be added to `tasks` by users who can reach the Hub.

With the lighteval CLI (`--custom-tasks` this file), the tasks come from the environment:
`LLM4ALL_LIGHTEVAL_SIMSAMU`, `LLM4ALL_LIGHTEVAL_MEETINGS` (dataset folders) and `LLM4ALL_LIGHTEVAL_SPLIT`
(default `test`). The CLI sends each conversation as one user message (see below), `run_lighteval` does not.

Offline rules (lighteval 0.13):

* Keep `huggingface-hub<2`: lighteval's CLI breaks with 2.x.
* lighteval's task registry imports `tiny_benchmarks`, which downloads `tinyBenchmarks.pkl` unless
  `lighteval/tasks/tasks/tinyBenchmarks.pkl` exists; `make install` writes an empty placeholder.
  `run_lighteval` stops with an explanation when it is missing and `HF_HUB_OFFLINE` is set.
* Custom tasks read a local folder: `hf_repo=<folder>`, `hf_subset="default"`; task strings are `name|0`.
* lighteval's prediction cache keys on its own arguments (model *name*, generation settings, task config),
  not on the weights: a model retrained in place would get the old predictions. `run_lighteval` uses a
  fresh cache under `output_dir` per run and deletes it afterwards; pass `cache_dir` only to reuse one on
  purpose. (lighteval also joins its cache folder with the model name, so an absolute model path would put
  the cache inside the model folder: the name given to lighteval is the folder's base name.)
* Importing `lighteval.pipeline` (or running a transformers model) turns autograd off for the whole thread
  (`torch.set_grad_enabled(False)`), and the pipeline reseeds `random` and NumPy: `run_lighteval` imports
  it lazily and restores those states. Import only this module, never lighteval's pipeline, from training
  code; the package's CLI never imports this module.

lighteval's chat prompt builder knows one user turn (plus an optional system prompt), not a dialogue
history. So each `Doc` carries the conversation in `doc.specific["messages"]`, and `run_lighteval` gives the
model a prompt manager that renders it with the model's chat template (`add_generation_prompt=True`).
Models without a chat template (and other lighteval backends) get `doc.query`, the same conversation as
plain text ending with "Assistant :".
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np
from lighteval.metrics.metrics_sample import SampleLevelComputation
from lighteval.metrics.utils.metric_utils import SampleLevelMetricGrouping
from lighteval.tasks.lighteval_task import LightevalTaskConfig
from lighteval.tasks.prompt_manager import PromptManager
from lighteval.tasks.requests import Doc, SamplingMethod

from llm4all_recipes.evaluation.rouge import rouge

logger = logging.getLogger(__name__)

SIMSAMU_TASK = "llm4all_simsamu_next_turn"
MEETING_TASK = "llm4all_meeting_summary"
MESSAGES = "messages"  # key of the conversation in Doc.specific
_LABELS = {"user": "Utilisateur", "assistant": "Assistant"}


# --- metric ------------------------------------------------------------------------------------------


class FrenchRouge(SampleLevelComputation):
    """ROUGE F1 of the (first) generation against the reference, with the project's French tokenizer."""

    def __init__(self, rouge_types: tuple[str, ...] = ("rougeL",)):
        self.types = tuple(rouge_types)

    def compute(self, doc: Doc, model_response, **kwargs) -> dict[str, float]:
        texts = model_response.final_text
        prediction = texts[0] if texts else ""
        scores = rouge([prediction], [doc.get_golds()[0]], self.types)
        return {f"{t}_fr": scores[t] for t in self.types}


def french_rouge(rouge_types: tuple[str, ...] = ("rougeL",)) -> SampleLevelMetricGrouping:
    """The lighteval metric: one value per type (`rougeL_fr`, ...), averaged over the samples."""
    names = [f"{t}_fr" for t in rouge_types]
    return SampleLevelMetricGrouping(
        metric_name=names,
        higher_is_better=dict.fromkeys(names, True),
        category=SamplingMethod.GENERATIVE,
        sample_level_fn=FrenchRouge(rouge_types),
        corpus_level_fn=dict.fromkeys(names, np.mean),
    )


# --- documents ---------------------------------------------------------------------------------------


def _messages(items: Any) -> list[dict[str, str]]:
    return [{"role": str(m["role"]), "content": str(m["content"] or "")} for m in items]


def plain_text(messages: list[dict[str, str]]) -> str:
    """The conversation for models without a chat template, ending where the assistant speaks."""
    parts = [
        f"{_LABELS.get(m['role'], m['role'])} : {m['content']}" if m["role"] != "system" else m["content"]
        for m in messages
    ]
    return "\n".join([*parts, f"{_LABELS['assistant']} :"])


def chat_doc(messages: list[dict[str, str]], reference: str, task_name: str) -> Doc:
    return Doc(
        query=plain_text(messages),
        choices=[reference],
        gold_index=0,
        specific={MESSAGES: messages},
        task_name=task_name,
    )


def simsamu_doc(row: dict, task_name: str) -> Doc:
    """Per-turn SimSAMU row: `prompt` (system + history) → `completion` (the regulator's turn)."""
    return chat_doc(_messages(row["prompt"]), _messages(row["completion"])[-1]["content"], task_name)


def meeting_doc(row: dict, task_name: str) -> Doc:
    """Meeting row: `messages` without the final assistant turn → `summary` (or that assistant turn)."""
    messages = _messages(row["messages"])
    answer = ""
    while messages and messages[-1]["role"] == "assistant":
        answer = messages.pop()["content"]
    return chat_doc(messages, row.get("summary") or answer, task_name)


# --- tasks -------------------------------------------------------------------------------------------


def _task(name: str, prompt_function, folder: str, split: str, max_new_tokens: int, rouge_types) -> LightevalTaskConfig:
    path = Path(folder).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"{name}: dataset folder {folder!r} does not exist (Hub parquet layout expected)")
    return LightevalTaskConfig(
        name=name,
        prompt_function=prompt_function,
        hf_repo=str(path),
        hf_subset="default",
        metrics=[french_rouge(rouge_types)],
        hf_avail_splits=[split],
        evaluation_splits=[split],
        few_shots_split=None,
        generation_size=max_new_tokens,
        stop_sequence=[f"\n{_LABELS['user']} :"],  # plain-text prompts only; chat prompts stop at EOS
    )


def _hub_layout(folder: str | None, dest: Path) -> str | None:
    """lighteval reads datasets with `load_dataset`: a `build-dataset` output (a save_to_disk folder) is first
    written in the Hub's parquet layout under `dest`; a repo id published to the local hub folder reads there."""
    from ..hub import export_parquet, is_dataset_folder
    from ..paths import local_hub_copy

    if folder is None:
        return None
    folder = local_hub_copy(folder, "dataset")
    if not is_dataset_folder(folder):
        return folder
    if not dest.is_dir():
        export_parquet(Path(folder), dest)
    return str(dest)


def make_tasks(
    simsamu: str | None, meetings: str | None, split: str = "test", max_new_tokens: int = 64
) -> list[LightevalTaskConfig]:
    """The task configs for the dataset folders given (a task per folder; None leaves it out)."""
    tasks = []
    if simsamu:
        tasks.append(_task(SIMSAMU_TASK, simsamu_doc, simsamu, split, max_new_tokens, ("rougeL",)))
    if meetings:
        tasks.append(_task(MEETING_TASK, meeting_doc, meetings, split, max_new_tokens, ("rouge1", "rouge2", "rougeL")))
    return tasks


def tasks_module(tasks: list[LightevalTaskConfig]) -> types.ModuleType:
    """A custom-tasks module (lighteval's Registry accepts a module object with a TASKS_TABLE)."""
    module = types.ModuleType("llm4all_lighteval_tasks")
    module.TASKS_TABLE = list(tasks)
    return module


def __getattr__(name: str):
    # `lighteval ... --custom-tasks <this file>`: the table comes from the environment, built on first use
    if name == "TASKS_TABLE":
        env = os.environ.get
        return make_tasks(
            env("LLM4ALL_LIGHTEVAL_SIMSAMU"),
            env("LLM4ALL_LIGHTEVAL_MEETINGS"),
            env("LLM4ALL_LIGHTEVAL_SPLIT", "test"),
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class MessagesPromptManager(PromptManager):
    """lighteval's prompt manager, but a Doc with `specific["messages"]` is rendered as that conversation.

    With `max_length` (the model's context), a conversation whose prompt leaves less than the doc's
    `generation_size` tokens is shortened: the oldest turns go first (never the system messages nor the
    last message), then the middle of the longest message is cut (a meeting transcript keeps its beginning,
    its end and the instruction around it). lighteval would otherwise cut the prompt on the left and allow
    one new token, to every prompt of the batch.
    """

    def __init__(self, *args, max_length: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_length = max_length
        self._warned: set[str] = set()

    def _prepare_chat_template(self, doc: Doc, tokenize: bool = True):
        messages = (doc.specific or {}).get(MESSAGES)
        if not messages:
            return super()._prepare_chat_template(doc, tokenize=tokenize)
        messages = [dict(m) for m in messages]
        if self.system_prompt:  # the model-level system prompt goes first
            if messages[0]["role"] == "system":
                messages[0]["content"] = f"{self.system_prompt}\n\n{messages[0]['content']}"
            else:
                messages.insert(0, {"role": "system", "content": self.system_prompt})
        if not tokenize:
            return messages
        if self.max_length:
            messages = self._fit(messages, self.max_length - (doc.generation_size or 0), doc.task_name)
        return self._render(messages)

    def _render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _excess(self, messages: list[dict[str, str]], budget: int) -> int:
        return len(self.tokenizer(self._render(messages))["input_ids"]) - budget

    def _fit(self, messages: list[dict[str, str]], budget: int, task: str) -> list[dict[str, str]]:
        excess = self._excess(messages, budget)
        if excess > 0 and task not in self._warned:
            self._warned.add(task)
            logger.warning("%s: prompts longer than the model's context are shortened to %d tokens", task, budget)
        while excess > 0:
            history = [i for i, m in enumerate(messages[:-1]) if m["role"] != "system"]
            if history:
                del messages[history[0]]
            else:
                i = max(range(len(messages)), key=lambda k: len(messages[k]["content"]))
                ids = self.tokenizer(messages[i]["content"], add_special_tokens=False)["input_ids"]
                keep = len(ids) - excess - 16  # margin: decoding and re-tokenising may shift a few tokens
                if keep <= 0:
                    break  # cannot fit: lighteval truncates
                head, tail = ids[: keep // 2], ids[len(ids) - (keep - keep // 2) :]
                decode = self.tokenizer.decode
                messages[i] = {**messages[i], "content": f"{decode(head)} […] {decode(tail)}"}
            excess = self._excess(messages, budget)
        return messages


# --- running -----------------------------------------------------------------------------------------


def _task_name(spec: str) -> str:
    parts = spec.split("|")
    name = parts[1] if len(parts) == 3 else parts[0]
    return name.split("@")[0]


def _check_tiny_benchmarks_placeholder() -> None:
    import importlib.util

    origin = importlib.util.find_spec("lighteval").origin
    path = Path(origin).parent / "tasks" / "tasks" / "tinyBenchmarks.pkl"
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline and not path.exists():
        raise RuntimeError(
            f"{path} is missing: lighteval's task registry would download it at import. Offline, create an "
            f"empty placeholder (`make install` does): python -c \"import pathlib; pathlib.Path('{path}').touch()\""
        )


@contextlib.contextmanager
def _restore_global_state():
    """lighteval turns autograd off at import and reseeds `random`/NumPy: put them back afterwards."""
    import torch

    grad, py_state, np_state = torch.is_grad_enabled(), random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        torch.set_grad_enabled(grad)
        random.setstate(py_state)
        np.random.set_state(np_state)


def _model_name(model_path: str) -> str:
    """The name lighteval files results and cache under: a local folder's base name, else the Hub id."""
    path = Path(model_path).expanduser()
    return path.resolve().name if path.exists() else model_path


def run_lighteval(
    model_path: str,
    tasks: list[str],
    output_dir: str,
    *,
    simsamu: str | None = None,
    meetings: str | None = None,
    max_samples: int | None = None,
    cache_dir: str | None = None,
    split: str = "test",
    max_new_tokens: int = 64,
    device: str = "cpu",
    batch_size: int = 8,
    save_details: bool = True,
) -> dict[str, dict[str, float]]:
    """Evaluate a transformers model on lighteval tasks; {task: {metric: value}} (stderr left out).

    `tasks` are lighteval task strings (`llm4all_simsamu_next_turn|0`, `gsm8k|0`, ...); the custom ones need
    their dataset folder (`simsamu`, `meetings`). Greedy generation, batches of `batch_size`, on `device`.
    `cache_dir=None` gives a fresh prediction cache (a temporary folder under output_dir, removed after).
    """
    if isinstance(tasks, str):
        tasks = tasks.split(",")
    tasks = [t.strip() for t in tasks if t.strip()]
    folders = {SIMSAMU_TASK: simsamu, MEETING_TASK: meetings}
    for spec in tasks:
        name = _task_name(spec)
        if name in folders and not folders[name]:
            raise ValueError(
                f"task {name} needs its dataset folder (`{'simsamu' if name == SIMSAMU_TASK else 'meetings'}`)"
            )
    _check_tiny_benchmarks_placeholder()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    simsamu, meetings = (
        _hub_layout(f, out / f"data-{name}") for f, name in ((simsamu, "simsamu"), (meetings, "meetings"))
    )
    fresh_cache = cache_dir is None
    cache = Path(tempfile.mkdtemp(prefix="lighteval-cache-", dir=out)) if fresh_cache else Path(cache_dir)
    try:
        with _restore_global_state():
            aggregated = _evaluate(
                model_path,
                tasks,
                out,
                cache,
                make_tasks(simsamu, meetings, split, max_new_tokens),
                max_samples=max_samples,
                device=device,
                batch_size=batch_size,
                save_details=save_details,
            )
    finally:
        if fresh_cache:
            shutil.rmtree(cache, ignore_errors=True)
    return {
        task: {metric: float(value) for metric, value in metrics.items() if not metric.endswith("_stderr")}
        for task, metrics in aggregated.items()
        if task != "all"
    }


def _evaluate(model_path, tasks, out: Path, cache: Path, custom, *, max_samples, device, batch_size, save_details):
    import torch
    from lighteval.logging.evaluation_tracker import EvaluationTracker
    from lighteval.models.model_input import GenerationParameters
    from lighteval.models.transformers.transformers_model import TransformersModel, TransformersModelConfig
    from lighteval.pipeline import ParallelismManager, Pipeline, PipelineParameters
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # a chat template writes the special tokens itself (BOS included): do not add them again
    chat = AutoTokenizer.from_pretrained(str(model_path)).chat_template is not None
    config = TransformersModelConfig(
        model_name=_model_name(model_path),
        tokenizer=str(model_path),
        add_special_tokens=not chat,
        device=device,
        batch_size=batch_size,
        model_parallel=False,
        cache_dir=str(cache),
        generation_parameters=GenerationParameters(temperature=0.0),
    )
    dtype = torch.float32 if str(device) == "cpu" else "auto"
    hf_model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=dtype).to(device).eval()
    # from_model: no Accelerator (which would pick a GPU whatever `device` says), our weights and device
    model = TransformersModel.from_model(hf_model, config)
    model.prompt_manager = MessagesPromptManager(
        use_chat_template=model.use_chat_template,
        tokenizer=model.tokenizer,
        system_prompt=config.system_prompt,
        max_length=model.max_length,
    )
    tracker = EvaluationTracker(output_dir=str(out), save_details=save_details)
    params = PipelineParameters(
        launcher_type=ParallelismManager.NONE,
        custom_tasks_directory=tasks_module(custom),  # typed str, but the Registry takes a module
        max_samples=max_samples,
    )
    pipeline = Pipeline(tasks=",".join(tasks), pipeline_parameters=params, evaluation_tracker=tracker, model=model)
    pipeline.evaluate()
    pipeline.save_and_push_results()
    return tracker.metrics_logger.metric_aggregated
