"""Structured pruning: importance scores against a brute-force reference, exact equalities of the sliced
models (pruned heads/neurons/blocks = the original with them switched off), GQA groups kept whole, ratio
solving, the `prune` stage's checkpoint loaded with plain transformers, bad input, and the KD hidden-state
loss."""

import json
import math

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    Qwen2Config,
    Qwen3Config,
)

from llm4all_recipes.cli import main
from llm4all_recipes.compression import pruning as P
from llm4all_recipes.trainers.kd import hidden_pairs
from llm4all_recipes.trainers.losses import hidden_state_loss

RECIPE = "recipes/tiny-llama/prune/width-20.yaml"


def toy(cls=LlamaConfig, layers: int = 3, **extra):
    """A random Llama-style model: 8 query heads in 2 GQA groups, head_dim 8 (≠ hidden / heads)."""
    torch.manual_seed(0)
    config = cls(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=8,
        initializer_range=0.2,
        tie_word_embeddings=False,
        **extra,
    )
    return AutoModelForCausalLM.from_config(config).eval()


def windows(n: int = 5, length: int = 12) -> torch.Tensor:
    return torch.randint(0, 64, (n, length), generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------- brute-force reference
def rms(x, w, eps):
    return w * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), -1) * sin


def reference_block(model, layer, x):
    """One Llama block written out in float64, token by token where it matters: (output, [norm outputs],
    per-head attention outputs (b, s, heads, head_dim), MLP activations (b, s, intermediate))."""
    c, blk = model.config, model.model.layers[layer]
    W = {n: p.detach().double() for n, p in blk.named_parameters()}
    b, s, _ = x.shape
    heads, kv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    cos, sin = model.model.rotary_emb(x.float(), torch.arange(s)[None])
    cos, sin = cos.double()[:, None], sin.double()[:, None]  # (1, 1, s, hd)
    n1 = rms(x, W["input_layernorm.weight"], c.rms_norm_eps)
    q = (n1 @ W["self_attn.q_proj.weight"].T).view(b, s, heads, hd).transpose(1, 2)
    k = (n1 @ W["self_attn.k_proj.weight"].T).view(b, s, kv, hd).transpose(1, 2)
    v = (n1 @ W["self_attn.v_proj.weight"].T).view(b, s, kv, hd).transpose(1, 2)
    q, k = rotate(q, cos, sin), rotate(k, cos, sin)
    out = torch.zeros(b, s, heads, hd, dtype=torch.float64)
    for h in range(heads):
        g = h // (heads // kv)
        for t in range(s):  # causal attention of token t
            scores = torch.einsum("bd,btd->bt", q[:, h, t], k[:, g, : t + 1]) / math.sqrt(hd)
            out[:, t, h] = torch.einsum("bt,btd->bd", scores.softmax(-1), v[:, g, : t + 1])
    r = x + out.reshape(b, s, heads * hd) @ W["self_attn.o_proj.weight"].T
    n2 = rms(r, W["post_attention_layernorm.weight"], c.rms_norm_eps)
    gate, up = n2 @ W["mlp.gate_proj.weight"].T, n2 @ W["mlp.up_proj.weight"].T
    act = torch.nn.functional.silu(gate) * up
    return r + act @ W["mlp.down_proj.weight"].T, [n1, n2], out, act


def l2_seq_mean_batch(x):  # (b, s, ...) -> (...): Minitron's aggregation
    return torch.stack([x[i].pow(2).sum(0).sqrt() for i in range(x.shape[0])]).mean(0)


