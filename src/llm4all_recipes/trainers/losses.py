"""Distillation losses: pure functions of student logits and a teacher distribution, per token, over a mask.

With temperature τ, p_T = softmax(t / τ) and p_S = softmax(s / τ) (log-probabilities computed in float32):

    forward_kl   KL(p_T ‖ p_S) = Σ p_T (log p_T − log p_S)                     (mode covering; the classic KD)
    reverse_kl   KL(p_S ‖ p_T) = Σ p_S (log p_S − log p_T)                     (mode seeking)
    jsd          generalized Jensen–Shannon, m = β p_T + (1 − β) p_S:
                 β KL(p_T ‖ m) + (1 − β) KL(p_S ‖ m);  β = 0 is taken as forward_kl and β = 1 as reverse_kl
                 (TRL's GKD convention: the mixture form itself vanishes at both ends)

    loss = α · CE(s, labels) + (1 − α) · τ² · D        (τ² keeps gradient magnitudes comparable across τ)

Token losses are summed over the mask and divided by `num_items` — the number of trained tokens in the whole
gradient-accumulation window (what the Trainer passes as `num_items_in_batch`) — so that accumulation gives
the same gradient as one big batch; without it, by the mask's own count.

A teacher distribution is either full logits, or a cached top-k: `teacher_logprobs` (…, k) with
`teacher_indices` (…, k). With a top-k cache both distributions are coarsened to k + 1 categories: the k
cached tokens, and the rest of the vocabulary as one "tail" category (mass 1 − Σ top-k, on each side). D is
then the divergence between the coarsened distributions: exact when k is the vocabulary size, otherwise a
lower bound of the full one (data-processing inequality), never negative, and zero only when the student
matches the teacher on the k tokens *and* on the tail mass. Dropping the tail instead (sums over the k tokens
alone) has a negative minimum, reached by a student that puts no mass outside the teacher's top k — which
wrecks the perplexity of every token the teacher did not rank there (see docs/DISTILLATION.md).
"""

import math

import torch
import torch.nn.functional as F

LOSSES = ("forward_kl", "reverse_kl", "jsd")


def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """Σ p (log p − log q) over the last dimension, from log-probabilities (0·log 0 = 0)."""
    p = p_log.exp()
    return torch.where(p > 0, p * (p_log - q_log), torch.zeros_like(p)).sum(-1)


TAIL_FLOOR = 1e-8  # smallest tail mass: log 0 would make a gradient of 0 · ∞ when k = vocabulary size


def with_tail(top_log: torch.Tensor) -> torch.Tensor:
    """(…, k) log-probabilities of k tokens → (…, k + 1): the rest of the vocabulary as a last category."""
    covered = torch.logsumexp(top_log, dim=-1, keepdim=True)
    tail = torch.log((-torch.expm1(covered.clamp(max=0))).clamp_min(TAIL_FLOOR))
    return torch.cat([top_log, tail], dim=-1)


def divergence(
    student_log: torch.Tensor, teacher_log: torch.Tensor, loss: str = "forward_kl", beta: float = 0.5
) -> torch.Tensor:
    """Per-token divergence between two distributions given as log-probabilities on the same support."""
    if loss == "forward_kl" or (loss == "jsd" and beta == 0):
        return _kl(teacher_log, student_log)
    if loss == "reverse_kl" or (loss == "jsd" and beta == 1):
        return _kl(student_log, teacher_log)
    if loss != "jsd":
        raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")
    mixture = torch.logsumexp(torch.stack([teacher_log + math.log(beta), student_log + math.log(1 - beta)]), dim=0)
    return beta * _kl(teacher_log, mixture) + (1 - beta) * _kl(student_log, mixture)


def distillation_loss(
    student_logits: torch.Tensor,
    mask: torch.Tensor,
    *,
    teacher_logits: torch.Tensor | None = None,
    teacher_logprobs: torch.Tensor | None = None,
    teacher_indices: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    loss: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    alpha: float = 0.0,
    num_items: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """α·CE + (1−α)·τ²·D over the tokens where `mask` is true, normalised by `num_items`.

    All tensors are aligned on the predicted positions: logits (…, V) and labels/mask (…) of the same tokens.
    `teacher_logprobs` of a cache are log-softmax(t / τ) at the cache's temperature.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    if not 0 <= beta <= 1:
        raise ValueError("beta must be in [0, 1]")
    mask = mask.bool()
    s = student_logits[mask].float()
    vocab = s.shape[-1]
    student_log = F.log_softmax(s / temperature, dim=-1)
    if teacher_logits is not None:
        t = teacher_logits[mask].float()[..., :vocab]  # identical tokenizers, padded embedding rows dropped
        teacher_log = F.log_softmax(t / temperature, dim=-1)
    else:
        teacher_log = with_tail(teacher_logprobs[mask].float())
        student_log = with_tail(student_log.gather(-1, teacher_indices[mask].long()))
    kd = divergence(student_log, teacher_log, loss, beta) * temperature**2
    total = (1 - alpha) * kd.sum()
    if alpha > 0:
        if labels is None:
            raise ValueError("alpha > 0 needs labels for the cross-entropy term")
        total = total + alpha * F.cross_entropy(s, labels[mask].long(), reduction="sum")
    return total / _denominator(num_items, mask, total)


def hidden_state_loss(
    student: list[torch.Tensor],
    teacher: list[torch.Tensor],
    mask: torch.Tensor,
    channels: torch.Tensor | None = None,
    num_items=None,
) -> torch.Tensor:
    """Mean over layer pairs of Σ over the masked tokens of ‖s − t‖² / ‖t‖² (the teacher's residual stream
    restricted to `channels`, the ones a width-pruned student kept), normalised like `distillation_loss`."""
    mask = mask.bool()
    total = student[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student, teacher, strict=True):
        t = (t if channels is None else t.index_select(-1, channels))[mask].float()
        s = s[mask].float()
        total = total + ((s - t).pow(2).sum(-1) / t.pow(2).sum(-1).clamp_min(1e-6)).sum()
    return total / len(student) / _denominator(num_items, mask, total)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, num_items=None) -> torch.Tensor:
    """Σ −log p(label) over the mask (float32), normalised like `distillation_loss`."""
    mask = mask.bool()
    total = F.cross_entropy(logits[mask].float(), labels[mask].long(), reduction="sum")
    return total / _denominator(num_items, mask, total)


def _denominator(num_items, mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(num_items if num_items is not None else mask.sum(), device=like.device).clamp_min(1)
