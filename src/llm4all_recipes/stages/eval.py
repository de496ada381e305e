"""Evaluate a model: perplexity on held-out text (and the forgetting report along its lineage), ROUGE on the
French tasks (next SAMU regulator turn, meeting summaries with map-reduce), lighteval tasks.

    llm4all eval --config recipes/tiny-llama/eval/simsamu.yaml

Writes metrics.json, forgetting.png and a report card (model-index) into output_dir, and adds the results
to the evaluated model's own card when it is a local folder (`update_model_card`).
"""

import json
import logging
import shutil
from pathlib import Path

from ..cards import dataset_id, eval_result, perplexity_results, result, results_table
from ..configs import EvalRecipe
from ..data.mixture import load_eval_sets, load_source
from ..errors import RecipeError
from ..evaluation import forgetting
from ..evaluation.generation import Budget, meeting_summaries, simsamu_next_turn
from ..evaluation.perplexity import held_out_meter
from ..fields import DatasetSource
from ..hub import local_source
from ..models import load_model, load_tokenizer, resolve_device
from ..outputs import read_lineage, staged_output, write_run_files

logger = logging.getLogger(__name__)


def lineage_models(model_path: str) -> list[tuple[str, str]]:
    """(label, folder) of the model's ancestors that are local model folders, oldest first, then the model."""
    chain = []
    entries = read_lineage(model_path)[:-1]
    for entry, after in zip(entries, [*entries[1:], {}]):
        folder = entry.get("output_dir") or entry.get("model")
        if after.get("stage") == "convert":
            continue  # pickle weights: the convert stage's safetensors copy stands for them (the same tensors)
        if folder and (Path(folder) / "config.json").is_file():
            chain.append(("base" if entry["stage"] == "convert" else entry["stage"], folder))
    return [*chain, ("this model", model_path)]


def run(recipe: EvalRecipe, callbacks=None):
    if recipe.speech_recipe:
        return run_speech(recipe)
    # 1. Data first (errors before any model loads).
    tokenizer = load_tokenizer(recipe.model_name_or_path, recipe.model_revision)
    ppl_sets = load_eval_sets(recipe.perplexity_datasets, needed=("text",), key="perplexity_datasets")
    simsamu, meetings = task_sets(recipe)
    if recipe.compare_to is None:
        compare = lineage_models(recipe.model_name_or_path)
    else:
        compare = [*((Path(p).name, p) for p in recipe.compare_to), ("this model", recipe.model_name_or_path)]
    if recipe.dry_run:
        print(
            f"# eval {recipe.model_name_or_path}: perplexity on {list(ppl_sets)} for {[c[0] for c in compare]}; "
            f"simsamu {len(simsamu) if simsamu else 0} rows, meetings {len(meetings) if meetings else 0}; "
            f"{recipe.max_generations} generations at most"
        )
        return {}

    with staged_output(recipe, "eval") as tmp:
        # 2. Perplexity of the model (and of its lineage: the forgetting report).
        device = resolve_device(recipe.device)
        measure = held_out_meter(recipe, tokenizer, ppl_sets, device)
        metrics: dict = {"perplexity": {}, "models": [c[0] for c in compare]}
        for label, path in compare:  # the evaluated model comes last and stays loaded
            model = load_model(path, dtype=recipe.dtype)
            values = measure(model, label, path)
            metrics["perplexity"][label] = {k: v["perplexity"] for k, v in values.items()}
        metrics["perplexity_tokens"] = {k: v.get("tokens") for k, v in values.items()}  # of the evaluated model

        # 3. Generations (simsamu next turns, meeting summaries) within one budget; lighteval (imported only here).
        model.to(device)
        metrics.update(generations(recipe, model, tokenizer, simsamu, meetings))
        model.to("cpu")
        if recipe.lighteval_tasks:
            from ..evaluation.lighteval_tasks import run_lighteval

            metrics["lighteval"] = run_lighteval(
                recipe.model_name_or_path,
                recipe.lighteval_tasks,
                str(tmp / "lighteval"),
                simsamu=recipe.simsamu_dataset,
                meetings=recipe.meetings_dataset,
                max_samples=recipe.lighteval_max_samples,
            )

        # 4. The forgetting report, the run files and the report card (and the model's card, when asked).
        old, new = recipe.old_domain or _first(ppl_sets, "old"), recipe.new_domain or _first(ppl_sets, "new")
        if old and new:
            points = [{"model": label, "old": v[old], "new": v[new]} for label, v in metrics["perplexity"].items()]
            forgetting.plot(
                points, tmp / "forgetting.png", old, new, arrows=[(i, i + 1) for i in range(len(points) - 1)]
            )
            metrics["forgetting"] = {"old": old, "new": new, "points": points}
        results = results_of(metrics, recipe)
        write_run_files(tmp, stage="eval", recipe=recipe, metrics=metrics, parent=recipe.model_name_or_path)
        (tmp / "README.md").write_text(report_card(recipe, metrics, results), encoding="utf-8")
        if recipe.update_model_card and Path(recipe.model_name_or_path, "README.md").is_file():
            add_to_model_card(Path(recipe.model_name_or_path), recipe, metrics, results, tmp / "forgetting.png")
    return metrics


