"""Lillama feature distillation: heal a low-rank student block by block against its original model.

    llm4all feature-distill --config recipes/tiny-llama/feature-distill/whitening-60.yaml

The student is a `compress` output; the teacher defaults to its compression_config's base model. Writes the
distilled student in the same low-rank format. An interrupted run resumes at the first unfinished block.
"""

import logging
import shutil

from ..cards import CardInfo, model_ref, perplexity_results
from ..configs import FeatureDistillRecipe
from ..data.mixture import load_data
from ..data.packing import corpus_ids
from ..errors import RecipeError
from ..evaluation.perplexity import held_out_meter
from ..models import compression_config, is_speech_model, load_model, load_tokenizer, resolve_device
from ..outputs import finish, staged_output
from ..tracking import Trackers

logger = logging.getLogger(__name__)
HOLDOUT_SHARE = 0.1  # the last 10 % of the calibration token stream provides the held-out windows


def teacher_of(recipe: FeatureDistillRecipe) -> str:
    from ..compression import MODEL_TYPE
    from ..compression.lowrank import read_config

    config = read_config(recipe.model_name_or_path)
    if config and config.get("model_type") != MODEL_TYPE:
        raise RecipeError("not a low-rank checkpoint (run `llm4all compress` first)", key="model_name_or_path")
    teacher = recipe.teacher_model_name_or_path or config.get("compression_config", {}).get("base_model")
    if not teacher:
        raise RecipeError(
            "required: the student's compression_config names no base model", key="teacher_model_name_or_path"
        )
    return teacher


def check_tokenizers(student, teacher) -> None:
    """Same vocabulary (the hidden states are compared token by token)."""
    if student.get_vocab() != teacher.get_vocab():
        raise RecipeError("the teacher's tokenizer differs from the student's", key="teacher_model_name_or_path")


def split_windows(recipe: FeatureDistillRecipe, stream: list[int]):
    from ..compression.calibration import calibration_ids

    cut = int(len(stream) * (1 - HOLDOUT_SHARE))
    try:
        train = calibration_ids(stream[:cut], recipe.num_calibration_samples, recipe.calibration_seq_len, recipe.seed)
        hold = calibration_ids(stream[cut:], recipe.num_holdout_samples, recipe.calibration_seq_len, recipe.seed + 1)
    except ValueError as exc:
        raise RecipeError(f"{exc} (the held-out windows come from the last 10 % of the text)", key="datasets") from None
    return train, hold


def _first(ids):
    return ids["decoder_input_ids"] if isinstance(ids, dict) else ids


def _tokens(ids) -> int:
    """Tokens of calibration inputs (speech: decoder tokens of the transcripts)."""
    return int(_first(ids).numel())


def speech_windows(recipe: FeatureDistillRecipe):
    """(processor, training inputs, held-out inputs, eval sets, data report) of a speech student: distinct
    recordings drawn (seeded) for training and for the held-out loss."""
    import random

    from ..models import load_processor
    from ..speech.calibration import calibration_inputs, eval_inputs, model_inputs, read_pairs

    processor = load_processor(recipe.model_name_or_path, recipe.model_revision)
    pairs = [p for ps in read_pairs(recipe.datasets, "datasets").values() for p in ps]
    n_train, n_hold = recipe.num_calibration_samples, recipe.num_holdout_samples
    if len(pairs) < n_train + n_hold:
        raise RecipeError(
            f"{len(pairs)} recordings, fewer than num_calibration_samples + num_holdout_samples = "
            f"{n_train + n_hold} (training and held-out recordings are distinct)",
            key="datasets",
        )
    drawn = random.Random(recipe.seed).sample(pairs, n_train + n_hold)
    train = model_inputs(calibration_inputs(recipe, processor, n_train, recipe.seed, drawn[:n_train]))
    hold = model_inputs(calibration_inputs(recipe, processor, n_hold, recipe.seed, drawn[n_train:]))
    report = [
        {
            "source": s.tag,
            "split": s.split,
            "used_rows": n_train + n_hold,
            "available_rows": len(pairs),
            "share": 1.0 / len(recipe.datasets),
        }
        for s in recipe.datasets
    ]
    return processor, train, hold, eval_inputs(recipe, processor), report


