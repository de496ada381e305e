"""`llm4all estimate`: sizes follow a recipe's lineage to its base config, the memory model's terms, and errors."""

import math
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModelForCausalLM

from llm4all_recipes.cli import main
from llm4all_recipes.compression import ranks as R
from llm4all_recipes.estimate import GiB, estimate, model_size, producer
from llm4all_recipes.training import state_bytes

REPO = Path(__file__).resolve().parents[1]
QWEN = REPO / "tests" / "fixtures" / "configs" / "qwen2.5-1.5b-instruct"
FOLDER = REPO / "recipes" / "qwen2.5-1.5b-instruct"


def test_a_produced_path_is_sized_through_the_recipe_that_makes_it():
    assert producer("outputs/qwen2.5-1.5b-instruct/kd/heal-cached-20") == FOLDER / "kd" / "heal-cached-20.yaml"
    assert producer("outputs/qwen2.5-1.5b-instruct/kd/nothing") is None
    import torch

    with torch.device("meta"):
        dense = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(QWEN))
    targets = R.find_targets(dense, ["auto"])
    targeted = sum(t.params for t in targets)
    total = sum(p.numel() for p in dense.parameters())
    assert total == 1_543_714_304  # Qwen2.5-1.5B-Instruct's published count (tied embeddings counted once)
    # compress 20 %, uniform ranks in multiples of 64 topped up to the budget: at most 80 % of the targeted
    # parameters kept, within 1 %; kd's student (two stages later) is that size
    student = model_size("outputs/qwen2.5-1.5b-instruct/feature-distill/whitening-20", str(QWEN))
    assert 0.79 * targeted <= student.factor_params <= math.floor(0.8 * targeted)
    assert student.low_rank and student.params == total - targeted + student.factor_params


def test_training_memory_terms_and_sharding():
    kd = FOLDER / "kd" / "heal-cached-20.yaml"
    one = estimate(kd, gpus=1, base_config=str(QWEN))
    eight = estimate(kd, gpus=8, base_config=str(QWEN))
    eight_ddp = estimate(kd, gpus=8, shard=False, base_config=str(QWEN))
    # bf16 weights, trained under the precision policy: 1.5B fits fp32-master (float32 weights, gradients, AdamW
    # moments: 16 bytes per trained parameter) on one GPU as on eight
    assert "fp32-master" in one.note and "fp32-master" in eight.note
    states = state_bytes(one.trainable, one.params - one.trainable, "fp32-master")
    assert one.device_bytes - eight.device_bytes == pytest.approx(states * 7 / 8, abs=2)
    assert eight_ddp.device_bytes == one.device_bytes  # replicated: same per GPU
    assert eight.tokens == 8 * one.tokens == 8 * 1000 * 4 * 4 * 2048  # steps x batch x accumulation x GPUs x length
    assert eight.hours == pytest.approx(one.hours)  # 8x the tokens on 8x the GPUs
    # the KL reference of cpt is a second (frozen) model: its weights and logits are counted
    cpt = estimate(FOLDER / "cpt" / "replay-kl.yaml", gpus=1, base_config=str(QWEN))
    assert cpt.device_bytes - one.device_bytes > one.params * 2
    assert 1 < one.device_bytes / GiB < 80


def test_a_path_no_recipe_makes_is_one_line(tmp_path, capsys):
    recipe = tmp_path / "recipes" / "m" / "kd" / "a.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text(
        (FOLDER / "kd" / "heal-cached-20.yaml")
        .read_text()
        .replace("outputs/qwen2.5-1.5b-instruct/feature-distill/whitening-20", "outputs/nowhere/compress/x")
    )
    assert main(["estimate", str(recipe), "--base_config", str(QWEN)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "outputs/nowhere/compress/x is made by no recipe" in err
    assert str(recipe) in err


def test_generate_memory_is_weights_plus_kv_cache():
    llama = REPO / "tests" / "fixtures" / "configs" / "llama-3.1-8b-instruct"
    recipe = REPO / "recipes" / "llama-3.1-8b-instruct" / "generate" / "samu-fiches.yaml"
    e = estimate(recipe, base_config=str(llama))
    assert e.params == 8_030_261_248 and e.stage == "generate"
    kv = 2 * 32 * 8 * 128 * 2 * 16 * 8192  # k and v, layers, KV heads, head_dim, bf16, batch 16, 8,192 tokens
    assert e.device_bytes == e.params * 2 + kv + 16 * 128256 * 4
    assert "per 1,000 rows" in e.note and e.hours > 0
