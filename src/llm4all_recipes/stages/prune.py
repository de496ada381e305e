"""Structured pruning to a standard, smaller config of the same architecture (Minitron width, ShortGPT depth).

    llm4all prune --config recipes/tiny-llama/prune/width-20.yaml
    llm4all prune --config ... --dry_run true   # sizes and parameters before/after; no weights, no calibration

Importance from calibration activations, streamed one decoder layer at a time (compression/pruning.py). The
output is a plain `save_pretrained` checkpoint of the base model's class (no remote code: vLLM, TGI and
llama.cpp serve it) with a `pruning_config` in its config.json; heal it with `llm4all kd` from the original.
"""

import logging

from ..cards import CardInfo, model_ref, perplexity_results
from ..compression.calibration import calibration_windows
from ..configs import PruneRecipe
from ..data.mixture import load_data
from ..errors import RecipeError
from ..evaluation.perplexity import held_out_meter
from ..models import dense_skeleton, load_model, load_tokenizer, resolve_device
from ..outputs import finish, staged_output
from ..tracking import Trackers

logger = logging.getLogger(__name__)

NOTE = (
    "A pruned model has lost capabilities its parameters carried: heal it by distillation from the model it "
    "was pruned from (`llm4all kd`, the original as teacher) before using it. It is a standard checkpoint of "
    "the base architecture: plain transformers, vLLM and TGI load it as they are."
)


def print_plan(recipe: PruneRecipe, facts: dict) -> None:
    print(f"# llm4all prune --dry_run: {recipe.model_name_or_path}")
    for key, old in facts["sizes_before"].items():
        new = facts["sizes_after"][key]
        print(f"{key:<22} {old:>8} -> {new:<8}{'' if new == old else f' ({1 - new / old:.1%} removed)'}")
    print(
        f"# model: {facts['model_params_before']:,} -> {facts['model_params_after']:,} parameters "
        f"({facts['model_fraction_removed']:.1%} removed; target {recipe.ratio if recipe.ratio else 'explicit sizes'})"
    )


def run(recipe: PruneRecipe, callbacks=None):
    from ..compression import pruning

    # 1. Sizes from the config alone (no weights, no data).
    config = dense_skeleton(recipe.model_name_or_path, recipe.model_revision).config
    try:
        pruning.check_supported(config)
    except ValueError as exc:
        raise RecipeError(str(exc), key="model_name_or_path") from None
    sizes = pruning.target_sizes(recipe, config)
    facts = pruning.pruning_facts(config, sizes)
    if recipe.dry_run:
        print_plan(recipe, facts)
        return facts

    # 2. Calibration windows and held-out text, then the model.
    tokenizer = load_tokenizer(recipe.model_name_or_path, recipe.model_revision)
    calib, evals, data_report = load_data(recipe, tokenizer)
    ids = calibration_windows(recipe, tokenizer, calib["text"])
    device = resolve_device(recipe.device)
    measure = held_out_meter(recipe, tokenizer, evals, device)
    with staged_output(recipe, "prune") as tmp:
        model = load_model(recipe.model_name_or_path, dtype=recipe.dtype, revision=recipe.model_revision)
        before = measure(model, "dense", recipe.model_name_or_path)

        # 3. Importance (one streamed pass; the perplexity of each block's removal only when depth is pruned
        # by it), then the kept indices and the sliced model.
        importance = pruning.measure(model, ids, device=device, batch_size=recipe.calibration_batch_size)
        depth_scores = importance.block_influence
        deeper = sizes["num_hidden_layers"] < config.num_hidden_layers
        if deeper and recipe.depth_importance == "perplexity":
            _, importance.perplexity_drop = pruning.perplexity_drop(model, ids, device=device)
            depth_scores = importance.perplexity_drop
        plan = pruning.Plan.choose(importance, config, sizes, depth_scores)
        pruned = pruning.build_pruned(model, plan, sizes)
        del model
        pruned.config.pruning_config = pruning_record(recipe, config, facts, plan, deeper)
        after = measure(pruned, "pruned")
        trackers = Trackers(recipe, "prune", tmp)
        trackers.log(
            {"model_fraction_removed": facts["model_fraction_removed"], "parameters": facts["model_params_after"]}
        )
        trackers.log_perplexities(before, after)
        trackers.close()
        metrics = {
            "pruning": facts,
            "importance": {
                "block_influence": importance.block_influence,
                "perplexity_drop": importance.perplexity_drop,
            },
            "kept_layers": plan.layers,
            "eval_before": before,
            "eval": after,
            "data": data_report,
            "parameters": facts["model_params_after"],
        }

        # 4. A plain checkpoint of the base class + card, then publish.
        pruned.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        finish(
            tmp,
            stage="prune",
            recipe=recipe,
            metrics=metrics,
            parent=recipe.model_name_or_path,
            card=card_info(recipe, config, facts, plan, before, after, data_report),
        )
    return metrics


