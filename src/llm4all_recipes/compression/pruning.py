"""Structured pruning to a smaller config of the same architecture (Minitron width, ShortGPT depth).

Importance is measured on calibration windows streamed layer by layer (calibration.LayerStream), from
activations only, as Minitron (Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge
Distillation"): every score is aggregated over a window by the L2 norm along the sequence, then averaged
over windows (their best batch/sequence aggregation).

- MLP neuron i of a layer: the input of down_proj, act(gate(x))ᵢ · up(x)ᵢ.
- Attention head h: the norm over head_dim of its attention output (the input of o_proj, head h's slice);
  a GQA group (one key/value head and the query heads that read it) scores the sum of its query heads, and
  groups are kept or removed whole, so every layer keeps num_attention_heads / num_key_value_heads queries
  per key/value head.
- Embedding (residual) channel c: its value at the output of every RMSNorm of the model (both norms of every
  block and the final one), summed over the norms.
- Depth, Block Influence (ShortGPT, Men et al. 2024): BI = 1 − mean over tokens of cos(input, output) of the
  block; or the perplexity of the model with the block skipped minus the full model's (Minitron's depth
  criterion), measured with the whole model on the device.

The kept indices then slice every weight (`prune_state_dict`): rows and columns of the projections, the norms'
weights, the embedding matrix and lm_head; the sliced tensors load into a model built from the pruned config
with no remote code. Supported: the Llama-style decoder families below (q/k/v/o, gate/up/down, two RMSNorms
per block); anything else fails in one line.
"""

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from ..errors import RecipeError
from .calibration import LayerStream, decoder_layers

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")


def check_supported(config) -> None:
    if config.model_type not in SUPPORTED:
        raise ValueError(
            f"prune supports Llama-style decoders ({', '.join(SUPPORTED)}); this model is {config.model_type!r}"
        )


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


class Aggregate:
    """Σ over windows of ‖x[window, :, j]‖₂ (L2 along the sequence), divided by the number of windows."""

    def __init__(self):
        self.total: torch.Tensor | None = None
        self.windows = 0

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:  # x: (windows, seq, ...)
        norms = x.float().norm(dim=1).double().sum(0)  # float32 norms (no float64 copy of a batch), float64 sums
        self.total = norms if self.total is None else self.total + norms
        self.windows += x.shape[0]

    @property
    def value(self) -> torch.Tensor:
        return (self.total / max(self.windows, 1)).cpu()


@dataclass
class Importance:
    """Scores per layer (neurons, query heads), per residual channel and per block (Block Influence)."""

    neurons: list[torch.Tensor] = field(default_factory=list)  # (intermediate_size,) per layer
    heads: list[torch.Tensor] = field(default_factory=list)  # (num_attention_heads,) per layer
    channels: torch.Tensor | None = None  # (hidden_size,)
    block_influence: list[float] = field(default_factory=list)  # per layer
    perplexity_drop: list[float] | None = None  # per layer, when measured

    def groups(self, layer: int, config) -> torch.Tensor:
        """Score of each key/value group of a layer: the sum of its query heads' scores."""
        kv = config.num_key_value_heads
        return self.heads[layer].reshape(kv, -1).sum(-1)


def block_influence(x_in: torch.Tensor, x_out, acc: list) -> None:
    """Add Σ over tokens of 1 − cos(input, output) of one batch of a block, and its token count, to `acc`."""
    x_out = x_out[0] if isinstance(x_out, tuple) else x_out
    cos = nn.functional.cosine_similarity(x_in.float(), x_out.float(), dim=-1)
    acc[0] += float((1 - cos).double().sum())
    acc[1] += cos.numel()


@torch.no_grad()
def measure(model: nn.Module, ids: torch.Tensor, *, device, batch_size: int = 8) -> Importance:
    """Width importance and Block Influence of every layer, one layer on the device at a time."""
    config = model.config
    heads, hd = config.num_attention_heads, head_dim(config)
    stream = LayerStream(model, ids, device=device, batch_size=batch_size)
    channels = Aggregate()
    result = Importance()
    for layer in tqdm(stream.layers, desc="importance", unit="layer"):
        layer.to(stream.device)
        neurons, head_scores, influence = Aggregate(), Aggregate(), [0.0, 0]
        hooks = [
            layer.register_forward_hook(lambda m, a, out, acc=influence: block_influence(a[0], out, acc)),
            layer.mlp.down_proj.register_forward_pre_hook(lambda m, a, agg=neurons: agg.add(a[0])),
            layer.self_attn.o_proj.register_forward_pre_hook(
                lambda m, a, agg=head_scores: agg.add(a[0].float().unflatten(-1, (heads, hd)).norm(dim=-1))
            ),
            layer.input_layernorm.register_forward_hook(lambda m, a, out: channels.add(out)),
            layer.post_attention_layernorm.register_forward_hook(lambda m, a, out: channels.add(out)),
        ]
        try:
            outputs = stream.forward(layer)
        finally:
            for h in hooks:
                h.remove()
        layer.to("cpu")
        result.block_influence.append(influence[0] / influence[1])
        result.neurons.append(neurons.value)
        result.heads.append(head_scores.value)
        stream.inputs = outputs
    norm = final_norm(model).to(stream.device)
    for x in stream.inputs:
        channels.add(norm(x.to(stream.device)))
    norm.to("cpu")
    # every norm's windows were counted: the sum over norms of each norm's mean
    channels.windows = len(ids)
    result.channels = channels.value
    return result


