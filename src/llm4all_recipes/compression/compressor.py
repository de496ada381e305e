"""The compression driver: one block at a time, statistics → low-rank initialisation → swap.

    for each block (a decoder's; an encoder's then a decoder's for Whisper) (moved to the device, the rest of the
    model on the CPU):
        run it on the calibration hidden states, hooks accumulate each distinct linear input's statistics
        factor every targeted linear (compression/factorize.py) and swap in a LowRankLinear
        its outputs — of the compressed layer (`propagate: compressed`, as GPTQ) or of the original one —
        become the next layer's inputs; the statistics are freed

`loss` rank allocation needs every matrix's spectrum first: a first statistics pass collects them (no swap),
then ranks are allocated and the compression pass runs.
"""

import logging
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .calibration import InputStats, LayerStream, collect_stats, layer_stacks
from .factorize import energies, factorize
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
    for name, layer, stream in tqdm(
        blocks(model, ids, device=device, batch_size=batch_size), desc=f"compress ({method})", total=_count(model)
    ):
        layer.to(device)
        ts = [t for t in by_block.get(name, []) if ranks.get(t.name) is not None]
        stats, outputs = collect_stats(stream, layer, [t.local for t in ts])
        peak_live = max(peak_live, len(InputStats.live))
        for t in ts:
            local = t.local
            linear = layer.get_submodule(local)
            up, down = factorize(linear.weight, stats[local], method, ranks[t.name], alpha, jitter)
            low = LowRankLinear(
                t.in_features,
                t.out_features,
                ranks[t.name],
                linear.bias is not None,
                device=linear.weight.device,
                dtype=linear.weight.dtype,
            )
            low.up.weight.copy_(up)
            low.down.weight.copy_(down)
            if linear.bias is not None:
                low.up.bias.copy_(linear.bias)
            parent, _, child = local.rpartition(".")
            setattr(layer.get_submodule(parent) if parent else layer, child, low)
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


def _count(model: nn.Module) -> int:
    return sum(len(layers) for _, layers in layer_stacks(model))
