"""Lillama: layer-local feature distillation of a low-rank student against its original (teacher) model.

Each compressed decoder block i learns to reproduce the teacher block's output y = T_i(x) with its low-rank
factors (everything else frozen), from detached inputs, with the loss (a = S_i(x), per token, fp32)

    L(a, y) = mean |a − y|  −  mean log σ( cos(a, y) )

    schedule: parallel    x = the teacher's own input to block i: blocks are independent (as Lillama)
    schedule: sequential  x = the output of the already distilled student blocks < i (their errors are seen)
    joint_inputs          both streams (parallel + student inputs = Lillama's Teacher+Student loss)

Blocks stream one at a time: the teacher and student blocks i are moved to the device, the hidden states of
the calibration windows stay on the CPU, and the teacher runs once over the whole depth. Each block keeps the
state with the lowest loss on held-out calibration windows (evaluated before training, every `eval_every`
steps and at the end), so a too-high learning rate never makes a block worse than its initialisation. A
finished block is saved, so an interrupted run resumes at the next block.

Precision: the trained factors are fp32 master weights for AdamW; a block loaded in bf16/fp16 (the dtype of
real models) computes under autocast in that dtype, the loss in fp32; the best state is cast back.
"""

import copy
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save
from torch import nn
from tqdm.auto import tqdm

from .calibration import LayerStream, layer_stacks
from .lowrank import LowRankLinear

logger = logging.getLogger(__name__)


