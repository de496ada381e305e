"""Data targeting: choose the new documents worth continued pretraining.

    llm4all select --config recipes/tiny-llama/select/new-domain.yaml

1. exact and near duplicates (MinHash-LSH) are removed, the first of each group kept;
2. documents sharing a word n-gram with the protected evaluation sets are removed (decontamination);
3. the rest is scored by perplexity under a reference model and kept by `keep`: the lowest, the highest, or a
   quantile band (default [0.1, 0.9]: drops boilerplate at the bottom and noise at the top).
Writes the kept documents (save_to_disk, with their perplexity), `dropped.jsonl` (every removed document
and why), the report and a dataset card.
"""

import json
import logging
import math

import datasets

from ..configs import SelectRecipe
from ..data.mixture import load_data, load_source
from ..data.selection import contaminated, duplicates
from ..evaluation.perplexity import document_perplexities
from ..models import load_model, load_tokenizer, resolve_device
from ..outputs import finish_dataset, staged_output

logger = logging.getLogger(__name__)


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default)."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def by_perplexity(recipe: SelectRecipe, ppl: dict[int, float]) -> tuple[dict[int, str], dict]:
    """{index: reason} of the documents the `keep` rule removes, and its thresholds."""
    values = list(ppl.values())
    if recipe.keep == "band":
        lo, hi = quantile(values, recipe.band[0]), quantile(values, recipe.band[1])
        dropped = {
            i: f"perplexity {p:.2f} below the {recipe.band[0]} quantile ({lo:.2f})" for i, p in ppl.items() if p < lo
        }
        dropped |= {
            i: f"perplexity {p:.2f} above the {recipe.band[1]} quantile ({hi:.2f})" for i, p in ppl.items() if p > hi
        }
        return dropped, {"low": lo, "high": hi}
    ordered = sorted(ppl, key=ppl.get, reverse=recipe.keep == "highest")
    kept = set(ordered[: math.ceil(recipe.keep_fraction * len(ordered))])
    cut = max(ppl[i] for i in kept) if recipe.keep == "lowest" else min(ppl[i] for i in kept)
    side = "above" if recipe.keep == "lowest" else "below"
    return {
        i: f"perplexity {ppl[i]:.2f} {side} the kept {recipe.keep} {recipe.keep_fraction:.0%} ({cut:.2f})"
        for i in ppl
        if i not in kept
    }, {"cut": cut}


def run(recipe: SelectRecipe, callbacks=None):
    # 1. Documents, duplicates and contamination: no model needed.
    tokenizer = load_tokenizer(recipe.model_name_or_path, recipe.model_revision)
    docs, _, mixture = load_data(recipe, tokenizer)
    texts = list(docs["text"])
    dropped = screen(recipe, texts)
    survivors = [i for i in range(len(texts)) if i not in dropped]
    if recipe.dry_run:
        print(f"# select: {len(texts)} documents, {len(dropped)} duplicates or contaminated, {len(survivors)} to score")
        return {"documents": len(texts), "removed_before_scoring": len(dropped)}

    with staged_output(recipe, "select") as tmp:
        # 2. Perplexity under the reference model, then the keep rule.
        model = load_model(recipe.model_name_or_path, dtype=recipe.dtype, revision=recipe.model_revision)
        model.to(resolve_device(recipe.device))
        scores = document_perplexities(
            model,
            tokenizer,
            [texts[i] for i in survivors],
            max_length=recipe.score_max_length,
            batch_size=recipe.batch_size,
        )
        ppl = dict(zip(survivors, scores))
        by_ppl, thresholds = by_perplexity(recipe, ppl)
        dropped |= by_ppl
        kept = [i for i in survivors if i not in dropped]
        reasons = count_reasons(dropped)
        report = {
            "documents": len(texts),
            "kept": len(kept),
            "dropped": reasons,
            "keep": recipe.keep,
            "thresholds": thresholds,
            "perplexity_quantiles": {q: quantile(scores, q) for q in (0.0, 0.1, 0.5, 0.9, 1.0)} if scores else {},
            "splits": {"train": len(kept)},
        }
        logger.info("select: kept %d of %d documents (%s)", len(kept), len(texts), reasons)

        # 3. Kept dataset + the list of what was removed and why.
        rows = [{"text": texts[i], "perplexity": ppl[i], "index": i} for i in kept]
        table = datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
        table.save_to_disk(str(tmp))
        with open(tmp / "dropped.jsonl", "w", encoding="utf-8") as f:
            for i in sorted(dropped):
                row = {"index": i, "reason": dropped[i], "perplexity": ppl.get(i), "text": texts[i][:200]}
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        finish_dataset(
            tmp,
            stage="select",
            recipe=recipe,
            dataset=table,
            report=report,
            facts=_facts(recipe, report),
            metrics={**report, "data": mixture},
            card_report={**report, "skipped": dict(reasons)},
            source=", ".join(s.path for s in recipe.datasets),
        )
    return report


def screen(recipe: SelectRecipe, texts: list[str]) -> dict[int, str]:
    """{index: reason} of the exact and near duplicates, and of the documents that share n-grams with a protected
    (evaluation) set."""
    protected = [
        t
        for i, src in enumerate(recipe.decontaminate)
        for t in load_source(src, f"decontaminate[{i}]", ("text",))["text"]
    ]
    dropped = duplicates(texts, threshold=recipe.near_duplicate_threshold, seed=recipe.seed)
    contamination = contaminated(texts, protected, recipe.decontamination_ngram)
    return dropped | {i: r for i, r in contamination.items() if i not in dropped}


def count_reasons(dropped: dict[int, str]) -> dict[str, int]:
    reasons = {"exact duplicate": 0, "near duplicate": 0, "eval overlap": 0, "perplexity": 0}
    for reason in dropped.values():
        kind = (
            "exact duplicate"
            if reason.startswith("exact")
            else "near duplicate"
            if reason.startswith("near")
            else "eval overlap"
            if reason.startswith("shares")
            else "perplexity"
        )
        reasons[kind] += 1
    return reasons


def _facts(recipe: SelectRecipe, report: dict) -> dict:
    rule = (
        f"the perplexity band [{recipe.band[0]}, {recipe.band[1]}] (quantiles)"
        if recipe.keep == "band"
        else f"the {recipe.keep} {recipe.keep_fraction:.0%} by perplexity"
    )
    return {
        "summary": f"French documents selected for continued pretraining: {report['kept']} of {report['documents']}.",
        "steps": [
            f"Exact duplicates (normalised text) and near duplicates (MinHash-LSH on word 5-grams, Jaccard ≥ "
            f"{recipe.near_duplicate_threshold}) removed, the first of each group kept.",
            f"Documents sharing a word {recipe.decontamination_ngram}-gram with the protected evaluation sets "
            f"({', '.join(s.path for s in recipe.decontaminate) or 'none'}) removed.",
            f"Perplexity of the first {recipe.score_max_length} tokens under `{recipe.model_name_or_path}`; kept: "
            f"{rule}.",
            "Every removed document and its reason is in `dropped.jsonl`.",
        ],
        "columns": {
            "text": "the document",
            "perplexity": "under the reference model",
            "index": "position in the input mixture",
        },
        "license": None,
        "task_categories": ["text-generation"],
        "note": "",
    }