def card_info(recipe: PruneRecipe, config, facts: dict, plan, before: dict, after: dict, data_report: list) -> CardInfo:
    return CardInfo(
        summary=f"{model_ref(recipe.model_name_or_path)} structurally pruned to a smaller {config.model_type} config: "
        f"{facts['model_fraction_removed']:.0%} of its parameters removed ({sizes_md(facts)}).",
        training=pruning_md(recipe, facts, plan, before, after),
        results=perplexity_results(after, recipe.eval_datasets, recipe.perplexity_max_length),
        data_report=data_report,
        tags=["pruning", "structured-pruning"],
        limitations=NOTE,
    )


def pruning_record(recipe: PruneRecipe, config, facts: dict, plan, deeper: bool) -> dict:
    """The output's `pruning_config`. Kept blocks and channels are indices into the original model: pruning an
    already pruned model composes them with its record (kept as `previous`), so a hidden-state loss against the
    original still pairs the right blocks and channels."""
    prev = getattr(config, "pruning_config", None) or {}
    layers, channels = (
        plan.layers,
        plan.channels if facts["sizes_after"]["hidden_size"] < config.hidden_size else None,
    )
    if prev:
        layers = [prev["kept_layers"][i] for i in layers]
        if prev.get("kept_channels") is not None:
            channels = [prev["kept_channels"][c] for c in (channels or range(config.hidden_size))]
    return {
        "method": "minitron-width" if not deeper else ("depth" if sizes_only_depth(facts) else "width+depth"),
        "ratio": recipe.ratio,
        "axes": list(recipe.axes) if recipe.ratio is not None else None,
        "model_fraction_removed": facts["model_fraction_removed"],
        "sizes_before": prev.get("sizes_before", facts["sizes_before"]),
        "depth_importance": recipe.depth_importance if deeper else None,
        "kept_layers": layers,
        "kept_channels": channels,
        "base_model": prev.get("base_model", recipe.model_name_or_path),
        "calibration": {
            "datasets": [s.path for s in recipe.datasets],
            "samples": recipe.num_calibration_samples,
            "seq_len": recipe.calibration_seq_len,
            "seed": recipe.seed,
        },
        **({"previous": prev} if prev else {}),
    }


def sizes_only_depth(facts: dict) -> bool:
    changed = {k for k, v in facts["sizes_after"].items() if v != facts["sizes_before"][k]}
    return changed == {"num_hidden_layers"}


def sizes_md(facts: dict) -> str:
    changed = [
        f"{k} {v} → {facts['sizes_after'][k]}" for k, v in facts["sizes_before"].items() if facts["sizes_after"][k] != v
    ]
    return ", ".join(changed) or "no size changed"


def pruning_md(recipe: PruneRecipe, facts: dict, plan, before: dict, after: dict) -> str:
    target = f"ratio {recipe.ratio} on {', '.join(recipe.axes)}" if recipe.ratio is not None else "explicit sizes"
    lines = [
        f"- sizes: {sizes_md(facts)} ({target})",
        f"- parameters: {facts['model_params_before']:,} → {facts['model_params_after']:,} "
        f"({facts['model_fraction_removed']:.1%} removed)",
        "- importance (Minitron, activation-based): MLP neurons by their down_proj input, attention heads by "
        "their attention output (whole key/value groups), embedding channels by the RMSNorm outputs; each an "
        "L2 norm along the sequence averaged over windows",
        f"- kept blocks (original indices): {plan.layers}"
        + (
            f", ranked by {recipe.depth_importance}"
            if len(plan.layers) < facts["sizes_before"]["num_hidden_layers"]
            else ""
        ),
        f"- calibration: {recipe.num_calibration_samples} windows × {recipe.calibration_seq_len} tokens",
    ]
    for k in after:
        lines.append(f"- perplexity `{k}`: {before[k]['perplexity']:.2f} (original) → {after[k]['perplexity']:.2f}")
    lines += ["", NOTE]
    return "\n".join(lines)
