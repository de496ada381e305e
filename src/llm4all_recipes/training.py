"""What every training stage shares: data loading before the model, the dry-run plan, fitting a TRL
trainer inside the staged output folder (resume included), saving, and the final run files + card.

A stage module (stages/sft.py, ...) reads top to bottom with these calls:

    tokenizer = load_tokenizer(...)
    train, evals, report = load_data(recipe, tokenizer)          # errors here: before any model loads
    if recipe.dry_run: return print_plan(...)
    with staged_output(recipe, "sft", resume=True) as tmp:       # claims <output_dir>.tmp (lock, fingerprint)
        model = load_model(...)
        trainer, metrics = fit(recipe, tmp, ...)                   # resumes from its last complete checkpoint
        save_trained(trainer, tmp, recipe, metrics)
        finish(tmp, ...)                                           # recipe.yaml, metrics.json, lineage, card
"""

import copy
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import yaml

from .errors import RecipeError
from .models import count_parameters
from .paths import write_json
from .resolved import resolved_recipe

logger = logging.getLogger(__name__)


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def sequence_lengths(dataset, tokenizer, max_length: int | None) -> list[int]:
    """Tokens per training row as the SFT trainer sees them (chat template applied, EOS after raw text; rows
    that are already token blocks, as cpt's, as they are)."""
    if "input_ids" in dataset.column_names:
        lens = [len(ids) for ids in dataset["input_ids"]]
    elif "messages" in dataset.column_names:
        lens = [
            len(tokenizer.apply_chat_template(m, tokenize=True, return_dict=True)["input_ids"])
            for m in dataset["messages"]
        ]
    else:
        lens = [len(ids) + 1 for ids in tokenizer(list(dataset["text"]))["input_ids"]]
    return [min(n, max_length) if max_length else n for n in lens]


def rows_cut_before_the_answer(dataset, tokenizer, max_length: int) -> int:
    """Conversations whose every assistant token lies past max_length: truncated, they train nothing (the
    trainer then drops them)."""
    cut = 0
    for messages in dataset["messages"]:
        out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
        cut += not any(out["assistant_masks"][:max_length])
    return cut


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
        "sequences_per_step": recipe.per_device_train_batch_size * recipe.gradient_accumulation_steps * world_size(),
        "steps_per_epoch": per_epoch,
        "steps": steps,
        "tokens_trained": round(tokens * steps / per_epoch),
    }


FEW_STEPS = 10


def few_steps_warning(steps: int, sequences_per_step: int, world: int) -> str | None:
    """A run this short leaves the learning-rate schedule (warm-up, decay) no room: typically a small chat set on
    many GPUs, whose effective batch is the one-GPU recipe's times the number of processes."""
    if steps >= FEW_STEPS:
        return None
    return (
        f"only {steps} optimizer step(s) ({sequences_per_step} sequences per step on {world} process(es)): "
        "lower gradient_accumulation_steps or per_device_train_batch_size (on several GPUs the effective batch "
        "grows with their number), or train more epochs"
    )