def final_norm(model: nn.Module) -> nn.Module:
    return model.get_decoder().norm


class Skip(nn.Module):
    """A decoder block that returns its input: the model without that block."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@torch.no_grad()
def perplexity_drop(model: nn.Module, ids: torch.Tensor, *, device) -> tuple[float, list[float]]:
    """(perplexity of the model, [perplexity with block i skipped − that] for every block) on the windows; the
    whole model is moved to `device` for the measure and back to the CPU after."""
    _, layers = decoder_layers(model)
    model.to(device)

    def ppl() -> float:  # one window at a time: the full-vocabulary logits of one window only
        total, count = 0.0, 0
        for window in ids:
            window = window[None].to(device)
            logits = model(input_ids=window, use_cache=False).logits[0, :-1]
            total += float(nn.functional.cross_entropy(logits.float(), window[0, 1:], reduction="sum"))
            count += window.shape[1] - 1
        return math.exp(total / count)

    try:
        full = ppl()
        drops = []
        for i in tqdm(range(len(layers)), desc="perplexity without each block", unit="block"):
            block, layers[i] = layers[i], Skip()
            try:
                drops.append(ppl() - full)
            finally:
                layers[i] = block
    finally:
        model.to("cpu")
    return full, drops


# ----------------------------------------------------------------------------- choosing what to keep
def top(scores: torch.Tensor, k: int) -> list[int]:
    """Indices of the k highest scores, in their original order (ties: the lower index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:k])


@dataclass
class Plan:
    """What survives: original indices of the kept layers, residual channels and, per kept layer, neurons and
    key/value groups."""

    layers: list[int]
    channels: list[int]
    neurons: list[list[int]]
    groups: list[list[int]]

    @classmethod
    def choose(cls, imp: Importance, config, sizes: dict[str, int], depth_scores: list[float]) -> "Plan":
        layers = top(torch.tensor(depth_scores), sizes["num_hidden_layers"])
        groups = sizes["num_attention_heads"] // (config.num_attention_heads // config.num_key_value_heads)
        return cls(
            layers=layers,
            channels=top(imp.channels, sizes["hidden_size"]),
            neurons=[top(imp.neurons[i], sizes["intermediate_size"]) for i in layers],
            groups=[top(imp.groups(i, config), groups) for i in layers],
        )


SIZE_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def sizes_of(config) -> dict[str, int]:
    return {k: getattr(config, k) for k in SIZE_KEYS}


def config_problem(config) -> str | None:
    """Why transformers would refuse this config (e.g. Llama: hidden_size not a multiple of num_attention_heads)."""
    if config.hidden_size % config.num_attention_heads:
        return (
            f"hidden_size {config.hidden_size} is not a multiple of num_attention_heads {config.num_attention_heads} "
            "(transformers refuses it)"
        )
    try:
        config.validate()
    except Exception as exc:
        return str(getattr(exc, "__cause__", None) or exc).splitlines()[0]
    return None


def pruned_config(config, sizes: dict[str, int]):
    """A copy of the config with the new sizes; head_dim stays the original's (set explicitly)."""
    new = config.__class__.from_dict(config.to_dict())
    rep = config.num_attention_heads // config.num_key_value_heads
    for k, v in sizes.items():
        setattr(new, k, v)
    new.num_key_value_heads = sizes["num_attention_heads"] // rep
    new.head_dim = head_dim(config)
    return new


def shrink_layer_types(new_config, kept_layers: list[int]) -> None:
    """Configs that list one attention type per layer (Qwen2, Mistral sliding windows) keep the kept layers'."""
    types = getattr(new_config, "layer_types", None)
    if types is not None:
        new_config.layer_types = [types[i] for i in kept_layers]
    if getattr(new_config, "max_window_layers", None) is not None:
        new_config.max_window_layers = sum(i < new_config.max_window_layers for i in kept_layers)


