"""What every training stage shares: data loading before the model, the dry-run plan, fitting a TRL
trainer inside the staged output folder (resume included), saving, and the final run files + card.

A stage module (stages/sft.py, ...) reads top to bottom with these calls:

    tokenizer = load_tokenizer(...)
    train, evals, report = load_data(recipe, tokenizer)          # errors here: before any model loads
    if recipe.dry_run: return print_plan(...)
    model = load_model(...)
    with staged_output(recipe.output_dir, ...) as tmp:
        trainer, metrics = fit(recipe, tmp, ...)
        save_trained(trainer, tmp, recipe)
        finish(tmp, ...)                                           # recipe.yaml, metrics.json, lineage, card
"""

import copy
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import yaml

from .configs import resolved_recipe
from .data.mixture import build_mixture, load_eval_sets, text_token_counter
from .models import count_parameters

logger = logging.getLogger(__name__)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def load_data(recipe: Any, tokenizer=None):
    """(train dataset, {label: eval dataset}, mixture report) of a recipe's `datasets` / `eval_datasets`.

    Text stages weight sources by tokens (counted with `tokenizer`), chat stages by rows.
    """
    text = "text" in recipe.COLUMNS
    train, report = build_mixture(
        recipe.datasets,
        needed=recipe.COLUMNS,
        seed=recipe.seed if getattr(recipe, "data_seed", None) is None else recipe.data_seed,
        size=recipe.mixture_size,
        count_tokens=text_token_counter(tokenizer) if text else None,
    )
    evals = load_eval_sets(recipe.eval_datasets, needed=recipe.COLUMNS)
    return train, evals, report


def sequence_lengths(dataset, tokenizer, max_length: int | None) -> list[int]:
    """Tokens per training row as the SFT trainer sees them (chat template applied, EOS after raw text)."""
    if "messages" in dataset.column_names:
        lens = [
            len(tokenizer.apply_chat_template(m, tokenize=True, return_dict=True)["input_ids"])
            for m in dataset["messages"]
        ]
    else:
        lens = [len(ids) + 1 for ids in tokenizer(list(dataset["text"]))["input_ids"]]
    return [min(n, max_length) if max_length else n for n in lens]


def plan(recipe: Any, dataset, tokenizer) -> dict[str, Any]:
    """Token count and number of optimizer steps of a run, computed as the Trainer does."""
    lens = sequence_lengths(dataset, tokenizer, None if recipe.packing else recipe.max_length)
    tokens = sum(lens)
    sequences = math.ceil(tokens / recipe.max_length) if recipe.packing else len(lens)
    batches = math.ceil(sequences / (recipe.per_device_train_batch_size * world_size()))
    per_epoch = max(1, math.ceil(batches / recipe.gradient_accumulation_steps))
    steps = recipe.max_steps if recipe.max_steps > 0 else math.ceil(recipe.num_train_epochs * per_epoch)
    return {
        "rows": len(lens),
        "tokens_per_epoch": tokens,
        "sequences_per_epoch": sequences,
        "world_size": world_size(),
        "sequences_per_step": recipe.per_device_train_batch_size
        * recipe.gradient_accumulation_steps
        * world_size(),
        "steps_per_epoch": per_epoch,
        "steps": steps,
        "tokens_trained": round(tokens * steps / per_epoch),
    }


def print_plan(recipe: Any, stage: str, dataset, tokenizer, report: list[dict]) -> dict[str, Any]:
    facts = plan(recipe, dataset, tokenizer)
    print(f"# llm4all {stage} --dry_run: resolved recipe ({recipe.origin.path})")
    print(yaml.safe_dump(resolved_recipe(recipe), sort_keys=False, allow_unicode=True).rstrip())
    print("# mixture")
    for r in report:
        unit = "tokens" if "used_tokens" in r else "rows"
        print(
            f"#   {r['source']} [{r['split']}]: {r['used_' + unit]}/{r['available_' + unit]} {unit}, share {r['share']:.1%}"
        )
    print(f"# tokens per epoch: {facts['tokens_per_epoch']}  (rows: {facts['rows']})")
    print(
        f"# steps: {facts['steps']}  ({facts['steps_per_epoch']} per epoch, {facts['sequences_per_step']} sequences "
        f"per step on {facts['world_size']} process(es)); tokens trained ≈ {int(facts['tokens_trained'])}"
    )
    return facts


