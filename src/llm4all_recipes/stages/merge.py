"""A weighted average of checkpoints of one architecture: WiSE-FT (Wortsman et al. 2022) with the base model,
the forgetting control of docs/CONTINUED_PRETRAINING.md, or a soup of runs.

    llm4all merge --config recipes/tiny-llama/merge/wise-ft.yaml

Every model must have the same class, parameter names and shapes (low-rank checkpoints: the same ranks); the
first differing parameter is named otherwise, before anything is written. Each tensor is averaged in float32
(`torch.lerp` for two models, so that weight 0 returns the first model and weight 1 the second exactly) and cast
back to the first model's dtype. The first model's config, tokenizer and lineage are kept.
"""

import torch

from ..cards import CardInfo, model_ref
from ..configs import MergeRecipe
from ..errors import RecipeError
from ..hub import publish_stage_output
from ..models import load_model, load_tokenizer
from ..outputs import finish, staged_output


def same_architecture(reference, other, name: str) -> None:
    """One clear line when `other` cannot be averaged with `reference`."""
    if type(other) is not type(reference):
        raise RecipeError(f"{name} is a {type(other).__name__}, the first model a {type(reference).__name__}: "
                          "only checkpoints of one architecture merge", key="models")  # fmt: skip
    ref, oth = reference.state_dict(), other.state_dict()
    for key in ref.keys() | oth.keys():
        if key not in ref or key not in oth:
            raise RecipeError(f"{name} and the first model differ: parameter {key} is in only one of them",
                              key="models")  # fmt: skip
        if ref[key].shape != oth[key].shape:
            raise RecipeError(f"{name} and the first model differ at {key}: shape {list(oth[key].shape)} vs "
                              f"{list(ref[key].shape)} (low-rank checkpoints merge only with equal ranks)", key="models")  # fmt: skip


@torch.no_grad()
def merge_into(models: list, weights: list[float]) -> None:
    """Average the models' parameters into the first one, in place."""
    states, done = [m.state_dict() for m in models], set()
    for key, target in states[0].items():
        if not target.is_floating_point() or target.data_ptr() in done:
            continue  # tied weights (embeddings = lm_head) are one tensor: averaged once
        done.add(target.data_ptr())
        if len(models) == 2:
            merged = torch.lerp(states[0][key].float(), states[1][key].float(), weights[1])
        else:
            merged = sum(w * s[key].float() for w, s in zip(weights, states, strict=True))
        target.copy_(merged.to(target.dtype))


def run(recipe: MergeRecipe, callbacks=None):
    tokenizer = load_tokenizer(recipe.models[0], key="models[0]")
    models = [load_model(m, dtype=recipe.dtype, key=f"models[{i}]") for i, m in enumerate(recipe.models)]
    for i, model in enumerate(models[1:], 1):
        same_architecture(models[0], model, recipe.models[i])
    metrics = {"models": list(recipe.models), "weights": list(recipe.weights),
               "parameters": sum(p.numel() for p in models[0].parameters())}  # fmt: skip
    if recipe.dry_run:
        print(
            f"# merge: {', '.join(f'{w:g} x {m}' for w, m in zip(recipe.weights, recipe.models, strict=True))}"
        )
        return metrics
    with staged_output(recipe, "merge") as tmp:
        merge_into(models, recipe.weights)
        models[0].save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        terms = " + ".join(
            f"{w:g} × {model_ref(m)}" for w, m in zip(recipe.weights, recipe.models, strict=True)
        )
        finish(
            tmp,
            stage="merge",
            recipe=recipe,
            metrics=metrics,
            parent=recipe.models[0],
            card=CardInfo(
                summary=f"A weighted average of checkpoints: {terms}.",
                training=f"Parameters averaged tensor by tensor in float32: {terms}.",
                tags=["merge"],
            ),
        )
    metrics["published"] = publish_stage_output(recipe, "model")
    return metrics
