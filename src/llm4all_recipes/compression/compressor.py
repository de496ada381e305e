"""The compression driver: one block at a time, statistics → low-rank initialisation → swap.

    for each block (a decoder's; an encoder's then a decoder's for Whisper) (moved to the device, the rest of the
    model on the CPU):
        run it on the calibration hidden states, hooks accumulate each distinct linear input's statistics
        factor every targeted linear (compression/factorize.py) and swap in a LowRankLinear
        its outputs — of the compressed layer (`propagate: compressed`, as GPTQ) or of the original one —
        become the next layer's inputs; the statistics are freed

`method: refit` runs two streams: the original model's hidden states beside the compressed one's. Within a block,
the inputs are taken in the order the forward reaches them (q/k/v, then o, then gate/up, then down): each group's
matrices are fitted to the original block's outputs from what they receive once everything before them is
compressed (compression/factorize.py, `refit`), then swapped in before the next group's statistics.

`loss` rank allocation needs every matrix's spectrum first: a first statistics pass collects them (no swap),
then ranks are allocated and the compression pass runs.
"""

import copy
import logging
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .calibration import InputStats, LayerStream, PairedStats, collect_stats, input_groups, input_of, layer_stacks
from .factorize import energies, factorize, refit
from .lowrank import LowRankLinear
from .ranks import Target

logger = logging.getLogger(__name__)


def _by_block(targets: list[Target]) -> dict[str, list[Target]]:
    out: dict[str, list[Target]] = {}
    for t in targets:
        out.setdefault(t.block, []).append(t)
    return out


def blocks(model: nn.Module, ids, *, device, batch_size: int):
    """(block name, block, stream) of every block in data-flow order; a stack's stream is captured when the
    stack starts, so a decoder after an encoder sees the encoder as it is then (compressed, in `compress`)."""
    for prefix, layers in layer_stacks(model):
        stream = LayerStream(model, ids, device=device, batch_size=batch_size, stack=(prefix, layers))
        for i, layer in enumerate(layers):
            yield f"{prefix}.{i}", layer, stream


@torch.no_grad()
def spectra(
    model: nn.Module,
    ids: torch.Tensor,
    targets: list[Target],
    *,
    method: str,
    alpha: float,
    jitter: float,
    device: str,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """σ² of every target's transformed matrix (for `loss` allocation), original activations propagated."""
    by_block, out = _by_block(targets), {}
    for name, layer, stream in tqdm(
        blocks(model, ids, device=device, batch_size=batch_size),
        desc="statistics for rank allocation",
        total=_count(model),
    ):
        layer.to(device)
        ts = by_block.get(name, [])
        stats, outputs = collect_stats(stream, layer, [t.local for t in ts])
        for t in ts:
            weight = layer.get_submodule(t.local).weight
            out[t.name] = energies(weight, stats[t.local], method, alpha, jitter).cpu()
        del stats
        layer.to("cpu")
        stream.inputs = outputs
    return out


@torch.no_grad()
def compress_model(
    model: nn.Module,
    ids: torch.Tensor,
    targets: list[Target],
    ranks: dict[str, int | None] | Callable[[dict[str, torch.Tensor]], dict[str, int | None]],
    *,
    method: str = "whitening",
    alpha: float = 0.5,
    jitter: float = 1e-6,
    device: str = "cpu",
    batch_size: int = 8,
    propagate: str = "compressed",
) -> tuple[dict[str, int | None], dict]:
    """Swap the targets for LowRankLinear modules, in place; returns (ranks, report).

    `ranks` is a {module: rank or None (dense)} map, or a function of the spectra (`loss` allocation).
    """
    if callable(ranks):
        ranks = ranks(
            spectra(
                model,
                ids,
                targets,
                method=method,
                alpha=alpha,
                jitter=jitter,
                device=device,
                batch_size=batch_size,
            )
        )
    by_block, peak_live = _by_block(targets), 0
    original_stream, original_inputs = None, []  # method refit: the original model's hidden states
    for name, layer, stream in tqdm(
        blocks(model, ids, device=device, batch_size=batch_size), desc=f"compress ({method})", total=_count(model)
    ):
        layer.to(device)
        ts = [t for t in by_block.get(name, []) if ranks.get(t.name) is not None]
        if method == "refit":
            if stream is not original_stream:  # a new stack (Whisper's decoder): both streams start at its input
                original_stream, original_inputs = stream, list(stream.inputs)
            original_inputs = _refit_block(layer, stream, original_inputs, ts, ranks, jitter)
            stream.inputs = stream.forward(layer)
            layer.to("cpu")
            continue
        stats, outputs = collect_stats(stream, layer, [t.local for t in ts])
        peak_live = max(peak_live, len(InputStats.live))
        for t in ts:
            linear = layer.get_submodule(t.local)
            _swap(layer, t, *factorize(linear.weight, stats[t.local], method, ranks[t.name], alpha, jitter))
        del stats
        if propagate == "compressed" and ts:
            outputs = stream.forward(layer)
        layer.to("cpu")
        stream.inputs = outputs
    logger.info(
        "compressed %d matrices; at most %d input statistics were alive at once",
        sum(r is not None for r in ranks.values()),
        peak_live,
    )
    tokens = ids["decoder_input_ids"] if isinstance(ids, dict) else ids
    return ranks, {"peak_live_statistics": peak_live, "calibration_tokens": int(tokens.numel())}


def _swap(layer: nn.Module, target: Target, up: torch.Tensor, down: torch.Tensor) -> None:
    """Replace `target`'s linear in `layer` by a LowRankLinear holding up @ down (and the same bias)."""
    linear = layer.get_submodule(target.local)
    low = LowRankLinear(
        target.in_features,
        target.out_features,
        up.shape[1],
        linear.bias is not None,
        device=linear.weight.device,
        dtype=linear.weight.dtype,
    )
    low.up.weight.copy_(up)
    low.down.weight.copy_(down)
    if linear.bias is not None:
        low.up.bias.copy_(linear.bias)
    parent, _, child = target.local.rpartition(".")
    setattr(layer.get_submodule(parent) if parent else layer, child, low)


@torch.no_grad()
def _refit_block(
    layer: nn.Module,
    stream: LayerStream,
    original_inputs: list[torch.Tensor],
    targets: list[Target],
    ranks: dict[str, int | None],
    jitter: float,
) -> list[torch.Tensor]:
    """Compress `layer` (on the device) one input group at a time with `refit` (module docstring); returns the
    original block's outputs, the next block's original inputs."""
    original = copy.deepcopy(layer)
    by_local = {t.local: t for t in targets}
    groups = input_groups(layer, list(by_local), lambda: stream.forward(layer, stream.inputs[:1])) if targets else []
    for group in groups:
        stats = PairedStats(by_local[group[0]].in_features, stream.device)
        for shifted, unshifted, kwargs in zip(stream.inputs, original_inputs, stream.kwargs):
            stats.add_batch(
                input_of(original, group[0], unshifted.to(stream.device), kwargs),
                input_of(layer, group[0], shifted.to(stream.device), kwargs),
            )
        for local in group:
            target = by_local[local]
            _swap(layer, target, *refit(original.get_submodule(local).weight, stats, ranks[target.name], jitter))
        del stats
    outputs = stream.forward(original, original_inputs)
    del original
    return outputs


def _count(model: nn.Module) -> int:
    return sum(len(layers) for _, layers in layer_stacks(model))
