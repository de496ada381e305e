"""Low-rank initialisers of one linear layer W (m x n, y = W x), all from the same input statistics of
that layer: the Gram matrix G = Σ x xᵀ (n x n) and the mean absolute activation a = mean |x| (n).

    svd        W = U Σ Vᵀ,             W' = U_r Σ_r V_rᵀ                  minimises ‖W − W'‖_F
    asvd       S = diag(a^α), W S = U Σ Vᵀ,  W' = U_r Σ_r V_rᵀ S⁻¹         activation-aware scaling (ASVD)
    whitening  G = L Lᵀ (Cholesky), W L = U Σ Vᵀ,  W' = U_r Σ_r V_rᵀ L⁻¹   minimises ‖(W − W') X‖_F (SVD-LLM)
    svd_llm_v2 G = Q S Qᵀ (eigh, the first SVD), W Q_+ S_+^½ = U Σ Vᵀ (the second),
               W' = U_r Σ_r V_rᵀ S_+^-½ Q_+ᵀ                                the same minimum, no Cholesky (SVD-LLM V2)
    outcov     C = W G Wᵀ, U_r = top-r eigenvectors of C,  W' = U_r U_rᵀ W   projection on the output subspace

    refit      the layer's inputs shifted by the compression below it (x̃ instead of x): G̃ = Σ x̃ x̃ᵀ = L Lᵀ,
               C = Σ x x̃ᵀ, W C L⁻ᵀ = U Σ Vᵀ,  W' = U_r Σ_r V_rᵀ L⁻¹      minimises ‖W' X̃ − W X‖_F
               (whitening when x̃ = x; compression/compressor.py feeds it, one input of a block at a time)

svd_llm_v2 keeps only the eigen-directions of G above the pseudo-inverse tolerance (n · ε · max eigenvalue, the
`+` subscript): where G is singular (fewer tokens than dimensions, dead channels) it reaches the truncation loss
Σ_{i>r} σ_i² exactly, where whitening needs a jitter, and W' ignores directions no calibration input had. Where G
is full rank it is whitening's W' (any square root of G gives the same truncation).
Whitening and outcov give the same W' when G is full rank (W L and W X share their left singular vectors).
Factors are returned as (up m x r, down r x n) with W' = up @ down; for the SVD family the singular values
are split evenly (√Σ on each side). The math runs in float64.
"""

import torch

from .calibration import InputStats, PairedStats

METHODS = ("svd", "asvd", "whitening", "svd_llm_v2", "outcov", "refit")


def cholesky_with_jitter(gram: torch.Tensor, jitter: float = 1e-6, tries: int = 8) -> tuple[torch.Tensor, float]:
    """Lower-triangular L with L Lᵀ = G + λ·mean(diag G)·I, λ = 0 first, then jitter, 10·jitter, ...

    Returns (L, λ). A Gram matrix from fewer samples than dimensions, or with dead channels, is singular.
    """
    scale = float(gram.diagonal().mean()) or 1.0
    lam = 0.0
    for i in range(tries):
        if lam == 0.0:
            lower, info = torch.linalg.cholesky_ex(gram)
        else:  # no n x n identity: at n = 14336 each float64 n x n copy is 1.5 GiB
            shifted = gram.clone()
            shifted.diagonal().add_(lam * scale)
            lower, info = torch.linalg.cholesky_ex(shifted)
            del shifted
        if int(info) == 0:
            return lower, lam
        lam = jitter * (10**i)
    raise ValueError(f"Gram matrix not positive definite even with jitter {lam}")


def _transform(weight: torch.Tensor, stats: InputStats, method: str, alpha: float, jitter: float):
    """(M = W T, apply T⁻¹ on the right): the matrix whose truncated SVD each method takes."""
    if method == "svd":
        return weight, lambda x: x
    if method == "asvd":
        s = stats.mean_abs.clamp_min(1e-8) ** alpha
        return weight * s, lambda x: x / s
    if method == "whitening":
        lower, _ = cholesky_with_jitter(stats.gram, jitter)
        return weight @ lower, lambda x: torch.linalg.solve_triangular(lower, x, upper=False, left=False)
    if method == "svd_llm_v2":
        values, vectors = torch.linalg.eigh(stats.gram)
        kept = values > values.shape[0] * torch.finfo(values.dtype).eps * values.max().clamp_min(0)
        root, basis = values[kept].sqrt(), vectors[:, kept]
        return (weight @ basis) * root, lambda x: (x / root) @ basis.T
    raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


@torch.no_grad()
def factorize(
    weight: torch.Tensor,
    stats: InputStats | None,
    method: str,
    rank: int,
    alpha: float = 0.5,
    jitter: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down), float64, with up @ down the rank-`rank` approximation of `weight` for `method`."""
    w = weight.detach().to(torch.float64)
    if method == "outcov":
        cov = w @ stats.gram @ w.T
        _, vectors = torch.linalg.eigh(cov)  # ascending eigenvalues
        top = vectors[:, -rank:].flip(-1)
        return top, top.T @ w
    m, undo = _transform(w, stats, method, alpha, jitter)
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, undo(root[:, None] * vh[:rank])


@torch.no_grad()
def refit(
    weight: torch.Tensor, stats: PairedStats, rank: int, jitter: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down), float64: the rank-`rank` W' closest to the original layer's outputs from shifted inputs,
    argmin ‖W' X̃ − W X‖_F (module docstring). The Gram of X̃ gets the whitening's jitter when singular."""
    w = weight.detach().to(torch.float64)
    lower, _ = cholesky_with_jitter(stats.gram, jitter)
    m = torch.linalg.solve_triangular(lower.T, w @ stats.cross, upper=True, left=False)  # W C L⁻ᵀ
    u, s, vh = torch.linalg.svd(m, full_matrices=False)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, torch.linalg.solve_triangular(lower, root[:, None] * vh[:rank], upper=False, left=False)


@torch.no_grad()
def energies(
    weight: torch.Tensor, stats: InputStats | None, method: str, alpha: float = 0.5, jitter: float = 1e-6
) -> torch.Tensor:
    """σ_i² of the matrix each method truncates, descending: the truncation error of rank r is Σ_{i>r} σ_i²
    (in ‖(W−W')X‖² for whitening/outcov, in the scaled norm for asvd, in ‖W−W'‖² for svd)."""
    w = weight.detach().to(torch.float64)
    method = "whitening" if method == "refit" else method  # on the original activations (x̃ = x) they agree
    if method == "outcov":
        return torch.linalg.eigvalsh(w @ stats.gram @ w.T).flip(-1).clamp_min(0)
    m, _ = _transform(w, stats, method, alpha, jitter)
    return torch.linalg.svdvals(m) ** 2
