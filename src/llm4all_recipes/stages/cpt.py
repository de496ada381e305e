"""Continued pretraining on new text with forgetting control: replay of old text at a token share, LR re-warm
then re-decay, and an optional KL to the model before training.

    accelerate launch -m llm4all_recipes cpt --config recipes/tiny-llama/cpt/replay.yaml

New and replay text are mixed by tokens (replay_share of the total) and packed into fixed-length blocks per
source, so every token keeps its source; the realised replay share is reported. The old/new-domain perplexity
before and after (the forgetting report) goes into metrics.json, the card and forgetting.png.
"""

import logging
import math

import datasets

from ..cards import CardInfo, model_ref, perplexity_results
from ..configs import CPTRecipe
from ..data.mixture import build_mixture, load_eval_sets, text_token_counter
from ..data.packing import StackCollator, text_rows
from ..errors import RecipeError
from ..evaluation import forgetting
from ..evaluation.perplexity import held_out_perplexities
from ..hub import publish_stage_output
from ..models import load_model, load_tokenizer, resolve_device
from ..outputs import finish, staged_output
from ..trainers.cpt import CPTTrainer
from ..training import fit, lora_config, print_plan, save_trained, text_eval_rows, training_facts_md

logger = logging.getLogger(__name__)


def build_rows(recipe: CPTRecipe, tokenizer) -> tuple[datasets.Dataset, dict]:
    """Packed rows of new and replay text with their `kl_mask`, and the realised mixture."""
    seed = recipe.seed if recipe.data_seed is None else recipe.data_seed
    count = text_token_counter(tokenizer)
    new, new_report = build_mixture(
        recipe.datasets, needed=("text",), seed=seed, size=recipe.mixture_size, count_tokens=count
    )
    kl_new = 1 if recipe.kl_on == "all" else 0
    rows, dropped = text_rows(
        list(new["text"]), tokenizer, recipe.max_length, kl_mask=[kl_new] * recipe.max_length, replay=0
    )
    report = {
        "new_rows": len(rows),
        "dropped_tail_tokens": dropped,
        "mixture": new_report,
        "replay_mixture": [],
    }
    if recipe.replay_share > 0:
        target = math.ceil(recipe.replay_share / (1 - recipe.replay_share) * len(rows) * recipe.max_length)
        replay, replay_report = build_mixture(recipe.replay_datasets, needed=("text",), seed=seed, size=target,
                                              count_tokens=count, key="replay_datasets")  # fmt: skip
        replay_rows, dropped = text_rows(
            list(replay["text"]), tokenizer, recipe.max_length, kl_mask=[1] * recipe.max_length, replay=1
        )
        rows += replay_rows
        report.update(replay_rows=len(replay_rows), replay_mixture=replay_report)
        report["dropped_tail_tokens"] += dropped
    if not rows:
        raise RecipeError(f"not one block of {recipe.max_length} tokens in the training text", key="datasets")
    report["replay_share_target"] = recipe.replay_share
    report["replay_share"] = round(report.get("replay_rows", 0) / len(rows), 4)
    report["tokens"] = len(rows) * recipe.max_length
    return datasets.Dataset.from_list(rows).shuffle(seed=seed), report