def few_steps_callback():
    """A TrainerCallback that warns at the start of training when the run has fewer than FEW_STEPS steps."""
    from transformers import TrainerCallback

    class FewSteps(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            world = args.world_size
            per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * world
            if warning := few_steps_warning(state.max_steps, per_step, world):
                logger.warning(warning)

    return FewSteps()


def print_plan(recipe: Any, stage: str, dataset, tokenizer, report: list[dict]) -> dict[str, Any]:
    facts = plan(recipe, dataset, tokenizer)
    print(f"# llm4all {stage} --dry_run: resolved recipe ({recipe.origin.path})")
    print(yaml.safe_dump(resolved_recipe(recipe), sort_keys=False, allow_unicode=True).rstrip())
    print("# mixture")
    for r in report:
        unit = "tokens" if "used_tokens" in r else "rows"
        print(
            f"#   {r['source']} [{r['split']}]: {r['used_' + unit]}/{r['available_' + unit]} {unit}, share "
            f"{r['share']:.1%}"
        )
    print(f"# tokens per epoch: {facts['tokens_per_epoch']}  (rows: {facts['rows']})")
    print(
        f"# steps: {facts['steps']}  ({facts['steps_per_epoch']} per epoch, {facts['sequences_per_step']} sequences "
        f"per step on {facts['world_size']} process(es)); tokens trained ≈ {int(facts['tokens_trained'])}"
    )
    if recipe.max_steps <= 0 and (
        warning := few_steps_warning(facts["steps"], facts["sequences_per_step"], facts["world_size"])
    ):
        print(f"# WARNING: {warning}")
    return facts


def checkpoint_problem(folder: Path, *, optimizer: bool = True) -> str | None:
    """Why `checkpoint-N` cannot be resumed from, or None when it is complete.

    The Trainer writes the weights, then the optimizer, scheduler and RNG states, and `trainer_state.json` last,
    straight into the folder: a run killed meanwhile leaves a folder that looks like a checkpoint. Complete means:
    the trainer state parses and says step N, the weights are there (whole safetensors files), and, unless the
    run saves the model only, the optimizer and scheduler states too.
    """
    from .models import safetensors_problem

    step = int(folder.name.split("-")[-1])
    try:
        state = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "no trainer_state.json"
    except (OSError, ValueError) as exc:
        return f"unreadable trainer_state.json ({exc})"
    if state.get("global_step") != step:
        return f"trainer_state.json says step {state.get('global_step')}"
    weights = [*folder.glob("*.safetensors")]
    sharded = [folder / "pytorch_model_fsdp_0", *folder.glob("global_step*")]  # FSDP / DeepSpeed layouts
    if not weights and not any(p.exists() for p in sharded):
        return "no weights"
    if index := next(folder.glob("*.safetensors.index.json"), None):
        missing = {f for f in json.loads(index.read_text())["weight_map"].values() if not (folder / f).is_file()}
        if missing:
            return f"missing weight shards {sorted(missing)}"
    for file in weights:
        if problem := safetensors_problem(file):
            return problem
    if optimizer and not any(p.exists() for p in [folder / "optimizer.pt", folder / "optimizer_0", *sharded[1:]]):
        return "no optimizer state"
    if optimizer and not (folder / "scheduler.pt").exists() and not sharded[1:]:
        return "no scheduler state"
    return None


def last_checkpoint(folder: str | os.PathLike, *, optimizer: bool = True) -> str | None:
    """The newest complete `checkpoint-N` of a run folder. Newer incomplete ones (a kill while saving) are moved
    aside into `incomplete/` by the main process, so that the Trainer never writes into or rotates them."""
    from accelerate import PartialState

    folder = Path(folder)
    state = PartialState()
    found = None
    if folder.is_dir():
        found = sorted(
            (p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()),
            key=lambda p: int(p.name.split("-")[-1]),
            reverse=True,
        )
        if state.is_main_process:
            for ckpt in list(found):
                problem = checkpoint_problem(ckpt, optimizer=optimizer)
                if problem is None:
                    break
                aside = folder / "incomplete" / f"{ckpt.name}-{time.strftime('%Y%m%d-%H%M%S')}"
                aside.parent.mkdir(exist_ok=True)
                os.replace(ckpt, aside)
                logger.warning(
                    "%s is incomplete (%s): moved to %s, resuming from the previous one", ckpt, problem, aside
                )
        state.wait_for_everyone()
        found = [p for p in found if p.exists()]
    return str(found[0]) if found else None


def _eval_summary(metrics: dict[str, float], labels: list[str]) -> dict[str, dict[str, float]]:
    out = {}
    for label in labels:
        loss = metrics.get(f"eval_{label}_loss", metrics.get("eval_loss") if len(labels) == 1 else None)
        if loss is not None:
            out[label] = {"loss": loss, "perplexity": math.exp(min(loss, 50))}
    return out


def set_trainable(model, mode: str, use_peft: bool = False) -> str:
    """Freeze what the recipe's `trainable` does not train; returns the mode applied (auto resolved)."""
    from .compression.lowrank import LowRankLinear

    factors = [m for m in model.modules() if isinstance(m, LowRankLinear)]
    if use_peft or mode == "lora":
        return "lora"  # peft freezes the base model itself (speech-sft's projector: its modules_to_save)
    if mode == "projector":  # a speech-text model's first stage: encoder and LM frozen
        model.requires_grad_(False)
        model.projector.requires_grad_(True)
        return mode
    if mode == "auto":
        mode = "factors" if factors else "all"
    if mode == "all":
        return mode
    if not factors:
        raise RecipeError(
            f"{mode} needs a low-rank (compressed) model: this one has no factored layer", key="trainable"
        )
    model.requires_grad_(False)
    for module in factors:
        module.requires_grad_(True)
    if mode == "factors+norms":
        for module in model.modules():
            if "norm" in type(module).__name__.lower():
                module.requires_grad_(True)
    return mode


def text_eval_rows(evals: dict, tokenizer, max_length: int) -> dict:
    """Held-out text sets as fixed-length token blocks (labels = inputs) for the Trainer's evaluation."""
    import datasets

    from .data.packing import text_rows

    return {
        label: datasets.Dataset.from_list(text_rows(list(ds["text"]), tokenizer, max_length)[0])
        for label, ds in evals.items()
    }


def lora_config(recipe):
    """The PEFT LoRA config of a training recipe (use_peft)."""
    from peft import LoraConfig

    return LoraConfig(
        r=recipe.lora_r,
        lora_alpha=recipe.lora_alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=recipe.lora_target_modules or "all-linear",
        task_type="CAUSAL_LM",
    )


# ------------------------------------------------------------------------------------------- precision
MASTER_SHARE = 0.7  # fp32-master when its training states fit in this share of the device (the rest: activations)


def state_bytes(trainable: int, frozen: int, precision: str) -> int:
    """Bytes of weights + gradients + AdamW moments of a model loaded in bf16, trained under `precision`: fp32-master
    4 + 4 + 8 per trained parameter (4 per frozen one), bf16 and bf16-stochastic 2 + 2 + 4 (2 per frozen one)."""
    return trainable * 16 + frozen * 4 if precision == "fp32-master" else trainable * 8 + frozen * 2


def choose_precision(policy: str, trainable: int, frozen: int, device_bytes: int | None, processes: int = 1) -> str:
    """The precision `auto` resolves to: fp32-master when its states (sharded over `processes`) take at most
    MASTER_SHARE of the device's memory (`device_bytes`; None: host memory, not limiting), else bf16-stochastic."""
    if policy != "auto":
        return policy
    need = state_bytes(trainable, frozen, "fp32-master") / processes
    return "fp32-master" if device_bytes is None or need <= MASTER_SHARE * device_bytes else "bf16-stochastic"


def _device_bytes() -> int | None:
    import torch

    return (
        torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        if torch.cuda.is_available()
        else None
    )


def apply_precision(recipe: Any, args: Any, model, trainer_kwargs: dict) -> str:
    """Resolve the recipe's `precision` for a model loaded in bf16/fp16 and set it up: fp32-master upcasts the weights
    (exact) and turns bf16 autocast on; bf16-stochastic gives the Trainer torchao's AdamW with stochastic rounding.
    Returns what was applied ("float32": the model was loaded in float32, nothing to do)."""
    import torch

    dtype = next(model.parameters()).dtype
    if dtype == torch.float32 or getattr(recipe, "precision", "bf16") == "bf16":
        return "float32" if dtype == torch.float32 else "bf16"
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters()) - trainable
    sharded = os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")
    chosen = choose_precision(recipe.precision, trainable, frozen, _device_bytes(), world_size() if sharded else 1)
    if chosen == "fp32-master":
        # the model is saved back in the dtype it was loaded in
        args.saved_dtype = str(dtype).removeprefix("torch.")
        model.float()
        args.bf16, args.fp16 = True, False  # compute in bf16 (autocast), keep and update float32 weights
    else:
        from torchao.optim import _AdamW

        trainer_kwargs["optimizer_cls_and_kwargs"] = (
            _AdamW,
            {
                "lr": args.learning_rate,
                "betas": (args.adam_beta1, args.adam_beta2),
                "eps": args.adam_epsilon,
                "weight_decay": args.weight_decay,
                "bf16_stochastic_round": True,
            },
        )
    logger.info(
        "precision: %s (%s weights loaded; %s of training states under fp32-master)",
        chosen,
        str(dtype).removeprefix("torch."),
        f"{state_bytes(trainable, frozen, 'fp32-master') / 2**30:.1f} GiB",
    )
    return chosen


