"""Continued pretraining on new text with forgetting control: replay of old text at a token share, LR re-warm
then re-decay, an optional KL to the model before training, and merging with it after (WiSE-FT).

    accelerate launch -m llm4all_recipes cpt --config recipes/tiny-llama/cpt/replay.yaml

New and replay text are mixed by tokens (replay_share of the total) and packed into fixed-length blocks per
source, so every token keeps its source; the realised replay share is reported. The old/new-domain perplexity
before and after (the forgetting report) goes into metrics.json, the card and forgetting.png. With merge_grid,
the trained model is interpolated with the starting one at each α of the grid, each α measured on the held-out
domains and the best kept (the rule in configs.CPTRecipe.merge_grid); with merge_with_base, one α.
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
from ..evaluation.perplexity import held_out_meter
from ..merging import BaseInterpolation
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
    kl_new, kl_replay = int(recipe.kl_on in ("new", "all")), int(recipe.kl_on in ("replay", "all"))
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
        replay, replay_report = build_mixture(
            recipe.replay_datasets, needed=("text",), seed=seed, size=target, count_tokens=count, key="replay_datasets"
        )
        replay_rows, dropped = text_rows(
            list(replay["text"]),
            tokenizer,
            recipe.max_length,
            kl_mask=[kl_replay] * recipe.max_length,
            replay=1,
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
    logger.info(
        "continued pretraining on %d blocks (%d tokens), replay share %.3f (target %.3f)",
        len(rows),
        data["tokens"],
        data["replay_share"],
        recipe.replay_share,
    )
    if recipe.dry_run:
        print(f"# cpt: replay share {data['replay_share']} of the blocks (target {recipe.replay_share})")
        return print_plan(recipe, "cpt", rows, tokenizer, data["mixture"] + data["replay_mixture"])

    with staged_output(recipe, "cpt", resume=True) as tmp:
        # 2. Model, and the reference model of the KL (the model before this stage, by default).
        model = load_model(recipe.model_name_or_path, dtype=recipe.dtype, revision=recipe.model_revision)
        reference = load_reference(recipe, tokenizer)
        measure = held_out_meter(recipe, tokenizer, evals, resolve_device("auto"))
        before = measure(model, "before", recipe.model_name_or_path)

        # 3. Train (TRL machinery, CE + KL loss), resumable from <output_dir>.tmp.
        recipe.packing, recipe.remove_unused_columns = False, False
        recipe.dataset_kwargs = {"skip_prepare_dataset": True}  # rows are packed per source here
        trainer, metrics = fit(
            recipe,
            tmp,
            model=model,
            tokenizer=tokenizer,
            train_dataset=rows,
            trainer_cls=CPTTrainer,
            eval_datasets=text_eval_rows(evals, tokenizer, recipe.max_length) if recipe.keep_best else {},
            peft_config=lora_config(recipe) if recipe.use_peft else None,
            callbacks=callbacks,
            data_collator=StackCollator(("input_ids", "attention_mask", "labels", "kl_mask")),
            teacher_model=reference,
            kl_coef=recipe.kl_coef,
            kl_coef_end=recipe.kl_coef_end,
            kd_loss=recipe.kd_loss,
            kd_beta=recipe.kd_beta,
            kd_temperature=recipe.kd_temperature,
        )
        trained = save_trained(trainer, tmp, recipe, metrics, merge=False)
        metrics.update(eval_before=before, eval=measure(trained, "after"), data=data)

        # 4. Merged back with the start at the α its grid chooses; the forgetting report (old vs new domain).
        merge_back(recipe, trainer, trained, reference, measure, _domains(evals), metrics, tmp)
        finish(
            tmp,
            stage="cpt",
            recipe=recipe,
            metrics=metrics,
            parent=recipe.model_name_or_path,
            card=card_info(recipe, metrics, data),
        )
    return metrics


def load_reference(recipe: CPTRecipe, tokenizer):
    """The KL's reference model (the model before this stage by default), or None without a KL."""
    if not recipe.kl_active:
        return None
    ref_path = recipe.reference_model_name_or_path or recipe.model_name_or_path
    if load_tokenizer(ref_path, key="reference_model_name_or_path").get_vocab() != tokenizer.get_vocab():
        raise RecipeError("the reference model has a different tokenizer", key="reference_model_name_or_path")
    return load_model(ref_path, dtype=recipe.reference_dtype, key="reference_model_name_or_path")


