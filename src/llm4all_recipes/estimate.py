"""Memory and time of a recipe on GPUs, computed from the model's config.json and the recipe alone (no
weights, no tokenizer, no data): `llm4all estimate recipes/<model> [--gpus 8] [--gpu h100]`.

The model of a recipe is followed up its lineage: an input under `outputs/` is the output of the recipe at the
same path under `recipes/` (recipes/<model>/<stage>/<variant>.yaml writes outputs/<model>/<stage>/<variant>),
so a kd recipe on `outputs/m/feature-distill/w20` is sized as the low-rank model the compress recipe of that
lineage makes (ranks computed exactly as `compress` does, from the config's shapes). The root is a Hub id or a
folder with a config.json (`--base_config DIR` replaces the root's config, e.g. with a test fixture;
`--base_config ID=DIR`, repeatable, replaces the config of the model `ID` wherever it appears: a speech-text
model's two parts).

What is counted, per GPU (a rough model, stated here so that it can be checked):
    training (kd, cpt, sft)  weights + gradients + AdamW's two moments of the trained parameters (in the weights'
                             dtype, as torch creates them), divided by the GPU count under FSDP / ZeRO-3
                             (`--shard false`: replicated, DDP); activations of one micro-batch: the layer
                             inputs kept by activation checkpointing (always on when sharded: fsdp.yaml turns
                             FSDP's own on) or ~34 h + 5 i values per token and layer without it, one layer's
                             recomputation, and float32 logits and their gradient; plus
                             a frozen teacher / KL reference (weights, sharded, and its logits).
    compress                 `compression.ranks.memory_estimate` (one layer on the device; measured at 8B shapes).
    feature-distill          one teacher block and one student block with AdamW states, and a batch of block
                             activations; the model stays on the CPU.
    cache-teacher            the teacher's weights and one batch's logits; disk for the top-k cache.
    speech-sft               the speech-text model's weights (Whisper encoder + projector + LM), AdamW in float32
                             for the trained parameters (projector, + LoRA), the LM's activations as in training
                             (the loss reaches the projector through the LM), one encoder layer's; time: the LM's
                             training FLOPs per position + the encoder's forward, 2 N_enc per 20 ms frame, counting
                             every position as audio (an upper bound).
Time: 6 N FLOPs per trained token (8 N with activation checkpointing) + 2 N' per token for a teacher/reference
forward, at `--mfu` of the GPU's dense bf16 peak (an assumption: benchmarks/gpu.sh measures it). compress and
feature-distill are scaled from the H200 measurements at Llama-3.1-8B shapes (docs/BENCHMARKS.md,
scale-llama-3.1-8b-shapes) by FLOPs per layer and by the GPU's peak.
"""

import dataclasses
import math
import os
import re
from pathlib import Path
from typing import Any

from .errors import RecipeError
from .models import empty_model
from .paths import RECIPES_DIR, collect_recipes, default_output_dir, is_produced, local_hub_copy

# name -> (dense bf16 TFLOP/s, memory GiB, memory bandwidth TB/s)
GPUS = {
    "a100-40gb": (312, 40, 1.55),
    "a100": (312, 80, 2.0),
    "l40s": (362, 48, 0.86),
    "h100": (989, 80, 3.35),
    "h200": (989, 141, 4.8),
}
FROM_DATA = "; steps from the data (max_steps unset): see --dry_run"  # a training row's note without max_steps
GENERATE_ROWS = 1000  # generate's time is given per this many rows (the input's length is not in the recipe)
DEFAULT_MFU = 0.35
STAGE_ORDER = (
    "compress",
    "prune",
    "feature-distill",
    "cache-teacher",
    "kd",
    "generate",
    "cpt",
    "sft",
    "speech-sft",
    "eval",
)
# H200 measurements at Llama-3.1-8B layer shapes (benchmarks/scale.py): compress 26.0 s per layer for 256 x 2048
# calibration tokens; feature distillation 30,587 tokens/s per block.
_REF_LAYER_PARAMS = 4096 * (4096 + 1024 + 1024 + 4096) + 3 * 4096 * 14336
_REF_COMPRESS_S, _REF_CALIB_TOKENS, _REF_FD_TOKENS_S, _REF_TFLOPS = 26.0, 256 * 2048, 30587.0, 989
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GiB = 2**30