def test_importance_matches_a_brute_force_reference():
    model, ids = toy(), windows()
    got = P.measure(model, ids, device="cpu", batch_size=2)  # 3 batches: the sums must add up across them
    with torch.no_grad():
        x = model.model.embed_tokens(ids).double()
        channels = torch.zeros(32, dtype=torch.float64)
        for i in range(3):
            y, norms, heads, act = reference_block(model, i, x)
            assert torch.allclose(l2_seq_mean_batch(act), got.neurons[i], rtol=1e-4)
            assert torch.allclose(l2_seq_mean_batch(heads.norm(dim=-1)), got.heads[i], rtol=1e-4)
            cos = torch.nn.functional.cosine_similarity(x, y, dim=-1)
            assert got.block_influence[i] == pytest.approx(float(1 - cos.mean()), rel=1e-4)
            channels += sum(l2_seq_mean_batch(n) for n in norms)
            x = y
        channels += l2_seq_mean_batch(rms(x, model.model.norm.weight.double(), model.config.rms_norm_eps))
        # the reference block reproduces the model (so the reference is the model's own computation)
        assert torch.allclose(
            model.model.norm(x.float()), model(ids, output_hidden_states=True).hidden_states[-1], atol=1e-4
        )
    assert torch.allclose(channels, got.channels, rtol=1e-4)
    # a GQA group scores the sum of its 4 query heads
    assert torch.allclose(got.groups(1, model.config), got.heads[1].reshape(2, 4).sum(-1))


def full_plan(model) -> P.Plan:
    c = model.config
    return P.Plan(
        layers=list(range(c.num_hidden_layers)),
        channels=list(range(c.hidden_size)),
        neurons=[list(range(c.intermediate_size))] * c.num_hidden_layers,
        groups=[list(range(c.num_key_value_heads))] * c.num_hidden_layers,
    )