def run(recipe: CPTRecipe, callbacks=None):
    # 1. Tokenizer, packed rows (new + replay), held-out sets: before any model loads.
    tokenizer = load_tokenizer(recipe.model_name_or_path, recipe.model_revision)
    rows, data = build_rows(recipe, tokenizer)
    evals = load_eval_sets(recipe.eval_datasets, needed=("text",))
    logger.info("continued pretraining on %d blocks (%d tokens), replay share %.3f (target %.3f)", len(rows),
                data["tokens"], data["replay_share"], recipe.replay_share)  # fmt: skip
    if recipe.dry_run:
        print(f"# cpt: replay share {data['replay_share']} of the blocks (target {recipe.replay_share})")
        return print_plan(recipe, "cpt", rows, tokenizer, data["mixture"] + data["replay_mixture"])

    with staged_output(recipe, "cpt", resume=True) as tmp:
        # 2. Model, and the reference model of the KL (the model before this stage, by default).
        model = load_model(recipe.model_name_or_path, dtype=recipe.dtype, revision=recipe.model_revision)
        reference = None
        if recipe.kl_coef > 0:
            ref_path = recipe.reference_model_name_or_path or recipe.model_name_or_path
            if (
                load_tokenizer(ref_path, key="reference_model_name_or_path").get_vocab()
                != tokenizer.get_vocab()
            ):
                raise RecipeError(
                    "the reference model has a different tokenizer", key="reference_model_name_or_path"
                )
            reference = load_model(ref_path, dtype=recipe.reference_dtype, key="reference_model_name_or_path")
        device = resolve_device("auto")

        before = held_out_perplexities(
            model, tokenizer, evals, max_length=recipe.perplexity_max_length, device=device, tag="before"
        )

        # 3. Train (TRL machinery, CE + KL loss), resumable from <output_dir>.tmp.
        recipe.packing, recipe.remove_unused_columns = False, False
        recipe.dataset_kwargs = {"skip_prepare_dataset": True}  # rows are packed per source here
        trainer, metrics = fit(
            recipe, tmp, model=model, tokenizer=tokenizer, train_dataset=rows, trainer_cls=CPTTrainer,
            eval_datasets=text_eval_rows(evals, tokenizer, recipe.max_length) if recipe.keep_best else {},
            peft_config=lora_config(recipe) if recipe.use_peft else None, callbacks=callbacks,
            data_collator=StackCollator(("input_ids", "attention_mask", "labels", "kl_mask")), teacher_model=reference,
            kl_coef=recipe.kl_coef, kd_loss=recipe.kd_loss, kd_beta=recipe.kd_beta, kd_temperature=recipe.kd_temperature,
        )  # fmt: skip
        trained = save_trained(trainer, tmp, recipe, metrics)
        after = held_out_perplexities(
            trained, tokenizer, evals, max_length=recipe.perplexity_max_length, device=device, tag="after"
        )
        metrics.update(eval_before=before, eval=after, data=data)
        old, new = _domains(evals)
        if old and new:
            points = [{"model": "before", "old": before[old]["perplexity"], "new": before[new]["perplexity"]},
                      {"model": "after", "old": after[old]["perplexity"], "new": after[new]["perplexity"]}]  # fmt: skip
            forgetting.plot(points, tmp / "forgetting.png", old, new)
            metrics["forgetting"] = {"old": old, "new": new, "points": points}
        finish(
            tmp,
            stage="cpt",
            recipe=recipe,
            metrics=metrics,
            parent=recipe.model_name_or_path,
            card=CardInfo(
                summary=f"{model_ref(recipe.model_name_or_path)} after continued pretraining on new text"
                + (f" with {recipe.replay_share:.0%} replay" if recipe.replay_share else "")
                + (f" and a KL to the model before training (×{recipe.kl_coef})" if recipe.kl_coef else "")
                + ".",
                training=cpt_md(recipe, metrics),
                results=perplexity_results(
                    metrics["eval"], recipe.eval_datasets, recipe.perplexity_max_length
                ),
                data_report=data["mixture"] + data["replay_mixture"],
                tags=["continued-pretraining"],
            ),
        )
    metrics["published"] = publish_stage_output(recipe, "model")
    return metrics


def _domains(evals: dict) -> tuple[str | None, str | None]:
    """The old- and new-domain eval sets, by name (old_* / new_*), when both are there."""
    old = next((k for k in evals if k.startswith("old")), None)
    new = next((k for k in evals if k.startswith("new")), None)
    return old, new


def cpt_md(recipe: CPTRecipe, metrics: dict) -> str:
    data = metrics["data"]
    lines = [
        f"- {data['tokens']:,} tokens per epoch in blocks of {recipe.max_length}: replay share {data['replay_share']:.3f} "
        f"(target {recipe.replay_share}); {data['dropped_tail_tokens']} tail tokens of the packing left out",
        f"- learning rate {recipe.learning_rate}, `{recipe.lr_scheduler_type}` after {recipe.warmup_steps} warm-up steps "
        f"(re-warm, re-decay); {metrics['train']['global_step']} steps",
        f"- KL to {model_ref(recipe.reference_model_name_or_path or recipe.model_name_or_path)}: "
        + (f"{recipe.kd_loss} × {recipe.kl_coef} on {recipe.kl_on} tokens" if recipe.kl_coef else "off"),
        *training_facts_md(metrics),
    ]
    if "forgetting" in metrics:
        f = metrics["forgetting"]
        lines += ["", "#### Forgetting", "", forgetting.table(f["points"], f["old"], f["new"]), "",
                  "![learning vs forgetting](forgetting.png)"]  # fmt: skip
    return "\n".join(lines)