@dataclasses.dataclass
class ModelSize:
    """What the estimate needs of a model: its config and parameter counts (low-rank ones after ranks)."""

    name: str
    config: Any
    params: int
    layer_params: int  # largest decoder layer (what one device holds in block-wise stages)
    factor_params: int = 0  # parameters of low-rank factors (trainable: factors)
    low_rank: bool = False


def _root(base_config: str | dict | None) -> str | None:
    """The folder standing for the lineage's root (`--base_config DIR`)."""
    return base_config.get(None) if isinstance(base_config, dict) else base_config


def _config(path: str, base_config: str | dict | None, key: str = "model_name_or_path", root: bool = True):
    """The config of `path`: a `--base_config ID=DIR` for it, else (`root`: the lineage's root model) the root's
    `--base_config DIR`, else its own."""
    from transformers import AutoConfig

    named = base_config.get(path) if isinstance(base_config, dict) else None
    source = named or (_root(base_config) if root else None) or local_hub_copy(path)
    try:
        return AutoConfig.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise RecipeError(f"cannot read the config of {path}: {exc}", key=key) from None


def _base_size(path: str, base_config: str | dict | None) -> ModelSize:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    from . import compression

    config = _config(path, base_config)
    low_rank = config.model_type == compression.MODEL_TYPE
    if low_rank:  # an existing low-rank checkpoint: its own ranks
        import torch

        config = config.to_base_config()
        with torch.device("meta"):
            model = compression.lowrank.low_rank_class(MODEL_FOR_CAUSAL_LM_MAPPING[type(config)])(config)
    else:
        model = empty_model(config)
    return _measured(path, config, model, low_rank)


def _measured(path: str, config, model, low_rank: bool = False) -> ModelSize:
    """The ModelSize of a (meta-device) model: parameters, largest decoder layer, low-rank factors."""
    from . import compression
    from .compression.calibration import decoder_layers

    _, layers = decoder_layers(model)
    factors = sum(
        p.numel() for m in model.modules() if isinstance(m, compression.LowRankLinear) for p in m.parameters()
    )
    return ModelSize(
        path,
        config,
        sum(p.numel() for p in model.parameters()),
        max(sum(p.numel() for p in layer.parameters()) for layer in layers),
        factors,
        low_rank,
    )


def producer(path: str) -> Path | None:
    """The recipe under recipes/ whose default output folder is `path` (outputs/<model>/<stage>/<variant>)."""
    parts = Path(os.path.normpath(path)).parts
    if len(parts) < 3 or parts[0] != "outputs":
        return None
    for suffix in (".yaml", ".yml"):
        recipe = RECIPES_DIR.joinpath(*parts[1:]).with_suffix(suffix)
        if recipe.is_file() and default_output_dir(recipe) == os.path.normpath(path):
            return recipe
    return None


def _parse(recipe_path: Path):
    from .parsing import parse_recipe
    from .paths import stage_of

    return stage_of(recipe_path), parse_recipe(stage_of(recipe_path), ["--config", str(recipe_path)], static=True)


