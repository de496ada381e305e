"""The compression driver: one decoder layer at a time, statistics → low-rank initialisation → swap.

    for each decoder layer (moved to the device, the rest of the model on the CPU):
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

from .calibration import InputStats, LayerStream, collect_stats, decoder_layers
from .factorize import energies, factorize
from .lowrank import LowRankLinear
from .ranks import Target

logger = logging.getLogger(__name__)


def _by_layer(targets: list[Target]) -> dict[int, list[Target]]:
    out: dict[int, list[Target]] = {}
    for t in targets:
        out.setdefault(t.layer, []).append(t)
    return out


def _local(prefix: str, layer: int, name: str) -> str:
    return name[len(f"{prefix}.{layer}.") :]


@torch.no_grad()
def spectra(model: nn.Module, ids: torch.Tensor, targets: list[Target], *, method: str, alpha: float, jitter: float,
            device: str, batch_size: int) -> dict[str, torch.Tensor]:  # fmt: skip
    """σ² of every target's transformed matrix (for `loss` allocation), original activations propagated."""
    prefix, layers = decoder_layers(model)
    stream = LayerStream(model, ids, device=device, batch_size=batch_size)
    by_layer, out = _by_layer(targets), {}
    for i, layer in enumerate(tqdm(layers, desc="statistics for rank allocation")):
        layer.to(device)
        ts = by_layer.get(i, [])
        stats, outputs = collect_stats(stream, layer, [_local(prefix, i, t.name) for t in ts])
        for t in ts:
            weight = layer.get_submodule(_local(prefix, i, t.name)).weight
            out[t.name] = energies(weight, stats[_local(prefix, i, t.name)], method, alpha, jitter).cpu()
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
    prefix, layers = decoder_layers(model)
    stream = LayerStream(model, ids, device=device, batch_size=batch_size)
    by_layer, peak_live = _by_layer(targets), 0
    for i, layer in enumerate(tqdm(layers, desc=f"compress ({method})")):
        layer.to(device)
        ts = [t for t in by_layer.get(i, []) if ranks.get(t.name) is not None]
        stats, outputs = collect_stats(stream, layer, [_local(prefix, i, t.name) for t in ts])
        peak_live = max(peak_live, len(InputStats.live))
        for t in ts:
            local = _local(prefix, i, t.name)
            linear = layer.get_submodule(local)
            up, down = factorize(linear.weight, stats[local], method, ranks[t.name], alpha, jitter)
            low = LowRankLinear(t.in_features, t.out_features, ranks[t.name], linear.bias is not None,
                                device=linear.weight.device, dtype=linear.weight.dtype)  # fmt: skip
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
    return ranks, {"peak_live_statistics": peak_live, "calibration_tokens": int(ids.numel())}