def fsdp_checkpoints_activations() -> bool:
    """Launched by accelerate with FSDP and its `fsdp_activation_checkpointing` on
    (recipes/accelerate_configs/fsdp.yaml)."""
    on = ("1", "true", "yes")
    return (
        os.environ.get("ACCELERATE_USE_FSDP", "").lower() in on
        and os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "").lower() in on
    )


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
    # the Trainer pickles its arguments into every checkpoint (training_args.bin): no credential goes with them
    args.hub_token = None
    vars(args).pop("origin", None)  # the recipe file's values (its `env:` mapping) and the command line
    if hasattr(
        args, "chat_template_path"
    ):  # the stage has set the tokenizer's template (data.templates.read_chat_template)
        args.chat_template_path = None
    if args.include_num_input_tokens_seen in (
        "no",
        False,
    ):  # counted in trainer_state.json, so a resume keeps it
        args.include_num_input_tokens_seen = "non_padding"
    if not eval_datasets:
        args.eval_strategy = "no"
    if fsdp_checkpoints_activations() and (args.activation_checkpointing or args.gradient_checkpointing):
        # FSDP's own checkpointing wraps the sharded blocks; the Trainer's would add an all-gather per block in
        # the backward pass (and transformers refuses the two together)
        logger.info("activation checkpointing: FSDP's (fsdp_activation_checkpointing in the accelerate config)")
        args.activation_checkpointing = args.gradient_checkpointing = False
    if (
        train_dataset is not None
        and "text" in train_dataset.column_names
        and getattr(args, "packing", False)
        and args.packing_strategy == "wrapped"
    ):
        # raw text is packed here, not by TRL: documents open and end as in pretraining (TRL would close each
        # with the tokenizer's EOS, an instruct model's end of turn, and make it the model's EOS as well)
        import datasets

        from .data.packing import StackCollator, text_rows

        rows, dropped = text_rows(list(train_dataset["text"]), tokenizer, recipe.max_length)
        if not rows:
            raise RecipeError(f"not one block of {recipe.max_length} tokens in the training text", key="datasets")
        train_dataset = datasets.Dataset.from_list(rows)
        args.packing, args.remove_unused_columns = False, False
        args.dataset_kwargs = {**(args.dataset_kwargs or {}), "skip_prepare_dataset": True}
        if trainer_kwargs.get("data_collator") is None:
            trainer_kwargs["data_collator"] = StackCollator()
        logger.info("packed %d blocks of %d tokens (%d tail tokens dropped)", len(rows), recipe.max_length, dropped)
    mode = set_trainable(model, getattr(recipe, "trainable", "all"), peft_config is not None)
    args.precision = apply_precision(recipe, args, model, trainer_kwargs) if peft_config is None else "lora"
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info(
        "trainable: %s, %s of %s parameters",
        mode,
        f"{trained:,}",
        f"{sum(p.numel() for p in model.parameters()):,}",
    )
    args.trainable = mode
    return trainer_cls(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_datasets or None,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[*(callbacks or []), *([] if recipe.max_steps > 0 else [few_steps_callback()])],
        **trainer_kwargs,
    )