def model_size(path: str, base_config: str | None = None, _seen: tuple = ()) -> ModelSize:
    """The size of the model at `path`, following produced paths to the recipes that make them."""
    recipe_path = producer(path) if is_produced(path) else None
    if recipe_path is None or recipe_path in _seen:
        # a base no recipe makes: a Hub id, a folder, or a model a benchmark script builds under outputs/bench/
        by_benchmark = _root(base_config) is not None and Path(os.path.normpath(path)).parts[:2] == (
            "outputs",
            "bench",
        )
        if not is_produced(path) or by_benchmark or os.path.isfile(os.path.join(path, "config.json")):
            return _base_size(path, base_config)
        raise RecipeError(
            f"{path} is made by no recipe under recipes/ (its default output folder); estimate the recipe that makes "
            "it",
            key="model_name_or_path",
        )
    stage, recipe = _parse(recipe_path)
    if not getattr(recipe, "model_name_or_path", None):  # tiny-model: built from a config, read once it exists
        if os.path.isfile(os.path.join(path, "config.json")):
            return _base_size(path, base_config)
        raise RecipeError(
            f"{path} does not exist yet: run {os.path.relpath(recipe_path)} first", key="model_name_or_path"
        )
    if stage == "speech-sft":  # the whole speech-text model; its parts: speech_parts
        parts = speech_parts(recipe, base_config, (*_seen, recipe_path))
        return dataclasses.replace(parts.lm, name=path, params=parts.lm.params + parts.encoder + parts.projector)
    parent = model_size(recipe.model_name_or_path, base_config, (*_seen, recipe_path))
    if stage == "prune":
        return _pruned(recipe, parent, path)
    if stage != "compress":  # training stages keep the architecture (LoRA adapters are merged)
        return dataclasses.replace(parent, name=path)
    return _compressed(recipe, parent, path)


@dataclasses.dataclass
class SpeechSize:
    """A speech-text model's parts: the LM, the audio encoder's and the projector's parameters, frames per LM
    position, the encoder's width."""

    lm: ModelSize
    encoder: int
    projector: int
    stack_factor: int
    d_model: int


def speech_parts(recipe, base_config=None, _seen: tuple = ()) -> SpeechSize:
    """The parts of a speech-sft recipe's model: assembled from `audio_encoder` + a causal LM, or a speech-text model
    made by an earlier speech-sft recipe (followed up the lineage), or an existing speech-llm checkpoint."""
    import torch

    from .speech.speech_llm import Projector, _encoder_class

    if recipe.audio_encoder:
        lm = model_size(recipe.model_name_or_path, base_config, _seen)
        whisper = _config(recipe.audio_encoder, base_config, key="audio_encoder", root=False)
        if whisper.model_type != "whisper":
            raise RecipeError(f"{recipe.audio_encoder} is a {whisper.model_type}, not a Whisper", key="audio_encoder")
        stack, hidden = recipe.stack_factor, recipe.projector_hidden_size
    else:
        path = recipe.model_name_or_path
        parent = producer(path) if is_produced(path) else None
        if parent is not None and parent not in _seen:
            stage, parent_recipe = _parse(parent)
            if stage == "speech-sft":
                return speech_parts(parent_recipe, base_config, (*_seen, parent))
        if is_produced(path) and not os.path.isfile(os.path.join(path, "config.json")):
            raise RecipeError(
                f"{path} does not exist yet: run {os.path.relpath(parent) if parent else 'its step'} first",
                key="model_name_or_path",
            )
        config = _config(path, base_config)
        if not hasattr(config, "whisper_config"):
            raise RecipeError(f"{path} is not a speech-text model: set audio_encoder", key="model_name_or_path")
        whisper, stack, hidden = config.whisper_config, config.stack_factor, config.projector_hidden_size
        lm = _measured(path, config.lm_config, empty_model(config.lm_config))
    with torch.device("meta"):
        encoder = _encoder_class(whisper)(whisper)
        projector = Projector(whisper.d_model, lm.config.hidden_size, stack, hidden)
    return SpeechSize(
        lm,
        sum(p.numel() for p in encoder.parameters()),
        sum(p.numel() for p in projector.parameters()),
        stack,
        whisper.d_model,
    )


