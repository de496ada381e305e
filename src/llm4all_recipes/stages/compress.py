"""Compress the decoder's linear layers into SVD-initialised low-rank factors, calibrated layer by layer.

    llm4all compress --config recipes/tiny-llama/compress/whitening-60.yaml
    llm4all compress --config ... --dry_run true   # rank map, parameters, bytes, memory estimate; no calibration

Writes a low-rank checkpoint (model_type llm4all_lowrank + compression_config + modeling file) that loads
with `load_model()` or with plain transformers and `trust_remote_code=True`.
"""

import logging

from ..cards import CardInfo, model_ref, perplexity_results
from ..compression.calibration import calibration_windows
from ..configs import CompressRecipe
from ..data.mixture import load_data
from ..evaluation.perplexity import held_out_meter
from ..models import dense_skeleton, is_speech_model, load_model, load_tokenizer, resolve_device
from ..outputs import finish, staged_output
from ..tracking import Trackers

logger = logging.getLogger(__name__)

NOTE = (
    "Low-rank checkpoints need their loader: `trust_remote_code=True` (the modeling file ships with the "
    "weights) or llm4all-recipes' `load_model()`. Serving engines such as vLLM or TGI do not run them as they "
    "are; `llm4all export-dense` multiplies the factors out into a plain checkpoint, which gives up the size "
    "and speed gains."
)


