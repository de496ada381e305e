"""The precision policy of the training stages (docs/PRECISION.md): a model loaded in bf16 trains with float32
master weights and bf16 autocast when their states fit the device, else with bf16 weights and an AdamW that
rounds stochastically; plain bf16 AdamW loses the small updates of fine-tuning learning rates."""

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from llm4all_recipes.training import apply_precision, choose_precision, state_bytes

GiB = 2**30


def test_auto_chooses_fp32_master_when_its_states_fit():
    # 1B trained parameters: 16 GiB-ish of fp32-master states (16 bytes each) against 8 under bf16
    n = 10**9
    assert state_bytes(n, 0, "fp32-master") == 16 * n and state_bytes(n, 0, "bf16-stochastic") == 8 * n
    assert choose_precision("auto", n, 0, 80 * GiB) == "fp32-master"  # 14.9 GiB <= 0.7 x 80
    assert choose_precision("auto", 8 * n, 0, 80 * GiB) == "bf16-stochastic"  # 119 GiB on one 80 GB GPU
    assert choose_precision("auto", 8 * n, 0, 80 * GiB, processes=8) == "fp32-master"  # sharded over 8
    assert choose_precision("auto", 8 * n, 0, None) == "fp32-master"  # CPU: host memory is not the limit
    assert choose_precision("bf16", n, 0, 80 * GiB) == "bf16"  # an explicit choice is kept


def _adamw_drift(make_optimizer, steps=100, lr=1e-5) -> float:
    """Mean change of bf16 weights at 1.0 after `steps` AdamW steps of a constant gradient (exact: steps x lr)."""
    w = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    opt = make_optimizer([w], lr)
    for _ in range(steps):
        w.grad = torch.ones_like(w)
        opt.step()
    return float((1 - w.detach().float()).mean())


def test_stochastic_rounding_keeps_the_updates_plain_bf16_loses():
    from torchao.optim import _AdamW

    torch.manual_seed(0)
    plain = _adamw_drift(lambda p, lr: torch.optim.AdamW(p, lr=lr, weight_decay=0.0))
    stochastic = _adamw_drift(lambda p, lr: _AdamW(p, lr=lr, weight_decay=0.0, bf16_stochastic_round=True))
    assert plain == 0.0  # 1e-5 is below half a bf16 step at 1.0 (2^-8): every update rounded away
    assert stochastic == pytest.approx(100 * 1e-5, rel=0.15)  # unbiased: the expected drift


def _bf16_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(config).to(torch.bfloat16)


def _args(**kw):
    return SimpleNamespace(
        learning_rate=1e-5,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        weight_decay=0.0,
        bf16=False,
        fp16=False,
        **kw,
    )


def test_apply_precision_sets_up_each_choice(monkeypatch):
    from torchao.optim import _AdamW

    model, args, kwargs = _bf16_model(), _args(), {}
    assert apply_precision(SimpleNamespace(precision="auto"), args, model, kwargs) == "fp32-master"  # CPU
    assert next(model.parameters()).dtype == torch.float32 and args.bf16 and args.saved_dtype == "bfloat16"
    assert kwargs == {}
    # a GPU too small for fp32-master states
    monkeypatch.setattr("llm4all_recipes.training._device_bytes", lambda: 1)
    model, args, kwargs = _bf16_model(), _args(), {}
    assert apply_precision(SimpleNamespace(precision="auto"), args, model, kwargs) == "bf16-stochastic"
    cls, options = kwargs["optimizer_cls_and_kwargs"]
    assert cls is _AdamW and options["bf16_stochastic_round"] and options["lr"] == 1e-5
    assert next(model.parameters()).dtype == torch.bfloat16
    model, args, kwargs = _bf16_model(), _args(), {}
    assert apply_precision(SimpleNamespace(precision="bf16"), args, model, kwargs) == "bf16" and kwargs == {}
    model = _bf16_model().float()
    assert apply_precision(SimpleNamespace(precision="auto"), _args(), model, {}) == "float32"


@pytest.mark.parametrize("precision", ["fp32-master", "bf16-stochastic"])
def test_a_bf16_model_trains_under_the_policy_and_is_saved_in_bf16(precision, tiny_model, tmp_path):
    from llm4all_recipes.cli import main

    out = tmp_path / precision
    recipe = tmp_path / "sft.yaml"
    recipe.write_text(
        f"model_name_or_path: {tiny_model}\noutput_dir: {out}\ndatasets:\n  - path: tests/fixtures/chat/train.jsonl\n"
        "max_length: 256\nper_device_train_batch_size: 4\nlearning_rate: 1.0e-3\nmax_steps: 2\nsave_steps: 2\n"
        f"dtype: bfloat16\nprecision: {precision}\nseed: 0\n"
    )
    assert main(["sft", "--config", str(recipe)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["precision"] == precision
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118  (saved as loaded)
    assert f"precision: `{precision}`" in (out / "README.md").read_text()