def last_checkpoint(folder: str | os.PathLike) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if os.path.isdir(folder) else None


def _eval_summary(metrics: dict[str, float], labels: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for label in labels:
        loss = metrics.get(f"eval_{label}_loss", metrics.get("eval_loss") if len(labels) == 1 else None)
        if loss is not None:
            out[label] = {"loss": loss, "perplexity": math.exp(min(loss, 50))}
    return out


def make_trainer(
    recipe: Any,
    tmp: Path,
    *,
    model,
    tokenizer,
    train_dataset,
    eval_datasets: dict,
    trainer_cls=None,
    peft_config=None,
    callbacks=None,
    **trainer_kwargs,
):
    """The stage's TRL trainer, writing into `tmp` (the Trainer's own push to the Hub is off)."""
    if trainer_cls is None:
        from trl import SFTTrainer as trainer_cls
    args = copy.copy(recipe)
    args.output_dir = str(tmp)
    args.push_to_hub = False  # publishing is hub.publish()'s job, after the stage
    if not eval_datasets:
        args.eval_strategy = "no"
    return trainer_cls(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_datasets or None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
        **trainer_kwargs,
    )


def fit(recipe: Any, tmp: Path, *, eval_datasets: dict, **kwargs):
    """Train in `tmp` (resuming from its last checkpoint); returns (trainer, metrics)."""
    trainer = make_trainer(recipe, tmp, eval_datasets=eval_datasets, **kwargs)
    labels = list(eval_datasets)
    resume = recipe.resume_from_checkpoint or last_checkpoint(tmp)
    before_file = tmp / "eval_before.json"
    if labels and before_file.exists():
        before = json.loads(before_file.read_text())
    elif labels:
        before = _eval_summary(trainer.evaluate(), labels)
        if trainer.is_world_process_zero():
            before_file.write_text(json.dumps(before))
    else:
        before = {}
    if resume:
        logger.warning("resuming from %s", resume)
    result = trainer.train(resume_from_checkpoint=resume)
    after = _eval_summary(trainer.evaluate(), labels) if labels else {}
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    metrics = {
        "train": {
            **result.metrics,
            "global_step": trainer.state.global_step,
            "first_logged_loss": losses[0] if losses else None,
            "last_logged_loss": losses[-1] if losses else None,
            "num_tokens": next(
                (h["num_tokens"] for h in reversed(trainer.state.log_history) if "num_tokens" in h), None
            ),
        },
        "eval_before": before,
        "eval": after,
        "world_size": trainer.args.world_size,
        "resumed_from": os.path.basename(resume) if isinstance(resume, str) else None,
        **count_parameters(trainer.model),
    }
    return trainer, metrics


def save_trained(trainer, tmp: Path, recipe: Any) -> None:
    """Final weights at the root of `tmp` (safetensors). LoRA: adapter in adapter/, merged model at the root."""
    if not getattr(recipe, "use_peft", False):
        trainer.save_model(str(tmp))
        return
    adapter = tmp / "adapter"
    trainer.save_model(str(adapter))
    if recipe.merge_lora and trainer.is_world_process_zero():
        from peft import AutoPeftModelForCausalLM

        merged = AutoPeftModelForCausalLM.from_pretrained(str(adapter), dtype="auto").merge_and_unload()
        merged.save_pretrained(str(tmp))
        trainer.processing_class.save_pretrained(str(tmp))
    trainer.accelerator.wait_for_everyone()


def eval_results(metrics: dict) -> list[dict[str, Any]]:
    """model-index rows from a stage's `eval` metrics ({label: {loss, perplexity}})."""
    return [
        {"dataset_name": label, "metric_type": "perplexity", "metric_value": values["perplexity"]}
        for label, values in metrics.get("eval", {}).items()
    ]