def run(recipe: FeatureDistillRecipe, callbacks=None):
    from ..compression.feature_distill import distill

    # 1. Who teaches whom, and on which windows (speech: recordings): all checked before any model loads.
    teacher_path = teacher_of(recipe)
    tokenizer = load_tokenizer(recipe.model_name_or_path, recipe.model_revision)
    check_tokenizers(tokenizer, load_tokenizer(teacher_path, key="teacher_model_name_or_path"))
    speech = is_speech_model(recipe.model_name_or_path, recipe.model_revision)
    if speech:
        tokenizer, train_ids, hold_ids, evals, data_report = speech_windows(recipe)
    else:
        calib, evals, data_report = load_data(recipe, tokenizer)
        train_ids, hold_ids = split_windows(recipe, corpus_ids(tokenizer, calib["text"]))
    device = resolve_device(recipe.device)
    measure = held_out_meter(recipe, tokenizer, evals, device, speech=speech)
    if recipe.dry_run:
        tokens = recipe.tokens_per_block or _tokens(train_ids)
        print(
            f"# feature-distill {recipe.model_name_or_path} <- {teacher_path} ({recipe.schedule}); "
            f"{_tokens(train_ids)} training and {_tokens(hold_ids)} held-out tokens; {tokens} tokens per block"
        )
        return {"teacher": teacher_path, "tokens_per_block": tokens}

    with staged_output(recipe, "feature-distill", resume=True) as tmp:
        # 2. Models (on the CPU; one block at a time goes to the device).
        student = load_model(recipe.model_name_or_path, dtype=recipe.dtype, revision=recipe.model_revision)
        if compression_config(student) is None:
            raise RecipeError("not a low-rank checkpoint (run `llm4all compress` first)", key="model_name_or_path")
        teacher = load_model(teacher_path, dtype=recipe.dtype, key="teacher_model_name_or_path")
        before = measure(student, "before", recipe.model_name_or_path)

        # 3. Block by block, resumable from <output_dir>.tmp/distill_state.
        state = tmp / "distill_state"
        trackers = Trackers(recipe, "feature-distill", tmp)
        cfg = distill_config(recipe, train_ids, device, speech)
        reports = distill(teacher, student, train_ids, hold_ids, cfg, state_dir=state, on_block=trackers.log_block)
        after = measure(student, "after")
        trackers.log_perplexities(before, after)
        trackers.close()
        metrics = {
            **block_facts(recipe, reports, train_ids),
            "eval_before": before,
            "eval": after,
            "data": data_report,
            "parameters": sum(p.numel() for p in student.parameters()),
        }
        student.config.compression_config["feature_distill"] = {
            "teacher": teacher_path,
            "schedule": recipe.schedule,
            "joint_inputs": recipe.joint_inputs,
            "learning_rate": recipe.learning_rate,
            "lr_scheduler_type": recipe.lr_scheduler_type,
            "tokens_per_block": recipe.tokens_per_block or _tokens(train_ids),
        }
        student.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        shutil.rmtree(state, ignore_errors=True)  # resume-only
        finish(
            tmp,
            stage="feature-distill",
            recipe=recipe,
            metrics=metrics,
            parent=recipe.model_name_or_path,
            card=card_info(recipe, teacher_path, metrics, speech),
        )
    return metrics


def distill_config(recipe: FeatureDistillRecipe, train_ids, device: str, speech: bool):
    from ..compression.feature_distill import DistillConfig

    speech_tokens = _tokens(train_ids) // len(_first(train_ids)) * recipe.calibration_batch_size if speech else None
    return DistillConfig(
        recipe.schedule,
        recipe.joint_inputs,
        recipe.learning_rate,
        recipe.weight_decay,
        recipe.tokens_per_block,
        recipe.calibration_batch_size,
        recipe.eval_every,
        device,
        recipe.lr_scheduler_type,
        recipe.warmup_ratio,
        recipe.early_stopping_patience,
        speech_tokens,
    )


def block_facts(recipe: FeatureDistillRecipe, reports: list, train_ids) -> dict:
    """Each block's held-out losses and steps, and the tokens trained (a warning for blocks no step improved)."""
    unchanged = [r.layer for r in reports if r.best_step == 0]
    if unchanged:
        logger.warning(
            "blocks %s kept their compressed state: no step improved their held-out loss%s",
            unchanged,
            " (NO block improved: lower the learning rate?)" if len(unchanged) == len(reports) else "",
        )
    tokens_per_step = _tokens(train_ids) // len(_first(train_ids)) * recipe.calibration_batch_size
    return {
        "blocks": [{k: v for k, v in r.__dict__.items() if k != "history"} for r in reports],
        "tokens_trained": sum(r.steps for r in reports) * tokens_per_step,  # over all blocks
        "text_tokens": max((r.steps for r in reports), default=0) * tokens_per_step,  # the text they learnt on
    }


def card_info(recipe: FeatureDistillRecipe, teacher_path: str, metrics: dict, speech: bool) -> CardInfo:
    return CardInfo(
        summary=f"{model_ref(recipe.model_name_or_path)} healed by Lillama feature distillation against "
        f"{model_ref(teacher_path)}.",
        training=distill_md(recipe, teacher_path, metrics),
        results=perplexity_results(
            metrics["eval"], recipe.eval_datasets, None if speech else recipe.perplexity_max_length
        ),
        data_report=metrics["data"],
        tags=["compression", "low-rank", "lillama"],
    )


def distill_md(recipe: FeatureDistillRecipe, teacher: str, metrics: dict) -> str:
    lines = [
        f"Lillama feature distillation from {model_ref(teacher)}: schedule `{recipe.schedule}`"
        + (" with both input streams" if recipe.joint_inputs else "")
        + f", AdamW peak lr {recipe.learning_rate} ({recipe.lr_scheduler_type} after {recipe.warmup_ratio:.0%} "
        "warm-up), "
        "loss mean|a−y| − log σ(cos(a, y)); each block keeps its best state on held-out calibration windows"
        + (
            f" and stops after {recipe.early_stopping_patience} evaluations without improvement"
            if recipe.early_stopping_patience
            else ""
        )
        + f". {metrics['tokens_trained']:,} block-training tokens in all.",
        "",
        "| block | held-out loss before | best | at step | steps |",
        "|---:|---:|---:|---:|---:|",
    ]
    for b in metrics["blocks"]:
        lines.append(
            f"| {b['layer']} | {b['initial_loss']:.4f} | {b['best_loss']:.4f} | {b['best_step']} | {b['steps']} |"
        )
    lines.append("")
    for k, v in metrics["eval"].items():
        lines.append(f"- perplexity `{k}`: {metrics['eval_before'][k]['perplexity']:.2f} → {v['perplexity']:.2f}")
    return "\n".join(lines)