def _estimate_speech(recipe, name, base_config, gpus, speed, shard) -> "Estimate":
    parts = speech_parts(recipe, base_config)
    lm, config = parts.lm, parts.lm.config
    wb = _bytes(recipe.dtype, config)
    trainable = parts.projector + (_trainable(recipe, lm) if recipe.use_peft else 0)
    params = lm.params + parts.encoder + parts.projector
    states = params * wb + trainable * 16  # float32 weights, gradients and AdamW moments of the trained ones
    checkpointing = bool(recipe.activation_checkpointing or recipe.gradient_checkpointing or (shard and gpus > 1))
    batch, seq = recipe.per_device_train_batch_size, recipe.max_length
    encoder_layer = batch * 1500 * 40 * parts.d_model * wb  # one 30 s window per row, one layer alive (no grad)
    device = (states / gpus if shard else states) + _activations(config, batch, seq, checkpointing, wb) + encoder_layer
    tokens = _trained_tokens(recipe, gpus)
    flops_per_token = (8 if checkpointing else 6) * lm.params + 2 * parts.encoder * parts.stack_factor
    hours = flops_per_token * tokens / speed / 3600 if tokens else None
    note = (
        f"effective batch {batch * recipe.gradient_accumulation_steps * gpus} × {seq} positions; "
        f"{recipe.trainable}; encoder {_fmt_params(parts.encoder)} frozen"
    )
    if not tokens:
        note += FROM_DATA
    return Estimate(name, "speech-sft", recipe.model_name_or_path, params, trainable, int(device), tokens, hours, note)


def _pruned(recipe, dense: ModelSize, path: str) -> ModelSize:
    """A prune recipe's output: the same architecture with the sizes it solves for (from the config alone)."""
    from .compression.pruning import pruned_config, target_sizes

    config = pruned_config(dense.config, target_sizes(recipe, dense.config))
    return _measured(path, config, empty_model(config))


def _estimate_prune(recipe, name, base_config, speed) -> "Estimate":
    """Forward passes only: the calibration windows once through the model (one layer on the device), plus once
    per block with the perplexity criterion. The held-out perplexities before/after run the whole model on the
    device, one window at a time: that is the peak (weights + one window's logits)."""
    dense = model_size(recipe.model_name_or_path, base_config)
    after = _pruned(recipe, dense, name)
    wb = _bytes(recipe.dtype, dense.config)
    tokens = recipe.num_calibration_samples * recipe.calibration_seq_len
    per_block = (
        recipe.depth_importance == "perplexity" and after.config.num_hidden_layers < dense.config.num_hidden_layers
    )
    passes = 1 + (dense.config.num_hidden_layers + 1 if per_block else 0)
    logits = 3 * max(recipe.perplexity_max_length, recipe.calibration_seq_len) * dense.config.vocab_size * 4
    hours = 2 * dense.params * tokens * passes / speed / 3600
    return Estimate(
        name,
        "prune",
        recipe.model_name_or_path,
        after.params,
        None,
        dense.params * wb + logits,
        tokens,
        hours,
        "importance one layer at a time; perplexities with the whole model",
    )


def _compressed(recipe, dense: ModelSize, path: str) -> ModelSize:
    from .compression.calibration import decoder_layers
    from .compression.ranks import allocate, budget, find_targets, kept

    model = empty_model(dense.config)
    targets = find_targets(model, recipe.targets)
    ranks = allocate(recipe, targets)
    if callable(ranks):  # loss allocation: decided on the spectra; the budget is what is kept
        kept_params, per_layer = budget(targets, recipe.ratio), None
    else:
        kept_params, per_layer = kept(targets, ranks), ranks
    removed = sum(t.params for t in targets) - kept_params
    _, layers = decoder_layers(model)
    layer_removed = max(
        sum(t.params - t.cost(per_layer.get(t.name) if per_layer else None) for t in targets if t.layer == i)
        if per_layer
        else removed // len(layers)
        for i in range(len(layers))
    )
    return ModelSize(
        path, dense.config, dense.params - removed, dense.layer_params - layer_removed // 2, kept_params, True
    )


def _bytes(dtype: str, config) -> int:
    if dtype in DTYPE_BYTES:
        return DTYPE_BYTES[dtype]
    return DTYPE_BYTES.get(str(getattr(config, "dtype", None) or "float32").replace("torch.", ""), 4)