def fit(recipe: Any, tmp: Path, *, eval_datasets: dict, **kwargs):
    """Train in `tmp`, resuming from its last complete checkpoint; returns (trainer, metrics)."""
    trainer = make_trainer(recipe, tmp, eval_datasets=eval_datasets, **kwargs)
    labels = list(eval_datasets)
    resume = recipe.resume_from_checkpoint or last_checkpoint(tmp, optimizer=not recipe.save_only_model)
    before_file = tmp / "eval_before.json"
    if labels and before_file.exists():
        before = json.loads(before_file.read_text())
    elif labels:
        before = _eval_summary(trainer.evaluate(), labels)
        if trainer.is_world_process_zero():
            write_json(before_file, before)
    else:
        before = {}
    saved = json.loads((Path(resume) / "trainer_state.json").read_text()) if resume else {}
    if resume:
        logger.warning("resuming from %s (step %d)", resume, saved["global_step"])
        # TRL's token counter is not part of the checkpoint; transformers' own count is
        trainer._total_train_tokens = saved.get("num_input_tokens_seen", 0)
    if resume and saved["global_step"] >= saved.get("max_steps", 0) > 0:
        # killed after its last checkpoint: the Trainer would train one step past max_steps, so load it instead
        from transformers import TrainerState

        trainer.state = TrainerState.load_from_json(os.path.join(resume, "trainer_state.json"))
        best = trainer.state.best_model_checkpoint if trainer.args.load_best_model_at_end else None
        trainer._load_from_checkpoint(best if best and os.path.isdir(best) else resume)
        result_metrics = {}
    else:
        result_metrics = trainer.train(resume_from_checkpoint=resume).metrics
    after = _eval_summary(trainer.evaluate(), labels) if labels else {}
    kept = kept_state(trainer, before, labels)
    if kept.get("kept") == "start":
        after = before
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    metrics = {
        "train": {
            **result_metrics,
            "global_step": trainer.state.global_step,
            "first_logged_loss": losses[0] if losses else None,
            "last_logged_loss": losses[-1] if losses else None,
            "num_tokens": trainer.state.num_input_tokens_seen,
            "trainable": trainer.args.trainable,
            "precision": trainer.args.precision,
            **kept,
        },
        "eval_before": before,
        "eval": after,
        "world_size": trainer.args.world_size,
        "resumed_from": os.path.basename(resume) if isinstance(resume, str) else None,
        **count_parameters(trainer.model),
    }
    return trainer, metrics