@pytest.mark.parametrize("cls", [LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config])
def test_pruned_heads_neurons_and_blocks_equal_the_original_with_them_switched_off(cls):
    model, ids = toy(cls), windows(2)
    with torch.no_grad():
        assert torch.equal(
            P.build_pruned(model, full_plan(model), P.sizes_of(model.config))(ids).logits, model(ids).logits
        )
        plan = full_plan(model)
        plan.layers = [0, 2]  # block 1 removed
        plan.groups = [[1], [0]]  # layer 0 keeps group 1 (query heads 4-7), layer 2 group 0 (heads 0-3)
        plan.neurons = [list(range(0, 48, 2)), list(range(24, 48))]
        sizes = {**P.sizes_of(model.config), "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 24}
        pruned = P.build_pruned(model, plan, sizes)
        # the original, with the same parts switched off: zero o_proj columns of removed heads, down_proj
        # columns of removed neurons, and block 1 skipped
        layers = model.model.layers
        for layer, heads, neurons in ((0, range(0, 4), range(1, 48, 2)), (2, range(4, 8), range(0, 24))):
            for h in heads:
                layers[layer].self_attn.o_proj.weight[:, h * 8 : (h + 1) * 8] = 0
            layers[layer].mlp.down_proj.weight[:, list(neurons)] = 0
        layers[1] = P.Skip()
        assert torch.allclose(pruned(ids).logits, model(ids).logits, atol=1e-5)
    assert pruned.config.num_key_value_heads == 1 and pruned.config.head_dim == 8
    assert type(pruned) is type(model)


def test_gqa_groups_stay_whole_and_aligned():
    """Each kept key/value head keeps exactly the query heads that read it, in order."""
    model = toy()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    q = state["model.layers.0.self_attn.q_proj.weight"]
    k = state["model.layers.0.self_attn.k_proj.weight"]
    for h in range(8):
        q[h * 8 : (h + 1) * 8] = h  # query head h's rows hold h
    for g in range(2):
        k[g * 8 : (g + 1) * 8] = 100 + g
    plan = full_plan(model)
    plan.groups = [[1], [0, 1], [0]]
    out = P.prune_state_dict(state, plan, model.config)
    q0, k0 = out["model.layers.0.self_attn.q_proj.weight"], out["model.layers.0.self_attn.k_proj.weight"]
    assert q0.shape == (32, 32) and k0.shape == (8, 32)
    assert [int(q0[i * 8, 0]) for i in range(4)] == [4, 5, 6, 7] and int(k0[0, 0]) == 101
    assert out["model.layers.0.self_attn.o_proj.weight"].shape == (32, 32)
    # a ratio on heads removes whole groups
    sizes = P.sizes_for_keep(model.config, 0.5, ["heads"], 8)
    assert sizes["num_attention_heads"] == 4 and P.pruned_config(model.config, sizes).num_key_value_heads == 1


def test_perplexity_drop_matches_the_model_rebuilt_without_each_block():
    model, ids = toy(), windows(4, 10)
    full, drops = P.perplexity_drop(model, ids, device="cpu")

    def ppl(m):
        with torch.no_grad():
            return math.exp(float(m(input_ids=ids, labels=ids).loss))

    assert full == pytest.approx(ppl(model), rel=1e-5)
    for i in range(3):
        plan = full_plan(model)
        plan.layers = [j for j in range(3) if j != i]
        smaller = P.build_pruned(model, plan, {**P.sizes_of(model.config), "num_hidden_layers": 2})
        assert drops[i] == pytest.approx(ppl(smaller) - full, rel=1e-4)


def test_ratio_removes_at_least_the_share_and_no_axis_can_grow():
    config = toy().config
    total = P.parameter_count(config)
    for axes in (["mlp"], ["mlp", "embedding"], ["depth"], ["mlp", "heads", "embedding", "depth"]):
        sizes = P.sizes_for_ratio(config, 0.3, axes, 8)
        removed = 1 - P.parameter_count(P.pruned_config(config, sizes)) / total
        assert removed >= 0.3 and P.config_problem(P.pruned_config(config, sizes)) is None
        for key, step in (("intermediate_size", 8), ("hidden_size", 8), ("num_hidden_layers", 1)):
            grown = {**sizes, key: sizes[key] + step}
            if grown[key] <= getattr(config, key):
                assert 1 - P.parameter_count(P.pruned_config(config, grown)) / total < 0.3
    with pytest.raises(ValueError, match="at most"):
        P.sizes_for_ratio(config, 0.9, ["heads"], 8)
    # Llama requires hidden_size % num_attention_heads == 0 (even with head_dim set): 12 heads, hidden 96
    wide = LlamaConfig(
        vocab_size=64,
        hidden_size=96,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=12,
        num_key_value_heads=6,
        head_dim=8,
    )
    for ratio in (0.1, 0.2, 0.3, 0.45):
        for axes in (["embedding"], ["heads"], ["mlp", "embedding", "heads"]):
            sizes = P.sizes_for_ratio(wide, ratio, axes, 8)
            assert P.config_problem(P.pruned_config(wide, sizes)) is None, (ratio, axes, sizes)


def test_prune_stage_writes_a_plain_checkpoint(tiny_model, tmp_path):
    out = tmp_path / "pruned"
    assert (
        main(
            [
                "prune",
                "--config",
                RECIPE,
                "--model_name_or_path",
                str(tiny_model),
                "--output_dir",
                str(out),
                "--push_to_hub",
                "false",
                "--hidden_size",
                "96",
                "--intermediate_size",
                "256",
                "--num_hidden_layers",
                "3",
                "--num_attention_heads",
                "2",
                "--ratio",
                "null",
            ]
        )
        == 0
    )
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config and config["model_type"] == "llama"
    assert (config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]) == (96, 256, 3)
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (2, 1, 32)
    pc = config["pruning_config"]
    assert len(pc["kept_layers"]) == 3 and len(pc["kept_channels"]) == 96 and pc["sizes_before"]["hidden_size"] == 128
    model = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no remote code
    metrics = json.loads((out / "metrics.json").read_text())
    assert sum(p.numel() for p in model.parameters()) == metrics["parameters"]
    assert metrics["pruning"]["model_params_after"] == metrics["parameters"]
    # the weights are the original's rows and columns
    original = AutoModelForCausalLM.from_pretrained(tiny_model)
    channels, layer = pc["kept_channels"], pc["kept_layers"][0]
    assert torch.equal(model.model.embed_tokens.weight, original.model.embed_tokens.weight[:, channels])
    assert torch.equal(
        model.model.layers[0].input_layernorm.weight, original.model.layers[layer].input_layernorm.weight[channels]
    )
    # the kept blocks are the highest Block Influence ones
    bi = metrics["importance"]["block_influence"]
    assert pc["kept_layers"] == sorted(sorted(range(4), key=lambda i: -bi[i])[:3])
    card = (out / "README.md").read_text()
    assert "base_model:" in card and "structurally pruned" in card and "trust_remote_code" not in card


