"""Multiply a low-rank checkpoint's factors out into a plain checkpoint of its base architecture.

    llm4all export-dense --model_name_or_path outputs/tiny-llama/compress/whitening-60 --output_dir outputs/dense

The result loads anywhere (vLLM, TGI, plain transformers) but has the dense model's size and speed.
"""

from ..cards import CardInfo, model_ref
from ..compression import to_dense
from ..configs import ExportDenseRecipe
from ..errors import RecipeError
from ..models import compression_config, is_speech_model, load_model, load_processor, load_tokenizer
from ..outputs import finish, staged_output


def densify(recipe: ExportDenseRecipe):
    """(dense model, metrics) of the recipe's low-rank checkpoint."""
    model = load_model(recipe.model_name_or_path, dtype=recipe.dtype, revision=recipe.model_revision)
    facts = compression_config(model)
    if facts is None:
        raise RecipeError("not a low-rank checkpoint: nothing to densify", key="model_name_or_path")
    dense = to_dense(model)
    return dense, {"parameters": sum(p.numel() for p in dense.parameters()), "densified_from": dict(facts)}


def run(recipe: ExportDenseRecipe, callbacks=None):
    speech = is_speech_model(recipe.model_name_or_path, recipe.model_revision)
    # saved with the weights: the tokenizer, or a speech model's processor (feature extractor + tokenizer)
    load = load_processor if speech else load_tokenizer
    tokenizer = load(recipe.model_name_or_path, recipe.model_revision)
    if recipe.dry_run:
        _, metrics = densify(recipe)
        print(f"# export-dense {recipe.model_name_or_path}: {metrics['parameters']:,} dense parameters")
        return metrics
    with staged_output(recipe, "export-dense") as tmp:
        dense, metrics = densify(recipe)
        facts = metrics["densified_from"]
        dense.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        finish(
            tmp,
            stage="export-dense",
            recipe=recipe,
            metrics=metrics,
            parent=recipe.model_name_or_path,
            card=CardInfo(
                summary=f"{model_ref(recipe.model_name_or_path)} with its low-rank factors multiplied out: a plain "
                f"{type(dense).__name__} (same function, dense size).",
                training=f"Dense export of a `{facts.get('method')}` low-rank checkpoint (ratio "
                f"{facts.get('achieved_ratio')}).",
                tags=["compression"],
            ),
        )
    return metrics
