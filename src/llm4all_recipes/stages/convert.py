"""Rewrite a checkpoint published with pickle weights only (pytorch_model*.bin) as safetensors, once.

    llm4all convert --config recipes/croissantllm-base/convert/safetensors.yaml

llm4all loads safetensors only: a pickle file can run code when it is unpickled. This stage is the one place that
reads pickle weights, through transformers' loader, which calls `torch.load(..., weights_only=True)` (tensors and
plain containers only: no code runs); the safetensors copy it writes, with the tokenizer and the generation config,
is what every later step of the folder loads.
"""

from ..cards import CardInfo, model_ref
from ..configs import ConvertRecipe
from ..models import load_model, load_tokenizer
from ..outputs import finish, staged_output


def run(recipe: ConvertRecipe, callbacks=None):
    tokenizer = load_tokenizer(recipe.model_name_or_path, recipe.model_revision)
    if recipe.dry_run:
        print(f"# convert {recipe.model_name_or_path}: pickle weights -> safetensors in {recipe.output_dir}")
        return {}
    with staged_output(recipe, "convert") as tmp:
        model = load_model(recipe.model_name_or_path, dtype=recipe.dtype, revision=recipe.model_revision, pickle=True)
        model.save_pretrained(str(tmp))  # safetensors (transformers' default)
        tokenizer.save_pretrained(str(tmp))
        metrics = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "converted_from": "pickle (weights_only)",
        }
        finish(
            tmp,
            stage="convert",
            recipe=recipe,
            metrics=metrics,
            parent=recipe.model_name_or_path,
            card=CardInfo(
                summary=f"{model_ref(recipe.model_name_or_path)} with its weights stored as safetensors (same "
                "tensors, same function).",
                training="No training: the pickle weights were read with `torch.load(weights_only=True)` and "
                "written as safetensors.",
            ),
        )
    return metrics