def test_prune_by_ratio_on_the_tiny_default(tiny_model, tmp_path):
    out = tmp_path / "pruned"
    assert (
        main(
            [
                "prune",
                "--config",
                RECIPE,
                "--model_name_or_path",
                str(tiny_model),
                "--output_dir",
                str(out),
                "--push_to_hub",
                "false",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pruning"]["model_fraction_removed"] >= 0.2
    before, after = (
        metrics["eval_before"]["old_eval"]["perplexity"],
        metrics["eval"]["old_eval"]["perplexity"],
    )
    assert before < after < 2 * before  # informed pruning: worse, not destroyed
    assert AutoConfig.from_pretrained(out).pruning_config["axes"] == ["mlp", "embedding"]


@pytest.mark.parametrize(
    "extra, key, message",
    [
        (["--hidden_size", "512", "--ratio", "null"], "hidden_size", "more than the model's 128"),
        (["--num_attention_heads", "3", "--ratio", "null"], "num_attention_heads", "multiple of 2"),
        (["--hidden_size", "64"], "ratio", "not both"),
        (["--ratio", "0.9", "--axes", '["heads"]'], "ratio", "at most"),
        (["--ratio", "1.5"], "ratio", "in (0, 1)"),
        (
            ["--hidden_size", "102", "--ratio", "null"],
            "hidden_size",
            "not a multiple of num_attention_heads 4",
        ),
    ],
)
def test_bad_sizes_fail_in_one_line_before_loading(tiny_model, tmp_path, capsys, extra, key, message):
    out = tmp_path / "pruned"
    assert (
        main(["prune", "--config", RECIPE, "--model_name_or_path", str(tiny_model), "--output_dir", str(out), *extra])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"key '{key}'" in err[0] and message in err[0]
    assert not out.exists() and not out.with_name("pruned.tmp").exists()


def test_unsupported_families_and_low_rank_inputs_are_refused(tmp_path, capsys, compressed_model):
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).save_pretrained(gpt2)
    for model, message in ((gpt2, "this model is 'gpt2'"), (compressed_model, "already low-rank")):
        out = tmp_path / "out"
        assert main(["prune", "--config", RECIPE, "--model_name_or_path", str(model), "--output_dir", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "model_name_or_path" in err[0] and message in err[0]
        assert not out.exists()


# ----------------------------------------------------------------------------- KD hidden-state loss
def test_hidden_state_loss_matches_its_formula():
    g = torch.Generator().manual_seed(0)
    s = [torch.randn(2, 5, 3, generator=g) for _ in range(2)]
    t = [torch.randn(2, 5, 4, generator=g) for _ in range(2)]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    channels = torch.tensor([0, 2, 3])
    expected = 0.0
    for a, b in zip(s, t, strict=True):
        for i in range(2):
            for j in range(5):
                if mask[i, j]:
                    tb = b[i, j, channels]
                    expected += float(((a[i, j] - tb) ** 2).sum() / (tb**2).sum())
    assert float(hidden_state_loss(s, t, mask, channels)) == pytest.approx(expected / 2 / 8, rel=1e-5)


def test_hidden_pairs_follow_the_pruning_config():
    teacher = toy(layers=4).config
    student = P.pruned_config(teacher, {**P.sizes_of(teacher), "num_hidden_layers": 3, "hidden_size": 24})
    student.pruning_config = {"kept_layers": [0, 2, 3], "kept_channels": list(range(24))}
    pairs, channels = hidden_pairs(student, teacher)
    assert pairs == [(1, 1), (2, 3)] and channels == list(range(24))  # the last blocks are after the final norm
    assert hidden_pairs(teacher, teacher) == ([(1, 1), (2, 2), (3, 3)], None)
    for bad in (
        None,  # not pruned, and not the teacher's shape
        {"kept_layers": [0, 2, 3], "kept_channels": [*range(23), 40]},  # channel 40: the teacher has 32
        {"kept_layers": [0, 2, 3], "kept_channels": list(range(24)), "sizes_before": {"hidden_size": 64}},
    ):
        student.pruning_config = bad
        with pytest.raises(ValueError, match="pruned from this teacher"):
            hidden_pairs(student, teacher)
    shallow = P.pruned_config(teacher, {**P.sizes_of(teacher), "num_hidden_layers": 3})
    with pytest.raises(ValueError, match="pruned from this teacher"):  # unpruned, shallower: no silent mapping
        hidden_pairs(shallow, teacher)


def test_kd_heals_a_pruned_student_with_the_hidden_state_loss(tiny_model, tmp_path, capsys):
    pruned, healed = tmp_path / "pruned", tmp_path / "healed"
    assert (
        main(
            [
                "prune",
                "--config",
                RECIPE,
                "--model_name_or_path",
                str(tiny_model),
                "--output_dir",
                str(pruned),
                "--push_to_hub",
                "false",
                "--num_hidden_layers",
                "3",
                "--hidden_size",
                "96",
                "--ratio",
                "null",
            ]
        )
        == 0
    )
    kd = [
        "kd",
        "--config",
        "recipes/tiny-llama/kd/heal-pruned.yaml",
        "--teacher_model_name_or_path",
        str(tiny_model),
        "--push_to_hub",
        "false",
        "--max_steps",
        "4",
        "--save_steps",
        "2",
        "--kd_hidden_coef",
        "1",
    ]
    capsys.readouterr()
    # a student that is neither pruned from the teacher nor of its shape: refused before loading
    assert (
        main(
            [
                *kd,
                "--model_name_or_path",
                str(tiny_model),
                "--teacher_model_name_or_path",
                str(pruned),
                "--output_dir",
                str(tmp_path / "bad"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "kd_hidden_coef" in err[0] and "pruned from this teacher" in err[0]
    assert not (tmp_path / "bad").exists()
    assert main([*kd, "--model_name_or_path", str(pruned), "--output_dir", str(healed)]) == 0
    metrics = json.loads((healed / "metrics.json").read_text())
    assert metrics["eval"]["old_eval"]["perplexity"] <= metrics["eval_before"]["old_eval"]["perplexity"]
    assert "hidden-state loss" in (healed / "README.md").read_text()
    assert AutoConfig.from_pretrained(healed).num_hidden_layers == 3


def test_pruning_a_pruned_model_keeps_indices_into_the_original(tiny_model, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    common = ["--config", RECIPE, "--push_to_hub", "false", "--ratio", "null"]
    assert (
        main(
            [
                "prune",
                *common,
                "--model_name_or_path",
                str(tiny_model),
                "--output_dir",
                str(first),
                "--num_hidden_layers",
                "3",
                "--hidden_size",
                "112",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "prune",
                *common,
                "--model_name_or_path",
                str(first),
                "--output_dir",
                str(second),
                "--num_hidden_layers",
                "2",
                "--hidden_size",
                "96",
            ]
        )
        == 0
    )
    one, two = (AutoConfig.from_pretrained(p).pruning_config for p in (first, second))
    assert set(two["kept_layers"]) <= set(one["kept_layers"]) and set(two["kept_channels"]) <= set(one["kept_channels"])
    assert two["sizes_before"]["hidden_size"] == 128 and two["base_model"] == str(tiny_model)
    assert two["previous"] == one
    original, pruned = (AutoModelForCausalLM.from_pretrained(p) for p in (tiny_model, second))
    assert torch.equal(pruned.model.embed_tokens.weight, original.model.embed_tokens.weight[:, two["kept_channels"]])
    layer = two["kept_layers"][1]
    assert torch.equal(
        pruned.model.layers[1].post_attention_layernorm.weight,
        original.model.layers[layer].post_attention_layernorm.weight[two["kept_channels"]],
    )
    assert pruned.generation_config.eos_token_id == original.generation_config.eos_token_id
