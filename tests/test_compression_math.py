"""The numeric core of compression against naive references: initialisers, statistics, rank allocation."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from llm4all_recipes.compression import ranks as R
from llm4all_recipes.compression.calibration import InputStats, LayerStream, distinct_inputs
from llm4all_recipes.compression.factorize import cholesky_with_jitter, energies, factorize
from llm4all_recipes.errors import RecipeError


def stats_of(x: torch.Tensor) -> InputStats:
    s = InputStats(x.shape[-1], "cpu")
    for chunk in x.split(50):
        s.add_batch(chunk)
    return s


def test_statistics_are_accumulated_in_float64_chunks_exactly(monkeypatch):
    """bf16 batches of (batch, seq, dim) go to float64 a few rows at a time: same Gram, |x| sums and count."""
    monkeypatch.setattr(InputStats, "chunk_rows", 7)
    x = torch.randn(3, 10, 16, dtype=torch.bfloat16)
    s = InputStats(16, "cpu")
    s.add_batch(x[:2])
    s.add_batch(x[2:])
    flat = x.reshape(-1, 16).to(torch.float64)
    assert s.count == 30
    assert torch.allclose(s.gram, flat.T @ flat, rtol=0, atol=1e-12)
    assert torch.allclose(s.mean_abs, flat.abs().mean(0), rtol=0, atol=1e-12)


class ThreeInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.first, self.second, self.third = (torch.nn.Linear(64, 64) for _ in range(3))

    def forward(self, x):
        a = self.first(x * 2)  # the temporary x * 2 is freed once `first` returns ...
        b = self.second(x * 3)  # ... and the allocator hands its memory to x * 3
        return a + b + self.third(x + 1)


def test_distinct_inputs_are_not_merged_by_a_reused_address():
    block, x = ThreeInputs(), torch.randn(4, 16, 64)
    with torch.no_grad():
        leaders = distinct_inputs(block, ["first", "second", "third"], lambda: block(x))
    assert leaders == {"first": "first", "second": "second", "third": "third"}


def test_llama_layers_share_exactly_the_qkv_and_gate_up_inputs():
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
    )
    model = LlamaForCausalLM(config).eval()
    stream = LayerStream(model, torch.randint(0, 100, (4, 32)), device="cpu", batch_size=2)
    names = [f"self_attn.{p}_proj" for p in "qkvo"] + [f"mlp.{p}_proj" for p in ("gate", "up", "down")]
    for layer in stream.layers:
        with torch.no_grad():
            leaders = distinct_inputs(layer, names, lambda layer=layer: stream.forward(layer, stream.inputs[:1]))
            stream.inputs = stream.forward(layer)
        assert leaders == {
            "self_attn.q_proj": "self_attn.q_proj",
            "self_attn.k_proj": "self_attn.q_proj",
            "self_attn.v_proj": "self_attn.q_proj",
            "self_attn.o_proj": "self_attn.o_proj",
            "mlp.gate_proj": "mlp.gate_proj",
            "mlp.up_proj": "mlp.gate_proj",
            "mlp.down_proj": "mlp.down_proj",
        }


def problem(seed=0, m=24, n=32, samples=400, low_rank_inputs=False):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(m, n, generator=g, dtype=torch.float64)
    x = torch.randn(samples, n, generator=g, dtype=torch.float64)
    x = x * torch.linspace(0.1, 3.0, n, dtype=torch.float64)  # anisotropic, like real activations
    if low_rank_inputs:
        x = x[:, :6] @ torch.randn(6, n, generator=g, dtype=torch.float64)
    return w, x


def output_error(w, wp, x):
    return float(torch.linalg.norm((w - wp) @ x.T))


def test_statistics_are_the_exact_sums():
    _, x = problem()
    s = stats_of(x.float())  # activations arrive in the model's dtype; the sums are float64
    x = x.float().double()
    assert torch.allclose(s.gram, x.T @ x, rtol=1e-12, atol=1e-10)
    assert torch.allclose(s.mean_abs, x.abs().mean(0), rtol=1e-12)
    assert s.count == len(x)


def test_svd_is_the_eckart_young_truncation():
    w, x = problem()
    up, down = factorize(w, stats_of(x), "svd", 5)
    u, sv, vh = torch.linalg.svd(w)
    assert up.shape == (24, 5) and down.shape == (5, 32)
    assert torch.allclose(up @ down, u[:, :5] @ torch.diag(sv[:5]) @ vh[:5], atol=1e-10)


@pytest.mark.parametrize("rank", [1, 4, 12])
def test_whitening_and_outcov_give_the_same_matrix_on_full_rank_statistics(rank):
    w, x = problem(seed=rank)
    s = stats_of(x)
    a = torch.matmul(*factorize(w, s, "whitening", rank))
    b = torch.matmul(*factorize(w, s, "outcov", rank))
    assert torch.allclose(a, b, atol=1e-8)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("rank", [2, 8, 16])
def test_whitening_minimises_the_output_error(seed, rank):
    w, x = problem(seed=seed)
    s = stats_of(x)
    errors = {
        m: output_error(w, torch.matmul(*factorize(w, s, m, rank)), x) for m in ("svd", "asvd", "whitening", "outcov")
    }
    assert errors["whitening"] <= errors["svd"] + 1e-9
    assert errors["whitening"] <= errors["asvd"] + 1e-9
    assert errors["whitening"] == pytest.approx(errors["outcov"], rel=1e-6)
    # the truncation error is the tail of the whitened spectrum
    tail = float(energies(w, s, "whitening")[rank:].sum())
    assert errors["whitening"] ** 2 == pytest.approx(tail, rel=1e-6)


def test_asvd_scaling_is_mean_abs_to_the_alpha():
    w, x = problem()
    s = stats_of(x)
    up, down = factorize(w, s, "asvd", 6, alpha=0.5)
    scale = s.mean_abs**0.5
    u, sv, vh = torch.linalg.svd(w * scale)
    reference = (u[:, :6] * sv[:6]) @ vh[:6] / scale
    assert torch.allclose(up @ down, reference, atol=1e-9)


def test_singular_gram_falls_back_to_jitter():
    w, x = problem(low_rank_inputs=True)  # inputs of rank 6 in 32 dimensions: Gram not positive definite
    s = stats_of(x)
    with pytest.raises(torch.linalg.LinAlgError):
        torch.linalg.cholesky(s.gram - 1e-3 * torch.eye(32, dtype=torch.float64) * s.gram.diagonal().mean())
    lower, lam = cholesky_with_jitter(s.gram - 1e-9 * torch.eye(32, dtype=torch.float64) * s.gram.diagonal().mean())
    assert lam > 0 and torch.isfinite(lower).all()
    up, down = factorize(w, s, "whitening", 4)
    assert torch.isfinite(up @ down).all()
    # only the input subspace matters: the error of rank 6 on these inputs is ~0
    assert output_error(w, torch.matmul(*factorize(w, s, "whitening", 6)), x) < 1e-4 * float(torch.linalg.norm(w @ x.T))


# ----------------------------------------------------------------------------- rank allocation
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config)


@pytest.fixture(scope="module")
def targets(model):
    return R.find_targets(model, R.DEFAULT_TARGETS)


def test_targets_cover_the_decoder_linears_only(targets):
    assert len(targets) == 4 * 7
    assert all(".layers." in t.name for t in targets)
    k = next(t for t in targets if t.name.endswith("k_proj"))
    assert (k.out_features, k.in_features) == (64, 128)  # GQA: k/v ranks come from their own shapes


@pytest.mark.parametrize("ratio", [0.2, 0.4, 0.6, 0.8])
def test_uniform_ranks(targets, ratio):
    ranks = R.uniform(targets, ratio)
    for t in targets:
        m, n = t.out_features, t.in_features
        assert ranks[t.name] == math.floor((1 - ratio) * m * n / (m + n))
        assert ranks[t.name] * (m + n) < m * n
    assert abs(R.achieved_ratio(targets, ranks) - ratio) <= 0.01


@pytest.mark.parametrize("ratio", [0.2, 0.5, 0.7])
def test_rounding_to_a_multiple_never_exceeds_the_budget(targets, ratio):
    ranks = R.uniform(targets, ratio, multiple=8)
    assert all(r % 8 == 0 for r in ranks.values())
    assert R.kept(targets, ranks) <= R.budget(targets, ratio)
    assert ratio <= R.achieved_ratio(targets, ranks) <= ratio + 0.03


@pytest.mark.parametrize("ratio", [0.2, 0.4, 0.6])
def test_bottom_first_compresses_the_first_layers_first(targets, ratio):
    ranks = R.bottom_first(targets, ratio, min_rank_fraction=0.25)
    assert abs(R.achieved_ratio(targets, ranks) - ratio) <= 0.01
    by_layer = {}
    for t in targets:
        by_layer.setdefault(t.layer, []).append(ranks[t.name])
    compressed = [sum(r is not None for r in by_layer[i]) for i in sorted(by_layer)]
    assert compressed == sorted(compressed, reverse=True)  # lower layers at least as compressed as upper ones
    assert all(r is None or r < t.max_rank + 1 for t, r in ((t, ranks[t.name]) for t in targets))
    if ratio <= 0.4:
        assert any(all(r is None for r in by_layer[i]) for i in by_layer)  # top layers stay dense


def test_bottom_first_unreachable_budget_is_an_error(targets):
    with pytest.raises(RecipeError, match="bottom_first cannot remove") as exc:
        R.bottom_first(targets, 0.9, min_rank_fraction=0.5)
    assert exc.value.key == "ratio"


def test_loss_based_gives_rank_where_the_error_is(targets):
    # two kinds of spectra: flat (every direction matters) and steep (a few directions hold the energy)
    spectra = {}
    for t in targets:
        k = min(t.out_features, t.in_features)
        steep = "mlp" in t.name
        spectra[t.name] = torch.tensor([0.5**i if steep else 1.0 for i in range(k)], dtype=torch.float64)
    ranks = R.loss_based(targets, 0.5, spectra)
    assert abs(R.achieved_ratio(targets, ranks) - 0.5) <= 0.01
    attn = [ranks[t.name] / t.max_rank for t in targets if "self_attn" in t.name]
    mlp = [ranks[t.name] / t.max_rank for t in targets if "mlp" in t.name]
    assert min(attn) > max(mlp)


def test_explicit_rank_must_shrink_the_matrix(targets):
    ranks = R.explicit(targets, {"q_proj": 10, "*.layers.0.mlp.*": 20})
    assert ranks["model.layers.3.self_attn.q_proj"] == 10 and ranks["model.layers.0.mlp.up_proj"] == 20
    assert ranks["model.layers.1.mlp.up_proj"] is None
    with pytest.raises(RecipeError, match=r"must be >= 1 and < mn/\(m\+n\) = 64.0") as exc:
        R.explicit(targets, {"o_proj": 64})  # 128x128: 64 * 256 = 128 * 128, no gain
    assert exc.value.key == "ranks.o_proj"


def test_unknown_pattern_and_no_linear_layer(model):
    with pytest.raises(RecipeError, match=r"pattern\(s\) \['qproj'\] match no linear layer") as exc:
        R.find_targets(model, ["qproj"])
    assert exc.value.key == "targets"
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50))  # Conv1D, no nn.Linear
    with pytest.raises(RecipeError, match=r"is not supported: no nn\.Linear inside its decoder blocks"):
        R.find_targets(gpt2, ["c_attn"])