def parameter_count(config) -> int:
    """Parameters of a model of this config (tied weights once), from a meta-device skeleton."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def sizes_for_keep(config, keep: float, axes: list[str], multiple: int) -> dict[str, int]:
    """Every size on `axes` scaled by `keep` (widths rounded down to `multiple`, at least one of each); hidden_size
    stays a multiple of num_attention_heads (transformers requires it), so both round together."""
    sizes = sizes_of(config)
    rep = config.num_attention_heads // config.num_key_value_heads

    def width(n: int, step: int) -> int:
        return max(step, math.floor(n * keep / step) * step) if n >= step else n

    if "mlp" in axes:
        sizes["intermediate_size"] = width(config.intermediate_size, multiple)
    if "heads" in axes:
        groups = max(1, math.floor(config.num_key_value_heads * keep))
        if "embedding" not in axes:  # the width stays: only head counts that divide it
            while groups > 1 and config.hidden_size % (groups * rep):
                groups -= 1
        sizes["num_attention_heads"] = groups * rep
    if "embedding" in axes:
        sizes["hidden_size"] = width(config.hidden_size, math.lcm(multiple, sizes["num_attention_heads"]))
    if "depth" in axes:
        sizes["num_hidden_layers"] = max(1, math.floor(config.num_hidden_layers * keep))
    return sizes


def sizes_for_ratio(
    config, ratio: float, axes: list[str], multiple: int, count: Callable = parameter_count
) -> dict[str, int]:
    """The largest common keep fraction of `axes` whose model has at least `ratio` of the parameters removed
    (bisection on the fraction; the parameter count only grows with it)."""
    total = count(config)
    counted: dict[tuple, int] = {}

    def size(sizes: dict[str, int]) -> int:  # most bisection steps give sizes already counted
        key = tuple(sizes.values())
        if key not in counted:
            counted[key] = count(pruned_config(config, sizes))
        return counted[key]

    def removed(keep: float) -> float:
        return 1 - size(sizes_for_keep(config, keep, axes, multiple)) / total

    if removed(0.0) < ratio:
        raise ValueError(
            f"pruning {', '.join(axes)} cannot remove {ratio:.0%} of the parameters (at most {removed(0.0):.1%})"
        )
    lo, hi = 0.0, 1.0  # removed(lo) >= ratio > removed(hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if removed(mid) >= ratio else (lo, mid)
    sizes = sizes_for_keep(config, lo, axes, multiple)
    # Rounding down left some budget: give it back one step per axis in turn (finest first) while at least
    # `ratio` stays removed and hidden_size stays a multiple of the heads, so the axes stay near the common fraction.
    rep = config.num_attention_heads // config.num_key_value_heads
    grew = True
    while grew:
        grew = False
        steps = {
            "intermediate_size": multiple,
            "hidden_size": math.lcm(multiple, sizes["num_attention_heads"]),
            "num_attention_heads": rep,
            "num_hidden_layers": 1,
        }
        for key, step in steps.items():
            grown = {**sizes, key: sizes[key] + step}
            if (
                grown[key] <= getattr(config, key)
                and grown["hidden_size"] % grown["num_attention_heads"] == 0
                and 1 - size(grown) / total >= ratio
            ):
                sizes, grew = grown, True
    return sizes


# ----------------------------------------------------------------------------- slicing the weights
_LAYER = re.compile(r"^(.*\.layers)\.(\d+)\.(.+)$")


def prune_state_dict(state: dict[str, torch.Tensor], plan: Plan, config) -> dict[str, torch.Tensor]:
    """The original weights sliced to the plan, layers renumbered 0..n−1. Unknown parameters are an error."""
    hd = head_dim(config)
    rep = config.num_attention_heads // config.num_key_value_heads
    ch = torch.tensor(plan.channels)
    position = {old: new for new, old in enumerate(plan.layers)}
    out = {}
    for name, w in state.items():
        m = _LAYER.match(name)
        if m is None:  # embeddings, final norm, lm_head: residual channels on the last dimension
            if not re.search(r"(embed_tokens|norm|lm_head)\.weight$", name):
                raise ValueError(f"prune does not know how to slice parameter {name!r}")
            out[name] = w.index_select(-1, ch)
            continue
        prefix, index, rest = m.group(1), int(m.group(2)), m.group(3)
        if index not in position:
            continue
        j = position[index]
        groups = torch.tensor(plan.groups[j])
        kv = (groups[:, None] * hd + torch.arange(hd)).flatten()  # rows of the kept key/value heads
        q_heads = (groups[:, None] * rep + torch.arange(rep)).flatten()
        q = (q_heads[:, None] * hd + torch.arange(hd)).flatten()
        neurons = torch.tensor(plan.neurons[j])
        rows_cols = {
            "self_attn.q_proj.weight": (q, ch),
            "self_attn.q_proj.bias": (q, None),
            "self_attn.k_proj.weight": (kv, ch),
            "self_attn.k_proj.bias": (kv, None),
            "self_attn.v_proj.weight": (kv, ch),
            "self_attn.v_proj.bias": (kv, None),
            "self_attn.o_proj.weight": (ch, q),
            "self_attn.o_proj.bias": (ch, None),
            "self_attn.q_norm.weight": (None, None),
            "self_attn.k_norm.weight": (None, None),
            "mlp.gate_proj.weight": (neurons, ch),
            "mlp.gate_proj.bias": (neurons, None),
            "mlp.up_proj.weight": (neurons, ch),
            "mlp.up_proj.bias": (neurons, None),
            "mlp.down_proj.weight": (ch, neurons),
            "mlp.down_proj.bias": (ch, None),
            "input_layernorm.weight": (ch, None),
            "post_attention_layernorm.weight": (ch, None),
        }
        if rest not in rows_cols:
            raise ValueError(f"prune does not know how to slice parameter {name!r}")
        rows, cols = rows_cols[rest]
        if rows is not None:
            w = w.index_select(0, rows)
        if cols is not None:
            w = w.index_select(1, cols)
        out[f"{prefix}.{j}.{rest}"] = w if rows is not None or cols is not None else w.clone()
    return out


def build_pruned(model: nn.Module, plan: Plan, sizes: dict[str, int]) -> nn.Module:
    """A fresh model of the base class and the pruned config, holding the sliced weights."""
    from transformers import AutoModelForCausalLM

    config = pruned_config(model.config, sizes)
    shrink_layer_types(config, plan.layers)
    dtype = next(model.parameters()).dtype
    with torch.device("meta"):
        pruned = AutoModelForCausalLM.from_config(config, dtype=dtype)
    state = prune_state_dict(model.state_dict(), plan, model.config)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    missing, unexpected = pruned.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"pruned weights do not fit the pruned config: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        pruned.tie_weights()
    if getattr(model, "generation_config", None) is not None:  # sampling defaults (vLLM reads them) carry over
        pruned.generation_config = copy.deepcopy(model.generation_config)
    for name, buf in model.named_buffers():  # rotary inverse frequencies (non-persistent buffers)
        try:
            target = pruned.get_buffer(name)
        except AttributeError:
            continue
        if target.is_meta:
            _set_buffer(pruned, name, buf.clone())
    left = [n for n, t in [*pruned.named_parameters(), *pruned.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"pruned model has tensors without values: {left[:3]}")
    pruned.eval()
    return pruned


def _set_buffer(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module, _, leaf = name.rpartition(".")
    owner = model.get_submodule(module) if module else model
    owner._buffers[leaf] = value


def target_sizes(recipe, config) -> dict[str, int]:
    """A prune recipe's sizes: explicit ones checked against the model, or solved from `ratio` on `axes`."""
    before = sizes_of(config)
    rep = config.num_attention_heads // config.num_key_value_heads
    if recipe.ratio is not None:
        try:
            return sizes_for_ratio(config, recipe.ratio, list(recipe.axes), recipe.size_multiple)
        except ValueError as exc:
            raise RecipeError(str(exc), key="ratio") from None
    sizes = dict(before)
    for key in recipe.SIZES:
        value = getattr(recipe, key)
        if value is None:
            continue
        if value > before[key]:
            raise RecipeError(f"{value} is more than the model's {before[key]}", key=key)
        if key == "num_attention_heads" and value % rep:
            raise RecipeError(
                f"must be a multiple of {rep} (the query heads per key/value head: GQA groups are kept whole)",
                key=key,
            )
        sizes[key] = value
    if problem := config_problem(pruned_config(config, sizes)):
        key = "hidden_size" if recipe.hidden_size is not None else "num_attention_heads"
        raise RecipeError(problem, key=key)
    return sizes


def pruning_facts(config, sizes: dict[str, int]) -> dict:
    before = parameter_count(config)
    after = parameter_count(pruned_config(config, sizes))
    return {
        "sizes_before": sizes_of(config),
        "sizes_after": dict(sizes),
        "model_params_before": before,
        "model_params_after": after,
        "model_fraction_removed": round(1 - after / before, 4),
    }