def run_speech(recipe: EvalRecipe):
    """A speech-text model, beside the cascade when one is given, on the held-out rows of its speech-sft recipe."""
    from ..evaluation import speech
    from ..models import chat_markers, load_processor
    from ..parsing import parse_recipe
    from ..speech.asr import Transcriber
    from ..speech.sft_data import speech_rows

    # 1. The rows (errors before any model loads): the training recipe's source, tasks, instructions and splits.
    trained = parse_recipe("speech-sft", ["--config", recipe.speech_recipe], static=True)
    splits, report = speech_rows(local_source(trained.source), trained)
    rows = splits.get(recipe.speech_split) or []
    if not rows:
        raise RecipeError(
            f"no row in split {recipe.speech_split!r} of {trained.source} (splits: "
            f"{ {k: len(v) for k, v in splits.items()} })",
            key="speech_split",
        )
    if recipe.dry_run:
        print(f"# eval {recipe.model_name_or_path}: {len(rows)} {recipe.speech_split} rows {report['rows']}")
        return {}

    with staged_output(recipe, "eval") as tmp:
        # 2. The speech-text model, then the cascade, on the same rows and budget.
        device = resolve_device(recipe.device)
        budget = {"generations": recipe.max_generations, "max_new_tokens": recipe.max_new_tokens}
        model = load_model(recipe.model_name_or_path, dtype=recipe.dtype).to(device).eval()
        processor = load_processor(recipe.model_name_or_path)
        scores = {
            "speech-llm": speech.speech_llm_scores(
                model, processor, rows, end=chat_markers(processor.tokenizer)[1], **budget
            )
        }
        del model
        if recipe.cascade_asr:
            asr = load_model(recipe.cascade_asr, dtype=recipe.dtype, key="cascade_asr")
            transcriber = Transcriber(
                asr, load_processor(recipe.cascade_asr, key="cascade_asr"), language="fr", device=device
            )
            lm = load_model(recipe.cascade_lm, dtype=recipe.dtype, key="cascade_lm").to(device).eval()
            tokenizer = load_tokenizer(recipe.cascade_lm, key="cascade_lm")
            scores["cascade"] = speech.cascade_scores(
                transcriber, lm, tokenizer, rows, end=chat_markers(tokenizer)[1], **budget
            )
        compared = speech.comparison(scores["speech-llm"], scores.get("cascade", {}))
        metrics = {
            "speech": {"split": recipe.speech_split, "rows": report["rows"].get(recipe.speech_split), **scores},
            "comparison": compared,
        }
        # 3. Run files, the report card, and the model's own card.
        results = speech_results(scores["speech-llm"], trained.source, recipe.speech_split)
        write_run_files(tmp, stage="eval", recipe=recipe, metrics=metrics, parent=recipe.model_name_or_path)
        body = results_table(results)
        if compared:
            body += (
                f"\n\nAgainst the cascade (`{recipe.cascade_asr}` transcribes, `{recipe.cascade_lm}` answers from the "
                f"transcript), on the same {len(rows)} rows:\n\n" + speech.comparison_md(compared)
            )
        (tmp / "README.md").write_text(report_card(recipe, metrics, results, body), encoding="utf-8")
        if recipe.update_model_card and Path(recipe.model_name_or_path, "README.md").is_file():
            add_to_model_card(Path(recipe.model_name_or_path), recipe, metrics, results, tmp / "none.png", body)
    return metrics


def speech_results(scores: dict, source: str, split: str) -> list[dict]:
    names = {"transcription": "transcription", "next_turn": "next regulator turn", "fiche": "fiche"}
    return [
        result(f"simsamu {names[task]} (from the audio)", metric, value, dataset=dataset_id(source), split=split)
        for task, values in scores.items()
        for metric, value in values.items()
        if metric in ("wer", "cer", "perplexity", "rouge1", "rouge2", "rougeL")
    ]


def task_sets(recipe: EvalRecipe):
    """(simsamu rows or None, meeting rows or None) the recipe asks to generate on."""
    simsamu = meetings = None
    if recipe.simsamu_dataset:
        source = DatasetSource(path=recipe.simsamu_dataset, split=recipe.simsamu_split)
        simsamu = load_source(source, "simsamu_dataset", ("id", "prompt", "completion"))
    if recipe.meetings_dataset:
        source = DatasetSource(path=recipe.meetings_dataset, split=recipe.meetings_split)
        columns = ["id", "turns", "summary", *(["chunks"] if _has_chunks(recipe) else [])]
        meetings = load_source(source, "meetings_dataset", columns)
    return simsamu, meetings