def kept_state(trainer, before: dict, labels: list[str]) -> dict[str, Any]:
    """With keep_best: which state the run keeps — the best checkpoint on held-out loss, or the starting model when
    no step beat it (then the stage writes the starting model unchanged)."""
    if not trainer.args.load_best_model_at_end or not labels:
        return {}
    label = labels[0]
    start, best = before[label]["loss"], trainer.state.best_metric
    facts = {
        "selected_on": label,
        "start_loss": start,
        "best_loss": best,
        "best_step": trainer.state.best_global_step,
    }
    if best is None or best >= start:
        logger.warning(
            "NO STEP IMPROVED the held-out loss on %s (start %.4f, best %s): the output is the starting "
            "model, unchanged. Lower the learning rate or check the data.",
            label,
            start,
            "none" if best is None else f"{best:.4f}",
        )
        return {**facts, "kept": "start"}
    logger.info(
        "keeping the best state: step %s, held-out loss on %s %.4f (start %.4f)", facts["best_step"], label, best, start
    )
    return {**facts, "kept": "best"}


def training_facts_md(metrics: dict) -> list[str]:
    """Card lines: what was trained, and which state was kept (keep_best)."""
    train = metrics["train"]
    lines = [
        f"- trained: `{train.get('trainable', 'all')}`, {metrics['trainable_parameters']:,} of "
        f"{metrics['parameters']:,} parameters"
    ]
    precision = {
        "fp32-master": "float32 master weights and AdamW states, bf16 autocast; saved in the dtype it was loaded in",
        "bf16-stochastic": "bf16 weights, AdamW with stochastic rounding (torchao)",
        "bf16": "bf16 weights, plain AdamW (small updates are rounded away)",
        "float32": "float32",
        "lora": "LoRA adapters (float32) on frozen weights",
    }.get(train.get("precision"))
    if precision:
        lines.append(f"- precision: `{train['precision']}`: {precision}")
    if train.get("kept") == "start":
        best = "none" if train["best_loss"] is None else f"{train['best_loss']:.4f} at step {train['best_step']}"
        lines.append(
            f"- **no step improved the held-out loss** on `{train['selected_on']}` (start {train['start_loss']:.4f}, "
            f"best {best}): **this is the starting model, unchanged**"
        )
    elif train.get("kept") == "best":
        lines.append(
            f"- kept the best state on held-out `{train['selected_on']}`: step {train['best_step']} of "
            f"{train['global_step']} (loss {train['start_loss']:.4f} → {train['best_loss']:.4f})"
        )
    if "merge_with_base" in metrics:
        merge = metrics["merge_with_base"]
        lines.append(
            f"- merged with the starting model ({merge['method']}, WiSE-FT): α = {merge['alpha']:g} of the way "
            "from the starting weights to the trained ones"
            + (
                f", chosen on the held-out sets among {', '.join(f'{a:g}' for a in merge['grid'])}"
                if merge.get("min_gain")
                else ""
            )
        )
    return lines


