"""Merging checkpoints of one architecture: WiSE-FT with the base model (the forgetting control of
docs/CONTINUED_PRETRAINING.md), SLERP between two models, task arithmetic, or a soup of runs.

    llm4all merge --config recipes/tiny-llama/merge/wise-ft.yaml

Every model must have the same class, parameter names and shapes (low-rank checkpoints: the same ranks); the
first differing parameter is named otherwise, before anything is written. The math is in merging.py (float32,
exact at the end points, tied weights once). The first model's config, tokenizer and lineage are kept.
"""

from ..cards import CardInfo, model_ref
from ..configs import MergeRecipe
from ..merging import merge_into, same_architecture
from ..models import load_model, load_tokenizer
from ..outputs import finish, staged_output


def run(recipe: MergeRecipe, callbacks=None):
    tokenizer = load_tokenizer(recipe.models[0], key="models[0]")
    models = [load_model(m, dtype=recipe.dtype, key=f"models[{i}]") for i, m in enumerate(recipe.models)]
    for i, model in enumerate(models[1:], 1):
        same_architecture(models[0], model, recipe.models[i])
    metrics = {
        "models": list(recipe.models),
        "weights": list(recipe.weights),
        "method": recipe.method,
        "parameters": sum(p.numel() for p in models[0].parameters()),
    }
    terms = describe(recipe)
    if recipe.dry_run:
        print(f"# merge ({recipe.method}): {terms}")
        return metrics
    with staged_output(recipe, "merge") as tmp:
        merge_into(models, recipe.weights, recipe.method)
        models[0].save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        finish(
            tmp,
            stage="merge",
            recipe=recipe,
            metrics=metrics,
            parent=recipe.models[0],
            card=CardInfo(
                summary=f"A merge of checkpoints ({recipe.method}): {terms}.",
                training=f"Parameters merged tensor by tensor in float32 ({recipe.method}): {terms}.",
                tags=["merge"],
            ),
        )
    return metrics


def describe(recipe: MergeRecipe) -> str:
    """The merge as a formula of model references, for the card and the dry run."""
    refs = [model_ref(m) for m in recipe.models]
    if recipe.method == "task_arithmetic":
        return refs[0] + "".join(
            f" + {w:g} × ({r} − {refs[0]})" for w, r in zip(recipe.weights[1:], refs[1:], strict=True)
        )
    if recipe.method == "slerp":
        return f"slerp({refs[0]}, {refs[1]}, t = {recipe.weights[1]:g})"
    return " + ".join(f"{w:g} × {r}" for w, r in zip(recipe.weights, refs, strict=True))