def merge_back(recipe: CPTRecipe, trainer, trained, reference, measure, domains, metrics: dict, tmp) -> None:
    """Merge `trained` with the starting model (merge_grid / merge_with_base; saved again in `tmp`) unless training
    kept the start, and plot the forgetting report; both recorded in `metrics`."""
    (old, new), before, after = domains, metrics["eval_before"], metrics["eval"]
    points = []
    if old and new:
        points = [
            {"model": "before", "old": before[old]["perplexity"], "new": before[new]["perplexity"]},
            {"model": "after", "old": after[old]["perplexity"], "new": after[new]["perplexity"]},
        ]
    alphas = recipe.merge_grid or ([recipe.merge_with_base] if recipe.merge_with_base != 1 else [])
    if alphas and metrics["train"].get("kept") != "start":
        same = recipe.reference_model_name_or_path in (None, recipe.model_name_or_path)
        start = reference if reference is not None and same else None
        merged = merge_grid(recipe, trained, start, alphas, measure, (old, new), points, after, before)
        metrics["merge_with_base"] = merged
        metrics["eval"] = merged["eval"]
        if trainer.is_world_process_zero():
            trained.save_pretrained(str(tmp))
        trainer.accelerator.wait_for_everyone()
    if points:
        forgetting.plot(points, tmp / "forgetting.png", old, new)
        metrics["forgetting"] = {"old": old, "new": new, "points": points}


def card_info(recipe: CPTRecipe, metrics: dict, data: dict) -> CardInfo:
    summary = f"{model_ref(recipe.model_name_or_path)} after continued pretraining on new text"
    if recipe.replay_share:
        summary += f" with {recipe.replay_share:.0%} replay"
    if recipe.kl_active:
        end = f" → {recipe.kl_coef_end}" if recipe.kl_coef_end is not None else ""
        summary += f" and a KL to the model before training (×{recipe.kl_coef}{end}, {recipe.kl_on} tokens)"
    if "merge_with_base" in metrics:
        summary += f", merged with it at α = {metrics['merge_with_base']['alpha']:g}"
    return CardInfo(
        summary=summary + ".",
        training=cpt_md(recipe, metrics),
        results=perplexity_results(metrics["eval"], recipe.eval_datasets, recipe.perplexity_max_length),
        data_report=data["mixture"] + data["replay_mixture"],
        tags=["continued-pretraining"],
    )


def merge_grid(recipe: CPTRecipe, trained, start, alphas, measure, domains, points, after, before_eval) -> dict:
    """Interpolate `trained` with the starting model at each α (in place), measure each on the held-out sets, leave
    the chosen α in `trained`; add one forgetting-report point per α to `points`. Returns the report."""
    if start is None:
        start = load_model(recipe.model_name_or_path, dtype=recipe.dtype, revision=recipe.model_revision)
    interpolation = BaseInterpolation(trained, start, recipe.merge_method)
    results = {}
    for alpha in sorted(set(alphas), reverse=True):
        interpolation.apply(alpha)
        results[alpha] = measure(trained, f"α={alpha:g}")
    old, new = domains
    chosen = alphas[0]
    if len(alphas) > 1:
        chosen = choose_alpha(
            {a: (r[old]["perplexity"], r[new]["perplexity"]) for a, r in results.items()},
            before=(points[0]["old"], points[0]["new"]),
            trained=(points[1]["old"], points[1]["new"]),
            min_gain=recipe.merge_min_gain,
        )
    interpolation.apply(chosen)
    if chosen == 0.0:
        results[0.0] = before_eval
        logger.warning(
            "continued pretraining made the new domain worse (%s perplexity %.2f -> %.2f): the starting "
            "model is kept (α = 0); lower the learning rate",
            new,
            points[0]["new"],
            points[1]["new"],
        )
    if old and new:
        points += [
            {
                "model": f"α={a:g}" + (" (kept)" if a == chosen else ""),
                "old": r[old]["perplexity"],
                "new": r[new]["perplexity"],
            }
            for a, r in sorted(results.items(), reverse=True)
        ]
    logger.info("merged with the starting model at α = %g (%s)", chosen, recipe.merge_method)
    return {
        "alpha": chosen,
        "method": recipe.merge_method,
        "grid": sorted(results, reverse=True),
        "min_gain": recipe.merge_min_gain if len(alphas) > 1 else None,
        "results": {f"{a:g}": r for a, r in results.items()},
        "eval": results.get(chosen, after),
    }


