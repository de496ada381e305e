"""Which linear layers are compressed, and at which rank.

Convention (SVD-LLM): `ratio` is the fraction of the *targeted* linear parameters removed. An m x n matrix
at rank r keeps r·(m + n) parameters, so it is only factored when r < mn / (m + n); otherwise it stays
dense. Uniform rank: r = ⌊(1 − ratio) · mn / (m + n)⌋. The budget is ⌊(1 − ratio) · Σ mn⌋ kept parameters.

    uniform       every matrix at the uniform rank of its own shape (k/v of GQA models included)
    bottom_first  Lillama: from the first decoder layer upward, lower all the ranks of a layer together, step by
                  step, down to `min_rank_fraction` · mn/(m+n), then the next layer, until the budget is met
    loss          greedy on truncation errors: repeatedly give `rank_multiple` more rank to the matrix whose next
                  singular directions remove the most relative error (σ² / Σσ² of that matrix) per parameter
    svd_llm_v2    SVD-LLM V2's heterogeneous ratios: within each kind of matrix (same block-local name, same
                  stack), the truncation loss L_i = √(Σ_{j>r} σ_j²) of each matrix at the kind's uniform rank, then
                  ratio_i ∝ 1 / log L_i with the kind's mean ratio kept (equal shapes: its parameters too); a ratio
                  above what rank `rank_multiple` allows is capped and the excess shared by the others
    explicit      `ranks: {glob: rank}` from the recipe (the ratio is then only reported)
    module_ratios `module_ratios: {pattern: ratio}`: each matched matrix at the uniform rank of its own ratio, the
                  first matching pattern deciding; unmatched matrices stay dense. The ratios come from a
                  sensitivity measurement on the real model (benchmarks/sensitivity.py); together they must
                  remove at least `ratio` of the targeted parameters

`exclude: [patterns]` leaves matrices dense under any allocation but explicit and module_ratios; the ratio still
counts on every targeted matrix, so the others are compressed more (uniform: at ratio · all / the rest).

With `rank_multiple` > 1, ranks are multiples of it: rounded down, then topped up (largest matrices first) while
the budget allows, so the achieved ratio is never below the target.
"""

import fnmatch
import heapq
import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import RecipeError
from .calibration import InputStats, layer_stacks

# The attention and MLP projections of the decoder families we support, by their transformers names: Llama,
# Mistral, Qwen2/3, Gemma-2/3 (q/k/v/o, gate/up/down) and Phi-3 (fused `qkv_proj`, `gate_up_proj`, factored as
# one matrix each: docs/COMPRESSION.md, "Architectures"). `auto` in `targets` stands for those the model has.
PROJECTIONS = [
    "q_proj",
    "k_proj",
    "v_proj",
    "qkv_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "gate_up_proj",
    "down_proj",
]
# and those of the encoder-decoder speech models (Whisper: encoder and decoder blocks, the decoder's cross-attention
# an `encoder_attn` with q/k/v too), only for encoder-decoder models (decoder-only families with these names, such as
# OPT or Phi-2, are not among the supported ones)
SPEECH_PROJECTIONS = ["out_proj", "fc1", "fc2"]
AUTO = "auto"
DEFAULT_TARGETS = [AUTO]


@dataclass(frozen=True)
class Target:
    name: str  # full module name, e.g. model.layers.3.self_attn.q_proj
    layer: int  # the block's rank in data-flow order (an encoder-decoder's decoder blocks follow its encoder's)
    out_features: int  # m
    in_features: int  # n
    block: str = ""  # the block's full name, e.g. model.layers.3 (model.encoder.layers.3 in Whisper)

    @property
    def local(self) -> str:
        """The module's name inside its block (self_attn.q_proj)."""
        return self.name[len(self.block) + 1 :]

    @property
    def params(self) -> int:
        return self.out_features * self.in_features

    @property
    def max_rank(self) -> int:
        """Largest r with r(m + n) < mn: above it the factors are bigger than the matrix."""
        m, n = self.out_features, self.in_features
        return math.ceil(m * n / (m + n)) - 1

    def cost(self, rank: int | None) -> int:
        return self.params if rank is None else rank * (self.out_features + self.in_features)


