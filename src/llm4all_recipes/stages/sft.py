"""Supervised fine-tuning on conversations with TRL's SFTTrainer (assistant-only loss, optional LoRA).

    llm4all sft --config recipes/tiny-llama/sft/chat.yaml
    accelerate launch --config_file recipes/accelerate_configs/ddp.yaml -m llm4all_recipes sft \\
        --config recipes/<model>/sft/<variant>.yaml [--learning_rate 1e-5 ...]
"""

import logging

from ..cards import CardInfo, perplexity_results
from ..configs import SFTRecipe, has_generation_markers, read_chat_template
from ..data.mixture import load_data
from ..errors import RecipeError
from ..models import add_chat_tokens, load_model, load_tokenizer, prepare_chat_model
from ..outputs import finish, staged_output
from ..training import (
    fit,
    lora_config,
    print_plan,
    rows_cut_before_the_answer,
    save_trained,
    training_facts_md,
)

logger = logging.getLogger(__name__)


def run(recipe: SFTRecipe, callbacks=None):
    # 1. Tokenizer and data: every input error surfaces here, before the model is loaded.
    tokenizer = load_tokenizer(recipe.model_name_or_path, recipe.model_revision)
    if recipe.chat_template_path:
        tokenizer.chat_template = read_chat_template(recipe.chat_template_path)
    added = check_chat_template(recipe, tokenizer)
    train, evals, report = load_data(recipe)
    check_answers_fit(recipe, train, tokenizer)
    if recipe.dry_run:
        return print_plan(recipe, "sft", train, tokenizer, report)

    # 2. Claim <output_dir>.tmp (resume from its last checkpoint), then the model (+ LoRA); rename when done.
    with staged_output(recipe, "sft", resume=True) as tmp:
        model = load_model(
            recipe.model_name_or_path,
            dtype=recipe.dtype,
            revision=recipe.model_revision,
            attn_implementation=recipe.attn_implementation,
        )
        prepare_chat_model(model, tokenizer)  # added markers' embeddings; the end-of-turn token stops generation
        peft_config = lora_config(recipe) if recipe.use_peft else None
        trainer, metrics = fit(
            recipe,
            tmp,
            model=model,
            tokenizer=tokenizer,
            train_dataset=train,
            eval_datasets=evals,
            peft_config=peft_config,
            callbacks=callbacks,
        )
        metrics["data"] = report
        metrics["added_tokens"] = added
        save_trained(trainer, tmp, recipe, metrics)
        card = CardInfo(
            summary="A chat model fine-tuned on French conversations (assistant-only loss).",
            training=_training_md(recipe, metrics),
            results=perplexity_results(metrics.get("eval", {}), recipe.eval_datasets),
            data_report=report,
            chat=True,
        )
        finish(tmp, stage="sft", recipe=recipe, metrics=metrics, parent=recipe.model_name_or_path, card=card)
    return metrics


def check_chat_template(recipe: SFTRecipe, tokenizer) -> list[str]:
    """The tokenizer has a chat template fit for the recipe; returns the template's markers added as tokens."""
    if not tokenizer.chat_template:
        raise RecipeError(
            f"the tokenizer of {recipe.model_name_or_path} has no chat template to render the conversations: set "
            "chat_template_path (a shipped name such as 'chatml', or a .jinja file)",
            key="chat_template_path",
        )
    if recipe.assistant_only_loss and not has_generation_markers(tokenizer.chat_template):
        raise RecipeError(
            f"assistant_only_loss needs a chat template with {{% generation %}} markers; the tokenizer of "
            f"{recipe.model_name_or_path} has none: set chat_template_path (e.g. 'chatml')",
            key="chat_template_path",
        )
    added = add_chat_tokens(tokenizer)
    if added and recipe.use_peft:
        raise RecipeError(
            f"the chat template's markers {', '.join(added)} are not tokens of {recipe.model_name_or_path}'s "
            "tokenizer: they must be added and their embeddings learnt, which LoRA adapters do not "
            "train; train every parameter (trainable: all) or pick a template whose markers exist",
            key="chat_template_path",
        )
    if added and recipe.merge_with_base != 1:
        raise RecipeError(
            f"the chat template adds tokens ({', '.join(added)}): the starting model has a smaller "
            "vocabulary and cannot be merged back; drop merge_with_base",
            key="merge_with_base",
        )
    return added


def check_answers_fit(recipe: SFTRecipe, train, tokenizer) -> None:
    """With an assistant-only loss, conversations cut by max_length before their first answer train nothing."""
    if not recipe.assistant_only_loss or "messages" not in train.column_names:
        return
    cut = rows_cut_before_the_answer(train, tokenizer, recipe.max_length)
    if cut == len(train):
        raise RecipeError(
            f"every training conversation ({cut}) is longer than max_length before its first "
            "assistant token: nothing would be trained; raise max_length",
            key="max_length",
        )
    if cut:
        logger.warning(
            "%d of %d training conversations are cut before their first assistant token at "
            "max_length %d: they train nothing",
            cut,
            len(train),
            recipe.max_length,
        )


def _training_md(recipe: SFTRecipe, metrics: dict) -> str:
    train = metrics["train"]
    lines = [
        "Supervised fine-tuning with TRL's `SFTTrainer`"
        + (" (loss on assistant tokens only)" if recipe.assistant_only_loss else "")
        + (f", LoRA r={recipe.lora_r}, alpha={recipe.lora_alpha}" if recipe.use_peft else ", full fine-tuning")
        + ".",
        "",
        f"- steps: {train['global_step']}, learning rate {recipe.learning_rate}, "
        f"{recipe.per_device_train_batch_size} × {recipe.gradient_accumulation_steps} sequences per device and step, "
        f"{metrics['world_size']} process(es)",
        f"- max length: {recipe.max_length} tokens; final train loss {train.get('train_loss', float('nan')):.4f}",
        *training_facts_md(metrics),
    ]
    if metrics.get("added_tokens"):
        lines.append(
            f"- tokens added for the chat template: {', '.join(f'`{t}`' for t in metrics['added_tokens'])} "
            "(embedding rows initialised to the mean of the existing ones, then trained)"
        )
    for label, after in metrics["eval"].items():
        before = metrics["eval_before"].get(label, {})
        lines.append(
            f"- eval `{label}`: loss {before.get('loss', float('nan')):.4f} → {after['loss']:.4f} "
            f"(perplexity {before.get('perplexity', float('nan')):.2f} → {after['perplexity']:.2f})"
        )
    return "\n".join(lines)