def save_trained(trainer, tmp: Path, recipe: Any, metrics: dict, merge: bool = True):
    """Final weights at the root of `tmp` (safetensors); returns the model they are. LoRA: adapter in adapter/,
    merged model at the root. When no step beat the starting model (keep_best), the starting model itself. With
    merge_with_base < 1 (and `merge`), the trained weights interpolated with the starting model's."""
    model = _save_trained(trainer, tmp, recipe, metrics)
    alpha = getattr(recipe, "merge_with_base", 1)  # tiny-model trains from scratch: no starting model
    if not merge or alpha == 1 or metrics["train"].get("kept") == "start":
        return model
    from .merging import BaseInterpolation
    from .models import load_model

    several = trainer.accelerator.num_processes > 1  # sharded weights: the main process merges the saved full model
    if trainer.is_world_process_zero():
        merged = load_model(str(tmp), dtype=recipe.dtype) if several else model
        start = load_model(recipe.model_name_or_path, dtype=recipe.dtype, revision=recipe.model_revision)
        BaseInterpolation(merged, start, recipe.merge_method).apply(alpha)
        merged.save_pretrained(str(tmp))
    trainer.accelerator.wait_for_everyone()
    if several:  # every process returns the merged model it wrote
        model = load_model(str(tmp), dtype=recipe.dtype)
    metrics["merge_with_base"] = {"alpha": alpha, "method": recipe.merge_method}
    return model


def _save_in_dtype(trainer, tmp: Path, recipe: Any):
    """fp32-master training: the model is saved (and returned) in the recipe's dtype, as it was loaded."""
    import torch

    from .models import load_model

    dtype = trainer.args.saved_dtype
    if trainer.accelerator.num_processes == 1:
        model = trainer.accelerator.unwrap_model(trainer.model).to(getattr(torch, dtype))
        trainer.save_model(str(tmp))
        return model
    trainer.save_model(str(tmp))  # the gathered float32 state, rewritten in dtype by the main process
    if trainer.is_world_process_zero():
        load_model(str(tmp), dtype=dtype).save_pretrained(str(tmp))
    trainer.accelerator.wait_for_everyone()
    return load_model(str(tmp), dtype=dtype)


def _save_trained(trainer, tmp: Path, recipe: Any, metrics: dict):
    from .models import load_model, prepare_chat_model

    # trainers turn the KV cache off for training; the published model generates with it (as transformers' default)
    trainer.accelerator.unwrap_model(trainer.model).config.use_cache = True
    if metrics["train"].get("kept") == "start":
        model = load_model(recipe.model_name_or_path, dtype=recipe.dtype, revision=recipe.model_revision)
        if getattr(recipe, "chat_template_path", None) or len(trainer.processing_class) > model.config.vocab_size:
            prepare_chat_model(model, trainer.processing_class)  # as the trained copy was: same tokens, same stops
        if trainer.is_world_process_zero():
            model.save_pretrained(str(tmp))
            trainer.processing_class.save_pretrained(str(tmp))
        trainer.accelerator.wait_for_everyone()
        return model
    if not getattr(recipe, "use_peft", False):
        if getattr(trainer.args, "precision", None) == "fp32-master":
            return _save_in_dtype(trainer, tmp, recipe)
        trainer.save_model(str(tmp))
        return trainer.model
    adapter = tmp / "adapter"
    trainer.save_model(str(adapter))
    if recipe.merge_lora and trainer.is_world_process_zero():
        from peft import AutoPeftModelForCausalLM

        merged = AutoPeftModelForCausalLM.from_pretrained(str(adapter), dtype="auto").merge_and_unload()
        merged.config.use_cache = True
        merged.save_pretrained(str(tmp))
        trainer.processing_class.save_pretrained(str(tmp))
    trainer.accelerator.wait_for_everyone()
    return trainer.model.merge_and_unload() if recipe.merge_lora else trainer.model