def matches(name: str, pattern: str) -> bool:
    """A pattern is a module's last name (`q_proj`) or a glob on its full dotted name (`*.layers.1?.mlp.*`)."""
    return name.rsplit(".", 1)[-1] == pattern or fnmatch.fnmatchcase(name, pattern)


def find_targets(model: nn.Module, patterns: list[str]) -> list[Target]:
    """The nn.Linear modules of the blocks (a decoder's; an encoder-decoder's two stacks) matching the patterns
    (embeddings, convolutions and lm_head never);
    `auto` matches the usual projection names (PROJECTIONS) the model has."""
    try:
        stacks = layer_stacks(model)
    except ValueError as exc:
        raise RecipeError(f"{type(model).__name__} is not supported: {exc}", key="model_name_or_path") from None
    block_of: dict[str, tuple[str, int]] = {}  # linear -> (its block's name, the block's data-flow rank)
    offset = 0
    for prefix, layers in stacks:
        for i in range(len(layers)):
            for local, module in layers[i].named_modules():
                if isinstance(module, nn.Linear):
                    block_of[f"{prefix}.{i}.{local}"] = (f"{prefix}.{i}", offset + i)
        offset += len(layers)
    linears = [(n, m) for n, m in model.named_modules() if n in block_of]
    if not linears:
        raise RecipeError(
            f"{type(model).__name__} is not supported: no nn.Linear inside its decoder blocks to compress",
            key="model_name_or_path",
        )
    if AUTO in patterns:
        have = {n.rsplit(".", 1)[-1] for n, _ in linears}
        names = PROJECTIONS + (SPEECH_PROJECTIONS if getattr(model.config, "is_encoder_decoder", False) else [])
        found = [p for p in names if p in have]
        if not found:
            raise RecipeError(
                f"{type(model).__name__} is not supported by `targets: [auto]`: its decoder has none of "
                f"{', '.join(PROJECTIONS)} (it has: {', '.join(sorted(have))}); list the layers to compress",
                key="targets",
            )
        patterns = [*found, *(p for p in patterns if p != AUTO)]
    targets, used = [], set()
    for name, module in linears:
        hit = [p for p in patterns if matches(name, p)]
        if hit:
            used.update(hit)
            block, layer = block_of[name]
            targets.append(Target(name, layer, module.out_features, module.in_features, block))
    unused = [p for p in patterns if p not in used]
    if unused:
        names = sorted({n.rsplit(".", 1)[-1] for n, _ in linears})
        raise RecipeError(
            f"pattern(s) {unused} match no linear layer (the decoder has: {', '.join(names)})", key="targets"
        )
    return targets


def budget(targets: list[Target], ratio: float) -> int:
    return math.floor((1 - ratio) * sum(t.params for t in targets))


def kept(targets: list[Target], ranks: dict[str, int | None]) -> int:
    return sum(t.cost(ranks.get(t.name)) for t in targets)


def achieved_ratio(targets: list[Target], ranks: dict[str, int | None]) -> float:
    return 1 - kept(targets, ranks) / sum(t.params for t in targets)