def lillama_loss(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean |a − y| − mean log σ(cos(a, y)), the cosine over the hidden dimension of each token."""
    a, y = a.float(), y.float()
    return (a - y).abs().mean() - F.logsigmoid(F.cosine_similarity(a, y, dim=-1)).mean()


@dataclass
class DistillConfig:
    schedule: str = "parallel"
    joint_inputs: bool = False
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    tokens_per_block: int | None = None
    batch_size: int = 8
    eval_every: int = 20
    device: str = "cpu"
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.05
    early_stopping_patience: int | None = None
    # tokens one step trains on, when not the block's own positions: a speech model's budget counts transcript
    # tokens, so that its encoder blocks (1500 frames per recording) train as many steps as its decoder blocks
    tokens_per_step: int | None = None


def lr_factor(step: int, steps: int, cfg: DistillConfig) -> float:
    """Multiplier of the peak rate at `step` (0-based): linear warm-up, then cosine to 10 % (or constant)."""
    warmup = math.ceil(cfg.warmup_ratio * steps)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.lr_scheduler_type == "constant":
        return 1.0
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass
class BlockReport:
    layer: int
    initial_loss: float
    best_loss: float
    final_loss: float
    best_step: int
    steps: int
    history: list[tuple[int, float]] = field(default_factory=list)


def low_rank_parameters(block: nn.Module) -> dict[str, nn.Parameter]:
    return {n: p for n, p in block.named_parameters() if any(isinstance(m, LowRankLinear) for m in _owners(block, n))}


def _owners(block: nn.Module, param_name: str):
    parts = param_name.split(".")
    for i in range(1, len(parts)):
        yield block.get_submodule(".".join(parts[:i]))


def _autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for a half-precision block whose trained factors are fp32 (no-op for fp32 blocks)."""
    half = dtype in (torch.bfloat16, torch.float16)
    return torch.autocast(device_type=device.type, dtype=dtype if half else torch.bfloat16, enabled=half)


@torch.no_grad()
def held_out_loss(
    block: nn.Module, inputs: list[torch.Tensor], targets: list[torch.Tensor], kwargs: list[dict], device
) -> float:
    total, count = 0.0, 0
    for x, y, kw in zip(inputs, targets, kwargs):
        out = block(x.to(device), **kw)
        a = out[0] if isinstance(out, tuple) else out
        total += float(lillama_loss(a, y.to(device))) * x.shape[0]
        count += x.shape[0]
    return total / count


def train_block(
    block: nn.Module,
    pairs: list[tuple[torch.Tensor, torch.Tensor, dict]],
    holdout: tuple,
    cfg: DistillConfig,
    layer: int,
) -> BlockReport:
    """Train the block's low-rank factors on (input, target, layer kwargs) batches; keep the best held-out state."""
    device = torch.device(cfg.device)
    params = low_rank_parameters(block)
    for p in block.parameters():
        p.requires_grad_(False)
    originals = {n: p.dtype for n, p in params.items()}
    compute = next(iter(originals.values()))
    for p in params.values():  # fp32 master weights for the optimiser
        p.data = p.data.float()
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params.values(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    tokens_per_step = cfg.tokens_per_step or pairs[0][0].shape[0] * pairs[0][0].shape[1]
    budget = cfg.tokens_per_block or tokens_per_step * len(pairs)
    steps = max(1, math.ceil(budget / tokens_per_step))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(i, steps, cfg))

    def evaluate() -> float:
        block.eval()
        with _autocast(device, compute):
            return held_out_loss(block, *holdout, device)

    initial = best = evaluate()
    best_state, best_step, history = (
        copy.deepcopy({n: p.detach().cpu() for n, p in params.items()}),
        0,
        [(0, initial)],
    )
    # dropout stays off (eval mode) while training: the block learns the teacher block's deterministic function, and
    # a checkpoint trained with dropout (Whisper models may ship 0.1) would otherwise chase noisy targets
    block.eval()
    trained = 0
    for step in tqdm(range(1, steps + 1), desc=f"distil block {layer}", leave=False):
        x, y, kw = pairs[(step - 1) % len(pairs)]
        with _autocast(device, compute):
            out = block(x.to(device), **kw)
        a = out[0] if isinstance(out, tuple) else out
        loss = lillama_loss(a, y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        trained = step
        if step % cfg.eval_every == 0 or step == steps:
            current = evaluate()
            history.append((step, current))
            if current < best:
                best, best_step = current, step
                best_state = {n: p.detach().cpu().clone() for n, p in params.items()}
            stale = (step - best_step) // cfg.eval_every
            if cfg.early_stopping_patience and stale >= cfg.early_stopping_patience:
                logger.info(
                    "block %d: no held-out improvement in %d evaluations, stopping at step %d of %d",
                    layer,
                    stale,
                    step,
                    steps,
                )
                break
    final = history[-1][1]
    with torch.no_grad():
        for n, p in params.items():
            p.data = best_state[n].to(device=p.device, dtype=originals[n])
            p.requires_grad_(False)
    block.eval()
    return BlockReport(layer, initial, best, final, best_step, trained, history)


@torch.no_grad()
def distill(
    teacher: nn.Module,
    student: nn.Module,
    train_ids,
    holdout_ids,
    cfg: DistillConfig,
    state_dir: Path | None = None,
    on_block=None,
) -> list[BlockReport]:
    """Distil every compressed block of `student` (in place); teacher and student stay on the CPU.
    `on_block(report)` is called as each block is done (trackers). An encoder-decoder's stacks are distilled one
    after the other (encoder first); the decoder blocks' other inputs (the encoder states of the cross-attention,
    masks) are the teacher's, so that every block learns against its teacher block's exact function."""
    t_stacks, s_stacks = layer_stacks(teacher), layer_stacks(student)
    if [len(t) for _, t in t_stacks] != [len(s) for _, s in s_stacks]:
        raise ValueError("teacher and student have different numbers of blocks")
    device = torch.device(cfg.device)
    done = _finished(state_dir)
    reports: list[BlockReport] = []
    offset = 0
    for t_stack, s_stack in zip(t_stacks, s_stacks):
        t_train = LayerStream(teacher, train_ids, device=device, batch_size=cfg.batch_size, stack=t_stack)
        t_hold = LayerStream(teacher, holdout_ids, device=device, batch_size=cfg.batch_size, stack=t_stack)
        s_train, s_hold = (
            list(t_train.inputs),
            list(t_hold.inputs),
        )  # embeddings are shared: same first inputs
        for k, (t_block, s_block) in enumerate(zip(t_stack[1], s_stack[1])):
            i = offset + k
            t_block.to(device)
            s_block.to(device)
            y_train, y_hold = t_train.forward(t_block), t_hold.forward(t_block)
            if low_rank_parameters(s_block):
                if i in done:
                    s_block.load_state_dict(load_file(str(state_dir / f"block_{i}.safetensors")), strict=False)
                    reports.append(BlockReport(**done[i]))
                else:
                    pairs, hold = [], ([], [], [])
                    streams = {
                        "parallel": [(t_train.inputs, t_hold.inputs)],
                        "sequential": [(s_train, s_hold)],
                    }[cfg.schedule]
                    if cfg.joint_inputs:
                        streams.append(
                            (s_train, s_hold) if cfg.schedule == "parallel" else (t_train.inputs, t_hold.inputs)
                        )
                    for x_train, x_hold in streams:
                        pairs += list(zip(x_train, y_train, t_train.kwargs))
                        hold[0].extend(x_hold)
                        hold[1].extend(y_hold)
                        hold[2].extend(t_hold.kwargs)
                    with torch.enable_grad():
                        report = train_block(s_block, pairs, hold, cfg, i)
                    reports.append(report)
                    _save_block(state_dir, i, s_block, report)
                logger.info("block %d: held-out loss %.4f -> %.4f", i, reports[-1].initial_loss, reports[-1].best_loss)
                if on_block is not None:
                    on_block(reports[-1])
            if cfg.schedule == "sequential" or cfg.joint_inputs:
                s_train, s_hold = t_train.forward(s_block, s_train), t_hold.forward(s_block, s_hold)
            t_block.to("cpu")
            s_block.to("cpu")
            t_train.inputs, t_hold.inputs = y_train, y_hold
        offset += len(t_stack[1])
    return reports


def _finished(state_dir: Path | None) -> dict[int, dict]:
    """Blocks whose distilled state was saved completely (progress.json lists a block after its file is written)."""
    path = None if state_dir is None else state_dir / "progress.json"
    if path is None or not path.is_file():
        return {}
    try:
        return {int(k): v for k, v in json.loads(path.read_text()).items()}
    except (ValueError, AttributeError) as exc:
        logger.warning("%s is unreadable (%s): distilling every block again", path, exc)
        return {}


def _save_block(state_dir: Path | None, layer: int, block: nn.Module, report: BlockReport) -> None:
    from ..paths import atomic_write, write_json

    if state_dir is None:
        return
    state_dir.mkdir(parents=True, exist_ok=True)
    params = {n: p.detach().cpu().contiguous() for n, p in low_rank_parameters(block).items()}
    atomic_write(state_dir / f"block_{layer}.safetensors", save(params))
    progress = _finished(state_dir)
    progress[layer] = report.__dict__
    write_json(state_dir / "progress.json", progress)