def _activations(config, batch: int, seq: int, checkpointing: bool, wbytes: int) -> int:
    h, i, n_layers, vocab = (config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size)
    tokens = batch * seq
    layer = tokens * (34 * h + 5 * i) * wbytes
    kept = tokens * h * wbytes * n_layers + layer if checkpointing else layer * n_layers
    return kept + 2 * tokens * vocab * 4


@dataclasses.dataclass
class Estimate:
    recipe: str
    stage: str
    model: str
    params: int
    trainable: int | None
    device_bytes: int
    tokens: int | None
    hours: float | None
    note: str = ""


def estimate(
    recipe_path: Path,
    *,
    gpus: int = 1,
    gpu: str = "h100",
    mfu: float = DEFAULT_MFU,
    shard: bool = True,
    base_config: str | None = None,
) -> Estimate | None:
    """The estimate of one recipe (None for stages that need no GPU: build-dataset, publish, pipeline...)."""
    stage, recipe = _parse(recipe_path)
    tflops = GPUS[gpu][0] * 1e12
    speed = gpus * tflops * mfu
    name = str(recipe_path)
    if stage == "compress":
        return _estimate_compress(recipe, name, base_config, tflops)
    if stage == "prune":
        return _estimate_prune(recipe, name, base_config, tflops * mfu)
    if stage == "feature-distill":
        student = model_size(recipe.model_name_or_path, base_config)
        wb = _bytes(recipe.dtype, student.config)
        config = student.config
        tokens = recipe.tokens_per_block or recipe.num_calibration_samples * recipe.calibration_seq_len
        block = recipe.calibration_batch_size * recipe.calibration_seq_len
        device = (
            student.layer_params * 4 * wb
            + student.layer_params * wb
            + 4 * block * (34 * config.hidden_size + 5 * config.intermediate_size) * wb
        )
        ref_speed = _REF_FD_TOKENS_S * _REF_LAYER_PARAMS / student.layer_params * tflops / (_REF_TFLOPS * 1e12)
        hours = tokens * config.num_hidden_layers / ref_speed / 3600
        return Estimate(
            name,
            stage,
            recipe.model_name_or_path,
            student.params,
            student.factor_params,
            device,
            tokens * config.num_hidden_layers,
            hours,
            "one block at a time (scaled from H200 at 8B shapes)",
        )
    if stage == "cache-teacher":
        teacher = model_size(recipe.teacher_model_name_or_path, base_config)
        wb = _bytes("auto", teacher.config)
        device = teacher.params * wb + recipe.batch_size * recipe.max_length * teacher.config.vocab_size * 4
        rows = sum(s.max_rows or 0 for s in recipe.datasets)
        tokens = rows * recipe.max_length if rows else None
        hours = 2 * teacher.params * tokens / (tflops * mfu) / 3600 if tokens else None  # one GPU
        disk = f"; cache ≈ {tokens * recipe.top_k * 6 / GiB:.1f} GiB" if tokens else ""
        return Estimate(
            name,
            stage,
            recipe.teacher_model_name_or_path,
            teacher.params,
            None,
            device,
            tokens,
            hours,
            f"forward only, ≤ max_rows × max_length tokens{disk}",
        )
    if stage == "speech-sft":
        return _estimate_speech(recipe, name, base_config, gpus, speed, shard)
    if stage in ("kd", "cpt", "sft"):
        return _estimate_training(stage, recipe, name, base_config, gpus, speed, shard, GPUS[gpu][1] * GiB)
    if stage == "generate":
        return _estimate_generate(recipe, name, base_config, gpu, mfu)
    if stage == "eval":
        model = model_size(recipe.model_name_or_path, base_config)
        return Estimate(
            name,
            stage,
            recipe.model_name_or_path,
            model.params,
            None,
            model.params * _bytes(recipe.dtype, model.config),
            None,
            None,
            "weights; generation batches on top",
        )
    return None