def choose_alpha(points: dict[float, tuple[float, float]], before, trained, min_gain: float) -> float:
    """The α whose (old, new) perplexity has the lowest old-domain perplexity among those keeping >= min_gain of the
    trained model's new-domain gain (before − trained, perplexity points), the trained model itself (α = 1) being
    one of them; α = 0 (the starting model, never worse) when training gained nothing on the new domain."""
    gain = before[1] - trained[1]
    if gain <= 0:
        return 0.0
    ok = {a: p for a, p in {**points, 1.0: trained}.items() if before[1] - p[1] >= min_gain * gain}
    return min(ok, key=lambda a: (ok[a][0], -a))


def _domains(evals: dict) -> tuple[str | None, str | None]:
    """The old- and new-domain eval sets, by name (old_* / new_*), when both are there."""
    old = next((k for k in evals if k.startswith("old")), None)
    new = next((k for k in evals if k.startswith("new")), None)
    return old, new


def cpt_md(recipe: CPTRecipe, metrics: dict) -> str:
    data = metrics["data"]
    lines = [
        f"- {data['tokens']:,} tokens per epoch in blocks of {recipe.max_length}: replay share "
        f"{data['replay_share']:.3f} "
        f"(target {recipe.replay_share}); {data['dropped_tail_tokens']} tail tokens of the packing left out",
        f"- learning rate {recipe.learning_rate}, `{recipe.lr_scheduler_type}` after {recipe.warmup_steps} warm-up "
        "steps "
        f"(re-warm, re-decay); {metrics['train']['global_step']} steps",
        f"- KL to {model_ref(recipe.reference_model_name_or_path or recipe.model_name_or_path)}: "
        + (
            f"{recipe.kd_loss} × {recipe.kl_coef}"
            + (f" → {recipe.kl_coef_end} (linear)" if recipe.kl_coef_end is not None else "")
            + f" on {recipe.kl_on} tokens"
            + (f", temperature {recipe.kd_temperature:g}" if recipe.kd_temperature != 1 else "")
            if recipe.kl_active
            else "off"
        ),
        *training_facts_md(metrics),
    ]
    if "forgetting" in metrics:
        f = metrics["forgetting"]
        lines += [
            "",
            "#### Forgetting",
            "",
            forgetting.table(f["points"], f["old"], f["new"]),
            "",
            "![learning vs forgetting](forgetting.png)",
        ]
        if "merge_with_base" in metrics:
            lines += ["", where_it_sits(f["points"], metrics["merge_with_base"]["alpha"])]
    return "\n".join(lines)


def where_it_sits(points: list[dict], alpha: float) -> str:
    """One sentence placing the kept merge against the unmerged run (the benchmark's criterion, relative to it)."""
    before, trained = points[0], points[1]
    kept = next((p for p in points[2:] if p["model"].startswith(f"α={alpha:g}")), trained)
    rise, gain = trained["old"] - before["old"], before["new"] - trained["new"]
    text = (
        f"Kept: α = {alpha:g}, old-domain perplexity {kept['old'] - before['old']:+.2f} "
        f"(unmerged: {rise:+.2f}), new-domain gain {before['new'] - kept['new']:.2f} (unmerged: {gain:.2f})"
    )
    if rise > 0 and gain > 0:
        text += (
            f": {(kept['old'] - before['old']) / rise:.2f}× the unmerged rise for "
            f"{(before['new'] - kept['new']) / gain:.0%} of its gain"
        )
    return text + " (docs/BENCHMARKS.md#forgetting places the benchmark's arms on the same axes)."