def _round(rank: int, multiple: int) -> int:
    return (rank // multiple) * multiple


def _top_up(targets: list[Target], ranks: dict, limit: int, multiple: int) -> dict:
    """Give `multiple` more rank to factored matrices, largest first, while the budget allows."""
    total, grew = kept(targets, ranks), True
    while grew:
        grew = False
        for t in sorted(targets, key=lambda t: -t.params):
            r, step = ranks.get(t.name), multiple * (t.out_features + t.in_features)
            if r is not None and r + multiple <= t.max_rank and total + step <= limit:
                ranks[t.name], total, grew = r + multiple, total + step, True
    return ranks


def uniform(targets: list[Target], ratio: float, multiple: int = 1) -> dict[str, int | None]:
    ranks: dict[str, int | None] = {}
    for t in targets:
        r = math.floor((1 - ratio) * t.params / (t.out_features + t.in_features))
        r = _round(min(r, t.max_rank), multiple)
        ranks[t.name] = r if r >= 1 else None
    if any(r is None for r in ranks.values()):
        raise RecipeError(f"ratio {ratio} leaves some matrices no rank (rank_multiple={multiple})", key="ratio")
    return _top_up(targets, ranks, budget(targets, ratio), multiple) if multiple > 1 else ranks


def bottom_first(
    targets: list[Target],
    ratio: float,
    multiple: int = 1,
    min_rank_fraction: float = 0.25,
    skip_first_layers: int = 0,
) -> dict[str, int | None]:
    limit = budget(targets, ratio)
    ranks: dict[str, int | None] = dict.fromkeys((t.name for t in targets), None)
    total = kept(targets, ranks)
    for layer in sorted({t.layer for t in targets if t.layer >= skip_first_layers}):
        group = [t for t in targets if t.layer == layer]
        floor = {
            t.name: max(
                multiple,
                _round(math.floor(min_rank_fraction * t.params / (t.out_features + t.in_features)), multiple),
            )
            for t in group
        }
        top = max(t.max_rank for t in group)
        for r in range(_round(top, multiple), 0, -multiple):  # all matrices of the layer lowered together
            for t in group:
                if floor[t.name] <= r <= t.max_rank:
                    total += t.cost(r) - t.cost(ranks[t.name])
                    ranks[t.name] = r
                    if total <= limit:
                        return ranks
    raise RecipeError(
        f"bottom_first cannot remove {ratio:.0%} with min_rank_fraction={min_rank_fraction} and skip_first_layers="
        f"{skip_first_layers} (at most {achieved_ratio(targets, ranks):.1%}); lower them or the ratio",
        key="ratio",
    )


def loss_based(
    targets: list[Target], ratio: float, energies: dict[str, torch.Tensor], multiple: int = 1
) -> dict[str, int | None]:
    """Greedy: start every matrix at `multiple`, then add rank where it removes the most relative error per
    parameter."""
    limit = budget(targets, ratio)
    ranks: dict[str, int | None] = {t.name: multiple for t in targets}
    if kept(targets, ranks) > limit:
        raise RecipeError(f"ratio {ratio} is too high for rank_multiple={multiple}", key="ratio")
    rel = {t.name: (energies[t.name] / energies[t.name].sum().clamp_min(1e-30)).double() for t in targets}

    def gain(t: Target, r: int) -> float:
        return float(rel[t.name][r : r + multiple].sum()) / (multiple * (t.out_features + t.in_features))

    heap = [(-gain(t, multiple), i) for i, t in enumerate(targets) if multiple * 2 <= t.max_rank]
    heapq.heapify(heap)
    total = kept(targets, ranks)
    while heap:
        _, i = heapq.heappop(heap)
        t = targets[i]
        step = multiple * (t.out_features + t.in_features)
        if total + step > limit:
            continue  # a smaller matrix may still fit
        ranks[t.name] += multiple
        total += step
        if ranks[t.name] + multiple <= t.max_rank:
            heapq.heappush(heap, (-gain(t, ranks[t.name]), i))
    return ranks


def heterogeneous_ratios(losses: list[float], ratio: float, cap: float) -> list[float]:
    """SVD-LLM V2's ratios for one group of equal-shape matrices: ratio_i ∝ 1 / log L_i, mean `ratio`, none above
    `cap` (capped ones fixed, the rest rescaled, until none exceeds). A loss ≤ 1 (log ≤ 0) counts as barely above 1:
    such a matrix loses almost nothing at any rank, so it takes the cap."""
    weights = [1 / max(math.log(loss), 1e-6) if loss > 0 else 1e6 for loss in losses]
    ratios, free = [0.0] * len(losses), set(range(len(losses)))
    while free:
        left = ratio * len(losses) - sum(ratios[i] for i in range(len(losses)) if i not in free)
        scale = left / sum(weights[i] for i in free)
        over = {i for i in free if weights[i] * scale > cap}
        if not over:
            for i in free:
                ratios[i] = weights[i] * scale
            return ratios
        for i in over:
            ratios[i] = cap
        free -= over
    return ratios


def by_truncation_loss(
    targets: list[Target], ratio: float, energies: dict[str, torch.Tensor], multiple: int = 1
) -> dict[str, int | None]:
    """SVD-LLM V2 allocation (module docstring): per kind, ratios from each matrix's truncation loss at the kind's
    uniform rank; ranks rounded down to `multiple`, then topped up to the budget."""
    groups: dict[tuple[str, str], list[Target]] = {}
    for t in targets:
        groups.setdefault((t.block.rsplit(".", 1)[0], t.local), []).append(t)
    ranks: dict[str, int | None] = {}
    for group in groups.values():
        shape = (group[0].out_features, group[0].in_features)
        if any((t.out_features, t.in_features) != shape for t in group):
            raise RecipeError(f"svd_llm_v2 needs equal shapes per kind ({group[0].local})", key="rank_allocation")
        start = uniform(group[:1], ratio, multiple)[group[0].name]
        losses = [float(energies[t.name][start:].sum().clamp_min(0).sqrt()) for t in group]
        cap = 1 - multiple * sum(shape) / (shape[0] * shape[1])
        for t, share in zip(group, heterogeneous_ratios(losses, ratio, cap)):
            r = _round(min(math.floor((1 - share) * t.params / sum(shape)), t.max_rank), multiple)
            ranks[t.name] = max(r, multiple)
    return _top_up(targets, ranks, budget(targets, ratio), multiple)


def explicit(targets: list[Target], ranks_by_pattern: dict[str, int]) -> dict[str, int | None]:
    ranks: dict[str, int | None] = dict.fromkeys((t.name for t in targets), None)
    for pattern, rank in ranks_by_pattern.items():
        hit = [t for t in targets if matches(t.name, pattern)]
        if not hit:
            raise RecipeError(f"pattern {pattern!r} matches no targeted module", key=f"ranks.{pattern}")
        for t in hit:
            if not 1 <= rank <= t.max_rank:
                raise RecipeError(
                    f"rank {rank} for {t.name} ({t.out_features}x{t.in_features}) must be >= 1 and < mn/(m+n) = "
                    f"{t.params / (t.out_features + t.in_features):.1f} (else the factors outweigh the matrix)",
                    key=f"ranks.{pattern}",
                )
            ranks[t.name] = rank
    return ranks


def by_module_ratio(
    targets: list[Target], ratio: float, module_ratios: dict[str, float], multiple: int = 1
) -> dict[str, int | None]:
    ranks: dict[str, int | None] = dict.fromkeys((t.name for t in targets), None)
    assigned: set[str] = set()
    for pattern, share in module_ratios.items():
        key = f"module_ratios.{pattern}"
        if not 0 <= share < 1:
            raise RecipeError(f"must be in [0, 1), got {share}", key=key)
        hit = [t for t in targets if matches(t.name, pattern) and t.name not in assigned]
        if not hit:
            raise RecipeError(f"pattern {pattern!r} matches no targeted module left by the patterns before it", key=key)
        assigned.update(t.name for t in hit)
        if share > 0:
            ranks.update(uniform(hit, share, multiple))
    achieved = achieved_ratio(targets, ranks)
    if achieved < ratio - 0.005:
        raise RecipeError(
            f"these ratios remove {achieved:.1%} of the targeted linear parameters, less than ratio {ratio}: "
            "raise some, or lower ratio",
            key="module_ratios",
        )
    return ranks


def ratios_from_sensitivity(
    sizes: dict[str, int], curves: dict[str, dict[float, float]], removed: int
) -> dict[str, float]:
    """`module_ratios` that remove `removed` parameters for the least summed damage, from measured curves.

    sizes: {pattern: parameters it covers}; curves: {pattern: {ratio: damage}} where damage is what compressing
    only that pattern's matrices at that ratio cost (a loss rise on held-out text), 0 at ratio 0. Greedy on the
    lower convex hull of each curve: the next step is always the one with the least damage per removed parameter;
    the last step is cut (linearly) to land on the budget. Assumes damages add up (they compound a little: the
    measured model is the judge).
    """
    steps = []  # (damage per parameter, pattern, from ratio, to ratio)
    for pattern, curve in curves.items():
        points = sorted({0.0: 0.0, **curve}.items())
        while len(points) > 1:  # lower convex hull from ratio 0: always the cheapest slope next
            slopes = [(max(d - points[0][1], 0.0) / ((r - points[0][0]) * sizes[pattern]), r, d) for r, d in points[1:]]
            slope, r, d = min(slopes)
            steps.append((slope, pattern, points[0][0], r))
            points = [(r, d)] + [p for p in points if p[0] > r]
    ratios = dict.fromkeys(curves, 0.0)
    left = removed
    for _, pattern, start, end in sorted(steps, key=lambda s: s[0]):
        if left <= 0:
            break
        if ratios[pattern] != start:  # an earlier step of the same curve was skipped: keep the curve in order
            continue
        gain = (end - start) * sizes[pattern]
        ratios[pattern] = end if gain <= left else start + left / sizes[pattern]
        left -= min(gain, left)
    if left > 0:
        raise RecipeError(f"the measured ratios cannot remove {removed:,} parameters", key="ratio")
    return {p: round(r, 4) for p, r in ratios.items() if r > 0}


def summary(model: nn.Module, targets: list[Target], ranks: dict[str, int | None], ratio: float | None) -> dict:
    """Parameters and bytes before/after (targeted and whole model), target and achieved ratios.
    `model` is the dense model (or its meta-device skeleton)."""
    total = sum(p.numel() for p in model.parameters())
    before, after = sum(t.params for t in targets), kept(targets, ranks)
    size = next(model.parameters()).element_size()
    return {
        "target_ratio": ratio,
        "achieved_ratio": round(1 - after / before, 4),
        "targeted_params_before": before,
        "targeted_params_after": after,
        "model_params_before": total,
        "model_params_after": total - before + after,
        "model_fraction_removed": round((before - after) / total, 4),
        "bytes_before": total * size,
        "bytes_after": (total - before + after) * size,
        "compressed_modules": sum(r is not None for r in ranks.values()),
        "dense_modules": sum(r is None for r in ranks.values()),
    }


# modules that read the same input tensor, so share one InputStats (Llama / Mistral / Qwen naming)
SHARED_INPUTS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _input_key(t: Target) -> tuple[int, str]:
    leaf = t.name.rsplit(".", 1)[-1]
    for group in SHARED_INPUTS:
        if leaf in group:
            return t.layer, t.name[: -len(leaf)] + group[0]
    return t.layer, t.name


def memory_estimate(
    model: nn.Module,
    targets: list[Target],
    n_samples: int,
    seq_len: int,
    batch_size: int = 8,
    chunk_rows: int = InputStats.chunk_rows,
) -> dict:
    """Bytes of the layer-by-layer compression (benchmarks/scale.py measures it at Llama-3.1-8B shapes).

    Device: one layer's weights + its float64 statistics (one per distinct input) + the larger of (a) one
    batch's activations while collecting (three MLP intermediates in the model dtype, a float64 chunk of
    `chunk_rows` tokens and its |x|) and (b) the float64 workspace of the largest factorisation (the n x n
    Cholesky factor and about seven m x n matrices). CPU: the model and the calibration hidden states (the
    inputs and outputs of the current layer).
    """
    dtype_bytes = next(model.parameters()).element_size()
    if getattr(model.config, "is_encoder_decoder", False):  # Whisper: an encoder window is 1500 positions
        seq_len = max(seq_len, getattr(model.config, "max_source_positions", 0))
    inputs: dict[tuple[int, str], int] = {_input_key(t): t.in_features for t in targets}
    stats_per_layer: dict[int, int] = {}
    weights_per_layer: dict[int, int] = {}
    for (layer, _), dim in inputs.items():
        stats_per_layer[layer] = stats_per_layer.get(layer, 0) + 8 * dim * dim + 8 * dim
    for t in targets:
        weights_per_layer[t.layer] = weights_per_layer.get(t.layer, 0) + t.params * dtype_bytes
    widest = max(max(t.out_features, t.in_features) for t in targets)
    batch = 3 * dtype_bytes * batch_size * seq_len * widest + 2 * 8 * chunk_rows * widest
    # whitening's float64 workspace: the n x n Cholesky factor, and W, W L, the SVD's factors, its workspace and
    # the triangular solve: ~7 m x n (fitted to benchmarks/scale.py's measured peak at Llama-3.1-8B shapes)
    factorisation = max(8 * (t.in_features**2 + 7 * t.out_features * t.in_features) for t in targets)
    out = {
        "statistics_bytes_per_layer_max": max(stats_per_layer.values()),
        "layer_weights_bytes_max": max(weights_per_layer.values()),
        "batch_activations_bytes": batch,
        "factorisation_bytes": factorisation,
        "activations_bytes_cpu": 2 * n_samples * seq_len * model.config.hidden_size * dtype_bytes,
        "model_bytes_cpu": sum(p.numel() * p.element_size() for p in model.parameters()),
    }
    out["device_peak_bytes"] = (
        out["statistics_bytes_per_layer_max"] + out["layer_weights_bytes_max"] + max(batch, factorisation)
    )
    return out


def allocate(recipe, targets):
    """A compress recipe's rank map, or (rank_allocation: loss, svd_llm_v2) a function of the spectra measured during
    calibration; `exclude`d matrices stay dense, the ratio still counted on all targets."""
    if recipe.rank_allocation == "module_ratios":
        return by_module_ratio(targets, recipe.ratio, recipe.module_ratios, recipe.rank_multiple)
    if recipe.rank_allocation == "explicit":
        return explicit(targets, recipe.ranks)
    dense = [t for t in targets if any(matches(t.name, p) for p in recipe.exclude)]
    for pattern in recipe.exclude:
        if not any(matches(t.name, pattern) for t in targets):
            raise RecipeError(f"pattern {pattern!r} matches no targeted module", key="exclude")
    if not dense:
        return _allocate(recipe, targets, recipe.ratio)
    rest = [t for t in targets if t not in dense]
    share = recipe.ratio * sum(t.params for t in targets) / max(sum(t.params for t in rest), 1)
    if not rest or share >= 1:
        raise RecipeError(
            f"the matrices left to compress cannot remove {recipe.ratio:.0%} of all targeted parameters", key="exclude"
        )
    ranks = _allocate(recipe, rest, share)
    fill = dict.fromkeys((t.name for t in dense), None)
    if callable(ranks):
        return lambda spectra: {**ranks(spectra), **fill}
    return {**ranks, **fill}


def _allocate(recipe, targets, ratio):
    if recipe.rank_allocation == "uniform":
        return uniform(targets, ratio, recipe.rank_multiple)
    if recipe.rank_allocation == "bottom_first":
        return bottom_first(targets, ratio, recipe.rank_multiple, recipe.min_rank_fraction, recipe.skip_first_layers)
    if recipe.rank_allocation == "svd_llm_v2":
        return lambda spectra: by_truncation_loss(targets, ratio, spectra, recipe.rank_multiple)
    return lambda spectra: loss_based(targets, ratio, spectra, recipe.rank_multiple)