def _estimate_compress(recipe, name, base_config, tflops) -> Estimate:
    from .compression.ranks import find_targets, memory_estimate

    dense = model_size(recipe.model_name_or_path, base_config)
    model = empty_model(dense.config)
    if recipe.dtype in DTYPE_BYTES:
        import torch

        model = model.to(getattr(torch, recipe.dtype))
    targets = find_targets(model, recipe.targets)
    memory = memory_estimate(
        model, targets, recipe.num_calibration_samples, recipe.calibration_seq_len, recipe.calibration_batch_size
    )
    after = _compressed(recipe, dense, name)
    tokens = recipe.num_calibration_samples * recipe.calibration_seq_len
    per_layer = _REF_COMPRESS_S * (dense.layer_params / _REF_LAYER_PARAMS) * max(tokens / _REF_CALIB_TOKENS, 0.25)
    hours = per_layer * dense.config.num_hidden_layers * (_REF_TFLOPS * 1e12 / tflops) / 3600
    cpu = memory["model_bytes_cpu"] + memory["activations_bytes_cpu"]
    return Estimate(
        name,
        "compress",
        recipe.model_name_or_path,
        after.params,
        None,
        memory["device_peak_bytes"],
        tokens,
        hours,
        f"one layer at a time; CPU RAM ≈ {cpu / GiB:.0f} GiB",
    )


def _estimate_generate(recipe, name, base_config, gpu, mfu) -> Estimate:
    """One GPU: the weights + the KV cache of a batch of `context` tokens; decoding reads the weights once per step
    (memory-bound), prefill is compute-bound. Prompts fill the context at most (8,192 tokens unless set)."""
    teacher = model_size(recipe.model_name_or_path, base_config)
    c, wb = teacher.config, _bytes(recipe.dtype, teacher.config)
    context = recipe.context_length or min(getattr(c, "max_position_embeddings", 8192), 8192)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or c.num_attention_heads
    kv = 2 * c.num_hidden_layers * kv_heads * head_dim * wb * recipe.batch_size * context
    device = teacher.params * wb + kv + recipe.batch_size * c.vocab_size * 4
    tflops, _, bandwidth = GPUS[gpu]
    steps = math.ceil(GENERATE_ROWS / recipe.batch_size) * recipe.max_new_tokens
    decode = steps * (teacher.params * wb + kv / 2) / (bandwidth * 1e12)
    prefill = 2 * teacher.params * GENERATE_ROWS * (context - recipe.max_new_tokens) / (tflops * 1e12 * mfu)
    return Estimate(
        name,
        "generate",
        recipe.model_name_or_path,
        teacher.params,
        None,
        int(device),
        None,
        (decode + prefill) / 3600,
        f"time per {GENERATE_ROWS:,} rows (prompts ≤ {context:,} tokens, batches "
        f"of {recipe.batch_size}, ≤ {recipe.max_new_tokens} new tokens); one GPU",
    )


def _trained_tokens(recipe, gpus: int) -> int | None:
    """Tokens (positions) a training recipe trains on, when max_steps says it; None when the data decides."""
    if not (recipe.max_steps and recipe.max_steps > 0):
        return None
    batch = recipe.per_device_train_batch_size * recipe.gradient_accumulation_steps * gpus
    return recipe.max_steps * batch * recipe.max_length


def _trainable(recipe, model: ModelSize) -> int:
    how = getattr(recipe, "trainable", "all")
    if how == "auto":
        how = "factors" if model.low_rank else "all"
    if recipe.use_peft or how == "lora":
        c = model.config
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        kv = (c.num_key_value_heads or c.num_attention_heads) * head_dim
        q = c.num_attention_heads * head_dim
        per_layer = (c.hidden_size + q) * 2 + (c.hidden_size + kv) * 2 + 3 * (c.hidden_size + c.intermediate_size)
        return recipe.lora_r * per_layer * c.num_hidden_layers
    if how in ("factors", "factors+norms") and model.low_rank:
        return model.factor_params
    return model.params