def _gb(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**26 else f"{n / 2**20:.2f} MiB"


def print_plan(recipe: CompressRecipe, model, targets, ranks) -> dict:
    from ..compression.ranks import budget, memory_estimate, summary

    memory = memory_estimate(
        model, targets, recipe.num_calibration_samples, recipe.calibration_seq_len, recipe.calibration_batch_size
    )
    print(f"# llm4all compress --dry_run: {recipe.model_name_or_path}, {recipe.method}, {recipe.rank_allocation}")
    if callable(ranks):
        print(
            f"# ranks: decided after calibration (rank_allocation: {recipe.rank_allocation}); budget",
            budget(targets, recipe.ratio),
            "parameters",
        )
        return {"memory": memory}
    for t in targets:
        r = ranks[t.name]
        print(f"{t.name:<48} {t.out_features:>6}x{t.in_features:<6} {'dense' if r is None else f'rank {r}'}")
    facts = summary(model, targets, ranks, recipe.ratio)
    print(
        f"# targeted parameters: {facts['targeted_params_before']:,} -> {facts['targeted_params_after']:,} "
        f"(ratio {facts['achieved_ratio']:.4f}, target {recipe.ratio})"
    )
    print(
        f"# model: {facts['model_params_before']:,} -> {facts['model_params_after']:,} parameters "
        f"({facts['model_fraction_removed']:.1%} removed), {_gb(facts['bytes_before'])} -> {_gb(facts['bytes_after'])}"
    )
    print(
        f"# memory: peak ≈ {_gb(memory['device_peak_bytes'])} on {resolve_device(recipe.device)} (one layer's "
        f"weights {_gb(memory['layer_weights_bytes_max'])}, statistics "
        f"{_gb(memory['statistics_bytes_per_layer_max'])}, "
        f"then batch activations {_gb(memory['batch_activations_bytes'])} or factorisation "
        f"{_gb(memory['factorisation_bytes'])}); calibration activations {_gb(memory['activations_bytes_cpu'])} "
        f"and the model {_gb(memory['model_bytes_cpu'])} on the CPU"
    )
    return {**facts, "memory": memory}


def speech_calibration_data(recipe):
    """(processor, calibration inputs, held-out inputs, data report) of a speech model (Whisper): recordings with
    their reference transcripts; every data error before any model loads."""
    from ..models import load_processor
    from ..speech.calibration import calibration_inputs, eval_inputs, model_inputs, read_pairs

    processor = load_processor(recipe.model_name_or_path, recipe.model_revision)
    pairs = read_pairs(recipe.datasets, "datasets")
    everything = [p for ps in pairs.values() for p in ps]
    inputs = calibration_inputs(recipe, processor, recipe.num_calibration_samples, recipe.seed, everything)
    evals = eval_inputs(recipe, processor)
    used = len(inputs["labels"])
    report = [
        {
            "source": label,
            "split": "train",
            "used_rows": round(used * len(ps) / len(everything)),
            "available_rows": len(ps),
            "share": len(ps) / len(everything),
        }
        for label, ps in pairs.items()
    ]
    return processor, model_inputs(inputs), evals, report


def run(recipe: CompressRecipe, callbacks=None):
    from ..compression import LowRankForCausalLM
    from ..compression.compressor import compress_model
    from ..compression.ranks import allocate, find_targets, summary

    # 1. Targets and ranks from the model's shapes alone (no weights, no data).
    targets = find_targets(dense_skeleton(recipe.model_name_or_path, recipe.model_revision), recipe.targets)
    ranks = allocate(recipe, targets)
    if recipe.dry_run:
        return print_plan(recipe, dense_skeleton(recipe.model_name_or_path, recipe.model_revision), targets, ranks)

    # 2. Calibration windows and held-out text (speech: recordings and their transcripts), then the model.
    speech = is_speech_model(recipe.model_name_or_path, recipe.model_revision)
    tokenizer, ids, evals, data_report = (speech_calibration_data if speech else calibration_data)(recipe)
    device = resolve_device(recipe.device)
    measure = held_out_meter(recipe, tokenizer, evals, device, speech=speech)
    with staged_output(recipe, "compress") as tmp:
        model = load_model(recipe.model_name_or_path, dtype=recipe.dtype, revision=recipe.model_revision)
        before = measure(model, "dense", recipe.model_name_or_path)

        # 3. Layer by layer: statistics -> initialisation -> low-rank swap.
        ranks, report = compress_model(
            model,
            ids,
            targets,
            ranks,
            method=recipe.method,
            alpha=recipe.asvd_alpha,
            jitter=recipe.jitter,
            device=device,
            batch_size=recipe.calibration_batch_size,
            propagate=recipe.propagate,
        )
        dense_size = dense_skeleton(recipe.model_name_or_path, recipe.model_revision)  # the dense parameter counts
        facts = summary(dense_size, targets, ranks, recipe.ratio)
        LowRankForCausalLM.from_base(model, compression_record(recipe, facts, targets, ranks))
        after = measure(model, "compressed")
        trackers = Trackers(recipe, "compress", tmp)
        trackers.log({"achieved_ratio": facts["achieved_ratio"], "parameters": facts["model_params_after"]})
        trackers.log_perplexities(before, after)
        trackers.close()
        metrics = {
            "compression": facts,
            "eval_before": before,
            "eval": after,
            "data": data_report,
            **report,
            "parameters": facts["model_params_after"],
        }

        # 4. Checkpoint (low-rank format) + card, then publish.
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        finish(
            tmp,
            stage="compress",
            recipe=recipe,
            metrics=metrics,
            parent=recipe.model_name_or_path,
            card=card_info(recipe, facts, before, after, target_names(targets), speech, data_report),
        )
    return metrics


def calibration_data(recipe: CompressRecipe):
    """(tokenizer, calibration windows, held-out sets, mixture report) of a text model: every data error before any
    model loads."""
    tokenizer = load_tokenizer(recipe.model_name_or_path, recipe.model_revision)
    calib, evals, data_report = load_data(recipe, tokenizer)
    return tokenizer, calibration_windows(recipe, tokenizer, calib["text"]), evals, data_report


def compression_record(recipe: CompressRecipe, facts: dict, targets, ranks: dict) -> dict:
    """The checkpoint's `compression_config`: method, ratios, ranks, calibration."""
    calibration = {
        "datasets": [s.path for s in recipe.datasets],
        "samples": recipe.num_calibration_samples,
        "seq_len": recipe.calibration_seq_len,
        "seed": recipe.seed,
        "propagate": recipe.propagate,
    }
    return {
        "method": recipe.method,
        "ratio": recipe.ratio,
        "achieved_ratio": facts["achieved_ratio"],
        "model_fraction_removed": facts["model_fraction_removed"],
        "rank_allocation": recipe.rank_allocation,
        **({"module_ratios": recipe.module_ratios} if recipe.module_ratios else {}),
        **({"exclude": recipe.exclude} if recipe.exclude else {}),
        "targets": target_names(targets),
        "ranks": {k: v for k, v in ranks.items() if v is not None},
        "base_model": recipe.model_name_or_path,
        "calibration": calibration,
    }


def card_info(
    recipe: CompressRecipe, facts: dict, before: dict, after: dict, names: list[str], speech: bool, data_report: list
) -> CardInfo:
    blocks = "encoder and decoder blocks" if speech else "decoder"
    return CardInfo(
        summary=f"{model_ref(recipe.model_name_or_path)} with {facts['achieved_ratio']:.0%} of the linear parameters "
        f"of its {blocks} removed by {recipe.method} low-rank factorisation.",
        training=compression_md(recipe, facts, before, after, names, speech),
        results=perplexity_results(after, recipe.eval_datasets, None if speech else recipe.perplexity_max_length),
        data_report=data_report,
        tags=["compression", "low-rank", recipe.method],
        limitations=NOTE,
    )


def target_names(targets) -> list[str]:
    """The targeted modules' last names, in model order (`auto` resolved)."""
    return list(dict.fromkeys(t.name.rsplit(".", 1)[-1] for t in targets))


def compression_md(
    recipe: CompressRecipe, facts: dict, before: dict, after: dict, names: list[str], speech: bool = False
) -> str:
    lines = [
        f"- method: `{recipe.method}`, rank allocation `{recipe.rank_allocation}`, targets {', '.join(names)}",
        f"- ratio: {facts['achieved_ratio']:.4f} of the targeted linear parameters removed (target {recipe.ratio}); "
        f"{facts['model_fraction_removed']:.1%} of the whole model",
        f"- parameters: {facts['model_params_before']:,} → {facts['model_params_after']:,}; "
        f"bytes: {facts['bytes_before']:,} → {facts['bytes_after']:,}",
        f"- calibration: {recipe.num_calibration_samples} windows × {recipe.calibration_seq_len} tokens, "
        f"layer by layer (inputs of layer i+1 from the {recipe.propagate} layer i)"
        if not speech
        else f"- calibration: {recipe.num_calibration_samples} recordings (one window of log-mel features each) and "
        f"their reference transcripts (up to {recipe.calibration_seq_len} tokens), encoder blocks then decoder blocks, "
        f"block by block (inputs of block i+1 from the {recipe.propagate} block i)",
    ]
    what = "perplexity of the reference transcripts given the audio" if speech else "perplexity"
    for k in after:
        lines.append(f"- {what} `{k}`: {before[k]['perplexity']:.2f} (dense) → {after[k]['perplexity']:.2f}")
    lines += ["", NOTE]
    return "\n".join(lines)