def generations(recipe: EvalRecipe, model, tokenizer, simsamu, meetings) -> dict:
    """The next-turn and meeting-summary scores, within `max_generations` generations in all."""
    out: dict = {}
    budget = Budget(recipe.max_generations)
    if simsamu is not None:
        out["simsamu"] = simsamu_next_turn(model, tokenizer, simsamu, budget, recipe.max_new_tokens)
    if meetings is not None:
        context = getattr(model.config, "max_position_embeddings", 2048)
        out["meetings"] = meeting_summaries(
            model,
            tokenizer,
            meetings,
            budget,
            context=context,
            chunk_tokens=recipe.chunk_tokens,
            overlap=recipe.chunk_overlap,
            max_new_tokens=recipe.max_new_tokens,
        )
    out["generations_left"] = budget.left
    return out


def _has_chunks(recipe: EvalRecipe) -> bool:
    from ..data.mixture import peek_columns

    columns = peek_columns(DatasetSource(path=recipe.meetings_dataset, split=recipe.meetings_split), "meetings_dataset")
    return bool(columns and "chunks" in columns)


def _first(sets: dict, prefix: str) -> str | None:
    return next((k for k in sets if k.startswith(prefix)), None)


def results_of(metrics: dict, recipe: EvalRecipe) -> list[dict]:
    """The evaluated model's results: held-out perplexity, ROUGE (with the number of generations), lighteval."""
    tokens = metrics.get("perplexity_tokens", {})
    values = {
        k: {"perplexity": v, "tokens": tokens.get(k)} for k, v in metrics["perplexity"].get("this model", {}).items()
    }
    rows = perplexity_results(values, recipe.perplexity_datasets, recipe.perplexity_max_length)
    if "rougeL" in metrics.get("simsamu", {}):
        rows.append(
            result(
                "simsamu next regulator turn",
                "rougeL",
                metrics["simsamu"]["rougeL"],
                dataset=dataset_id(recipe.simsamu_dataset),
                split=recipe.simsamu_split,
                samples=metrics["simsamu"]["generations"],
            )
        )
    for m in ("rouge1", "rouge2", "rougeL"):
        if m in metrics.get("meetings", {}):
            rows.append(
                result(
                    "meeting summaries",
                    m,
                    metrics["meetings"][m],
                    dataset=dataset_id(recipe.meetings_dataset),
                    split=recipe.meetings_split,
                    samples=metrics["meetings"]["meetings"],
                )
            )
    for task, values in metrics.get("lighteval", {}).items():
        rows += [result(task, k, v) for k, v in values.items() if isinstance(v, int | float)]
    return rows


def results_md(metrics: dict, results: list[dict]) -> str:
    lines = [results_table(results)]
    if "forgetting" in metrics:
        f = metrics["forgetting"]
        lines += [
            "",
            "Learning vs forgetting along the model's lineage:",
            "",
            forgetting.table(f["points"], f["old"], f["new"]),
            "",
            "![learning vs forgetting](forgetting.png)",
        ]
    for task in ("simsamu", "meetings"):
        for s in metrics.get(task, {}).get("samples", [])[:2]:
            lines += [
                "",
                f"<details><summary>{task}: {s['id']}</summary>",
                "",
                f"> {s['prediction']}",
                "",
                "</details>",
            ]
    return "\n".join(lines)


def report_card(recipe: EvalRecipe, metrics: dict, results: list[dict], body: str | None = None) -> str:
    from huggingface_hub import ModelCardData

    data = ModelCardData(
        base_model=recipe.model_name_or_path if not Path(recipe.model_name_or_path).exists() else None,
        tags=["llm4all", "llm4all-eval"],
        model_name=recipe.model_name_or_path,
        eval_results=[eval_result(r) for r in results] or None,
    )
    title = f"# Evaluation of `{recipe.model_name_or_path}`"
    return f"---\n{data.to_yaml()}\n---\n\n{title}\n\n{body or results_md(metrics, results)}\n"


EVAL_SUBSECTION = "### By llm4all eval"


def add_to_model_card(
    folder: Path, recipe: EvalRecipe, metrics: dict, results: list[dict], plot: Path, body: str | None = None
) -> None:
    """Merge the results into the evaluated model's card (model-index) and add an evaluation section."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(folder / "README.md")
    existing = card.data.eval_results or []
    keys = {(r["dataset_name"], r["metric_type"]) for r in results}
    kept = [e for e in existing if (e.dataset_name, e.metric_type) not in keys]
    card.data.eval_results = kept + [eval_result(r) for r in results]
    if not card.data.model_name:
        card.data.model_name = folder.name
    # one Evaluation section: the stage's own table, then this evaluation (replaced when rerun)
    head, sep, rest = card.text.partition("\n## Evaluation\n")
    if not sep:
        head, rest = card.text.rstrip(), ""
    section, nxt, tail = rest.partition("\n## ")
    section = section.split(EVAL_SUBSECTION)[0].rstrip()
    added = f"{EVAL_SUBSECTION} (`{recipe.origin.path}`)\n\n{body or results_md(metrics, results)}\n"
    text = f"{head}\n## Evaluation\n{section}\n\n{added}" + (f"\n## {tail}" if nxt else "")
    card.text = text
    if plot.is_file():
        shutil.copyfile(plot, folder / "forgetting.png")
    card.save(folder / "README.md")
    logger.info("results added to %s", folder / "README.md")
    (folder / "eval_results.json").write_text(json.dumps(results, indent=1))