def _estimate_training(stage, recipe, name, base_config, gpus, speed, shard, memory) -> Estimate:
    from .training import choose_precision, state_bytes

    model = model_size(recipe.model_name_or_path, base_config)
    config, wb = model.config, _bytes(recipe.dtype, model.config)
    trainable = _trainable(recipe, model)
    states = model.params * wb + trainable * 3 * wb
    precision = None
    if wb == 2 and not getattr(recipe, "use_peft", False):  # bf16 weights: the precision policy decides
        shards = gpus if shard else 1
        precision = choose_precision(recipe.precision, trainable, model.params - trainable, memory, shards)
        states = state_bytes(trainable, model.params - trainable, precision)
    # sharded over several GPUs: recipes/accelerate_configs/fsdp.yaml checkpoints activations (FSDP's own)
    checkpointing = bool(recipe.activation_checkpointing or recipe.gradient_checkpointing or (shard and gpus > 1))
    batch, seq = recipe.per_device_train_batch_size, recipe.max_length
    device = (states / gpus if shard else states) + _activations(config, batch, seq, checkpointing, wb)
    other = None
    if stage == "kd" and not recipe.teacher_cache:
        other = recipe.teacher_model_name_or_path
    elif stage == "cpt" and recipe.kl_active:
        other = recipe.reference_model_name_or_path or recipe.model_name_or_path
    extra = model_size(other, base_config).params if other else 0
    device += (extra * wb / gpus if shard else extra * wb) + (2 * batch * seq * config.vocab_size * 4 if other else 0)
    tokens = _trained_tokens(recipe, gpus)
    flops_per_token = (8 if checkpointing else 6) * model.params + 2 * extra
    hours = flops_per_token * tokens / speed / 3600 if tokens else None
    note = f"effective batch {batch * recipe.gradient_accumulation_steps * gpus} × {seq} tokens"
    if precision:
        master = state_bytes(trainable, model.params - trainable, "fp32-master") / (gpus if shard else 1) / GiB
        note += f"; {precision}" + (f" (fp32-master: {master:.1f} GiB of states)" if precision != "fp32-master" else "")
    if other:
        note += f"; + {'teacher' if stage == 'kd' else 'KL reference'} {short_model_name(other)}"
    if not tokens:
        note += FROM_DATA
    return Estimate(name, stage, recipe.model_name_or_path, model.params, trainable, int(device), tokens, hours, note)


def short_model_name(path: str) -> str:
    """A model in an estimate table: a produced folder by its last name, a Hub id as it is."""
    return Path(path).name if is_produced(path) else path


