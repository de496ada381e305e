"""Weight merging of checkpoints of one architecture: the one home of the merge math, used by `llm4all merge` and
by `merge_with_base` after a training stage (WiSE-FT, Wortsman et al. 2022).

- linear: Σ wᵢ θᵢ (two models: `torch.lerp`, so that weight 0 is the first model and 1 the second, exactly);
- slerp: spherical interpolation of each tensor between two models (Shoemake 1985; used for LLM merges by
  mergekit), linear where the two tensors are nearly parallel;
- task_arithmetic: θ₀ + Σᵢ λᵢ (θᵢ − θ₀) with θ₀ the base (Ilharco et al. 2023); λ may exceed 1 (extrapolation).

Every tensor is computed in float32 and cast back to the target's dtype; tied tensors (embeddings = lm_head)
are merged once; integer buffers are kept from the first model.
"""

from collections.abc import Iterator
from typing import Literal

import torch

from .errors import RecipeError

Method = Literal["linear", "slerp", "task_arithmetic"]


def same_architecture(reference, other, name: str, key: str = "models") -> None:
    """One clear line when `other` cannot be merged with `reference` (class, parameter names, shapes)."""
    if type(other) is not type(reference):
        raise RecipeError(
            f"{name} is a {type(other).__name__}, the first model a {type(reference).__name__}: "
            "only checkpoints of one architecture merge",
            key=key,
        )
    ref, oth = reference.state_dict(), other.state_dict()
    for k in sorted(ref.keys() | oth.keys()):
        if k not in ref or k not in oth:
            raise RecipeError(f"{name} and the first model differ: parameter {k} is in only one of them", key=key)
        if ref[k].shape != oth[k].shape:
            raise RecipeError(
                f"{name} and the first model differ at {k}: shape {list(oth[k].shape)} vs "
                f"{list(ref[k].shape)} (low-rank checkpoints merge only with equal ranks)",
                key=key,
            )


def slerp(a: torch.Tensor, b: torch.Tensor, t: float, eps: float = 1e-6) -> torch.Tensor:
    """Spherical interpolation from a (t = 0) to b (t = 1) of two float32 tensors, as flat vectors."""
    if t == 0:
        return a.clone()
    if t == 1:
        return b.clone()
    na, nb = a.norm(), b.norm()
    if na < eps or nb < eps:
        return torch.lerp(a, b, t)
    cos = torch.clamp((a.flatten() @ b.flatten()) / (na * nb), -1.0, 1.0)
    omega = torch.arccos(cos)
    if omega < 1e-4:  # (nearly) parallel: the spherical path is the straight one
        return torch.lerp(a, b, t)
    sin = torch.sin(omega)
    return (torch.sin((1 - t) * omega) / sin) * a + (torch.sin(t * omega) / sin) * b


def _merged(tensors: list[torch.Tensor], weights: list[float], method: Method) -> torch.Tensor:
    if method == "linear":
        if len(tensors) == 2:
            return torch.lerp(tensors[0], tensors[1], weights[1])
        return sum(w * t for w, t in zip(weights, tensors, strict=True))
    if method == "slerp":
        return slerp(tensors[0], tensors[1], weights[1])
    base = tensors[0]  # task arithmetic: weights[0] is unused, the base counts once
    return base + sum(w * (t - base) for w, t in zip(weights[1:], tensors[1:], strict=True))


def _floating(state: dict) -> Iterator[tuple[str, torch.Tensor]]:
    seen = set()
    for key, tensor in state.items():
        if tensor.is_floating_point() and tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            yield key, tensor


@torch.no_grad()
def merge_into(models: list, weights: list[float], method: Method = "linear") -> None:
    """Merge the models' parameters into the first one, in place (see the module docstring for `weights`)."""
    if method == "slerp" and len(models) != 2:
        raise RecipeError(f"slerp merges exactly two models, got {len(models)}", key="models")
    states = [m.state_dict() for m in models]
    for key, target in _floating(states[0]):
        merged = _merged([s[key].float() for s in states], weights, method)
        target.copy_(merged.to(target.dtype))


class BaseInterpolation:
    """θ(α) = merge(θ_start, θ_trained, α) written into `model` for any α, so that a grid of α is evaluated with
    one extra copy of the weights (the trained ones, on the CPU) besides the starting model."""

    def __init__(self, model, start, method: Literal["linear", "slerp"] = "linear", key: str = "merge_with_base"):
        same_architecture(model, start, "the starting model", key=key)
        self.model, self.method = model, method
        self.start = dict(_floating(start.state_dict()))
        self.trained = {k: t.detach().to("cpu", copy=True) for k, t in _floating(model.state_dict())}

    @torch.no_grad()
    def apply(self, alpha: float):
        """Write θ(α) into the model (α = 0: the starting model, 1: the trained one, exactly); returns it."""
        for key, target in _floating(self.model.state_dict()):
            a, b = (t.to(target.device).float() for t in (self.start[key], self.trained[key]))
            merged = slerp(a, b, alpha) if self.method == "slerp" else torch.lerp(a, b, alpha)
            target.copy_(merged.to(target.dtype))
        return self.model