def _fmt_params(n: int | None) -> str:
    if n is None:
        return ""
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def table(estimates: list[Estimate], gpus: int, gpu: str, mfu: float, shard: bool) -> str:
    """Markdown: one row per recipe."""
    layout = "FSDP / ZeRO-3, activations checkpointed" if shard and gpus > 1 else ("replicated" if gpus > 1 else "")
    head = (
        f"Computed by `llm4all estimate` for {gpus} × {gpu} ({GPUS[gpu][1]} GiB){', ' + layout if layout else ''}, "
        f"MFU {mfu:.0%} assumed for training stages"
        f"{'; compress, feature-distill, cache-teacher, generate and eval use one GPU' if gpus > 1 else ''}."
    )
    lines = [
        head,
        "",
        "| recipe | stage | parameters | trained | peak memory / GPU | tokens | time | notes |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for e in estimates:
        fits = "" if e.device_bytes <= GPUS[gpu][1] * GiB else " ⚠ over"
        hours = (
            ""
            if e.hours is None
            else ("< 1 min" if e.hours < 1 / 60 else f"{e.hours * 60:.0f} min" if e.hours < 1 else f"{e.hours:.1f} h")
        )
        tokens = (
            "" if e.tokens is None else (f"{e.tokens / 1e9:.2f} B" if e.tokens >= 1e9 else f"{e.tokens / 1e6:.1f} M")
        )
        lines.append(
            f"| `{e.recipe}` | {e.stage} | {_fmt_params(e.params)} | {_fmt_params(e.trainable)} | "
            f"{e.device_bytes / GiB:.1f} GiB{fits} | {tokens} | {hours} | {e.note} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="llm4all estimate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("paths", nargs="+", help="recipe files or folders")
    parser.add_argument("--gpus", type=int, default=1, help="number of GPUs (default 1)")
    parser.add_argument("--gpu", choices=list(GPUS), default="h100", help="GPU model (default h100)")
    parser.add_argument("--mfu", type=float, default=DEFAULT_MFU, help="model FLOPs utilisation assumed (training)")
    parser.add_argument(
        "--shard",
        type=lambda v: v.lower() in ("1", "true", "yes"),
        default=True,
        help="shard weights and optimizer states across GPUs (FSDP / ZeRO-3; default true)",
    )
    parser.add_argument(
        "--base_config",
        action="append",
        default=[],
        help="DIR: a folder whose config.json stands for the lineage's root model; ID=DIR (repeatable): the one that "
        "stands for model ID wherever it appears (e.g. openai/whisper-large-v3-turbo=tests/fixtures/configs/...)",
    )
    parser.add_argument(
        "--write-readme",
        action="store_true",
        help="rewrite the `<!-- estimate: FLAGS -->` tables of the folder's README.md (one folder)",
    )
    args = parser.parse_args(argv)
    args.base_config = _base_configs(args.base_config)
    if args.write_readme:
        return write_readme(Path(args.paths[0]), args.base_config, args.mfu)
    if args.gpus < 1 or not 0 < args.mfu <= 1:
        raise RecipeError("--gpus must be >= 1 and --mfu in (0, 1]", source="command line")
    rows = []
    order = {stage: i for i, stage in enumerate(STAGE_ORDER)}
    paths = sorted(collect_recipes(args.paths), key=lambda p: (order.get(p.parent.name, len(order)), str(p)))
    for path in paths:
        try:
            if (
                e := estimate(
                    path, gpus=args.gpus, gpu=args.gpu, mfu=args.mfu, shard=args.shard, base_config=args.base_config
                )
            ) is not None:
                rows.append(e)
        except RecipeError as err:
            raise err.located(str(path)) from None
    print(table(rows, args.gpus, args.gpu, args.mfu, args.shard))
    return 0


def _base_configs(values: list[str]) -> str | dict | None:
    """--base_config values: None, one root folder, or {model id: folder, None: root folder}."""
    named = dict(v.split("=", 1) for v in values if "=" in v)
    roots = [v for v in values if "=" not in v]
    if len(roots) > 1:
        raise RecipeError("at most one --base_config DIR (the root); name the others ID=DIR", source="command line")
    if not named:
        return roots[0] if roots else None
    return {**named, None: roots[0] if roots else None}


README_BLOCK = re.compile(r"(<!-- estimate: (.*?) -->\n)(.*?)(\n<!-- end estimate -->)", re.S)


def _base_config_flags(base_config: str | dict | None) -> list[str]:
    if isinstance(base_config, dict):
        root = [base_config[None]] if base_config.get(None) else []
        named = [f"{k}={v}" for k, v in base_config.items() if k is not None]
        return [flag for value in [*root, *named] for flag in ("--base_config", value)]
    return ["--base_config", base_config] if base_config else []


def write_readme(folder: Path, base_config: str | dict | None, mfu: float) -> int:
    """Recompute every estimate table of `folder`/README.md with the flags its marker names."""
    import contextlib
    import io

    readme = folder / "README.md"
    if not readme.is_file():
        raise RecipeError("no README.md in the folder", source=str(folder))

    def table_for(match: re.Match) -> str:
        out = io.StringIO()
        flags = [
            *match.group(2).split(),
            "--mfu",
            str(mfu),
            *_base_config_flags(base_config),
        ]
        with contextlib.redirect_stdout(out):
            main([str(folder), *flags])
        return match.group(1) + out.getvalue().strip() + match.group(4)

    text, n = README_BLOCK.subn(table_for, readme.read_text(encoding="utf-8"))
    readme.write_text(text, encoding="utf-8")
    print(f"{readme}: {n} estimate table(s) rewritten")
    return 0
