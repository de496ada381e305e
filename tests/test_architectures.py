"""The families users bring, each as a tiny random model built from its real config.json (tests/fixtures/configs,
shrunk by `tiny.shrink_config`: same class, biases, norms, activation, soft-capping, tying, fused projections):
compress → feature-distill → 3 kd steps → 1 cpt step → 1 sft step → reload through the package and through
`trust_remote_code` (equal logits) → export-dense (a plain checkpoint of the base class, the same function), and a
one-line error for an architecture we cannot compress."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from llm4all_recipes.cli import main
from llm4all_recipes.compression import LowRankLinear
from llm4all_recipes.compression import ranks as R
from llm4all_recipes.models import load_model
from llm4all_recipes.tiny import shrink_config

CONFIGS = Path(__file__).parent / "fixtures" / "configs"
# family -> (fixture, the projections `targets: [auto]` must find, a structural feature to check)
FAMILIES = {
    "llama": ("llama-3.1-8b-instruct", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "mistral": (
        "mistral-7b-instruct-v0.3",
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    ),
    "qwen2": ("qwen2.5-1.5b-instruct", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "qwen3": ("qwen3-1.7b", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "gemma2": ("gemma-2-2b-it", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "gemma3_text": ("gemma-3-1b-it", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
    "phi3": ("phi-3-mini-4k-instruct", ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]),
}


def tiny_of(family: str, tokenizer, out: Path) -> Path:
    config = json.loads((CONFIGS / FAMILIES[family][0] / "config.json").read_text())
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(shrink_config(config, tokenizer))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def logits(model, ids):
    with torch.no_grad():
        return model.eval()(ids).logits


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_runs_the_loop_and_reloads_both_ways(family, tiny_model, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    base = tiny_of(family, tokenizer, tmp_path / "base")
    real = json.loads((CONFIGS / FAMILIES[family][0] / "config.json").read_text())
    assert AutoConfig.from_pretrained(base).model_type == real["model_type"]

    small = ["--num_calibration_samples", "8", "--calibration_seq_len", "64"]
    assert (
        main(
            [
                "compress",
                "--config",
                "recipes/tiny-llama/compress/whitening-60.yaml",
                "--model_name_or_path",
                str(base),
                "--output_dir",
                str(tmp_path / "c"),
                *small,
            ]
        )
        == 0
    )
    cc = json.loads((tmp_path / "c" / "config.json").read_text())["compression_config"]
    assert sorted(cc["targets"]) == sorted(FAMILIES[family][1])  # `auto` resolved to this family's projections
    assert len(cc["ranks"]) == 2 * len(FAMILIES[family][1])  # every projection of both layers factored

    assert (
        main(
            [
                "feature-distill",
                "--config",
                "recipes/tiny-llama/feature-distill/whitening-60.yaml",
                "--model_name_or_path",
                str(tmp_path / "c"),
                "--output_dir",
                str(tmp_path / "fd"),
                "--tokens_per_block",
                "1024",
                "--num_calibration_samples",
                "16",
                "--num_holdout_samples",
                "4",
                "--calibration_seq_len",
                "64",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "kd",
                "--config",
                "recipes/tiny-llama/kd/heal.yaml",
                "--model_name_or_path",
                str(tmp_path / "fd"),
                "--teacher_model_name_or_path",
                str(base),
                "--output_dir",
                str(tmp_path / "kd"),
                "--max_steps",
                "3",
                "--keep_best",
                "false",
                "--push_to_hub",
                "false",
            ]
        )
        == 0
    )
    assert json.loads((tmp_path / "kd" / "metrics.json").read_text())["train"]["global_step"] == 3
    one_step = ["--max_steps", "1", "--push_to_hub", "false", "--max_length", "128"]
    assert (
        main(
            [
                "cpt",
                "--config",
                "recipes/tiny-llama/cpt/replay-kl.yaml",
                "--model_name_or_path",
                str(tmp_path / "kd"),
                "--output_dir",
                str(tmp_path / "cpt"),
                *one_step,
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "sft",
                "--config",
                "recipes/tiny-llama/sft/chat.yaml",
                "--model_name_or_path",
                str(tmp_path / "cpt"),
                "--output_dir",
                str(tmp_path / "sft"),
                *one_step,
            ]
        )
        == 0
    )

    # the last stage's checkpoint, through the package and through trust_remote_code: the same low-rank model
    ids = torch.randint(0, len(tokenizer), (2, 24), generator=torch.Generator().manual_seed(0))
    package = load_model(str(tmp_path / "sft"), dtype="float32")
    remote = AutoModelForCausalLM.from_pretrained(tmp_path / "sft", trust_remote_code=True, dtype=torch.float32)
    base_class = type(AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))).__name__
    assert type(package).__name__ == type(remote).__name__ == f"LowRank{base_class}"
    assert sum(isinstance(m, LowRankLinear) for m in remote.modules()) == len(cc["ranks"])
    expected = logits(package, ids)
    assert torch.allclose(expected, logits(remote, ids), atol=1e-5, rtol=0)
    fd = load_model(str(tmp_path / "fd"), dtype="float32")
    assert not torch.allclose(expected, logits(fd, ids), atol=1e-4)  # kd, cpt and sft trained the student
    if real.get("tie_word_embeddings", True):  # tied embeddings stay tied through the low-rank format
        assert remote.lm_head.weight.data_ptr() == remote.get_input_embeddings().weight.data_ptr()
    # export-dense: a plain checkpoint of the base class (no remote code), the same function
    assert (
        main(["export-dense", "--model_name_or_path", str(tmp_path / "sft"), "--output_dir", str(tmp_path / "dense")])
        == 0
    )
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "dense", dtype=torch.float32)
    assert type(dense).__name__ == base_class
    assert torch.allclose(expected, logits(dense, ids), atol=1e-4, rtol=0)


def test_fused_projections_are_one_factorisation(tiny_model, tmp_path):
    """Phi-3's qkv_proj is factored as one matrix: one shared `down`, q/k/v rows of `up` (docs/COMPRESSION.md)."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    base = tiny_of("phi3", tokenizer, tmp_path / "base")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(base))
    targets = {t.name.rsplit(".", 1)[-1]: t for t in R.find_targets(model, R.DEFAULT_TARGETS)}
    heads, kv, head_dim = model.config.num_attention_heads, model.config.num_key_value_heads, 16
    assert targets["qkv_proj"].out_features == (heads + 2 * kv) * head_dim
    assert targets["gate_up_proj"].out_features == 2 * model.config.intermediate_size
    # an explicit list for a family that lacks some names still fails loudly, naming what the decoder has
    with pytest.raises(Exception, match=r"match no linear layer \(the decoder has: .*qkv_proj"):
        R.find_targets(model, ["q_proj"])


def test_unsupported_architecture_is_one_line(tmp_path, capsys):
    """GPT-2's blocks use Conv1D, not nn.Linear: compress says so before loading any weight."""
    from transformers import GPT2Config

    GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=300).save_pretrained(tmp_path / "gpt2")
    rc = main(
        [
            "compress",
            "--config",
            "recipes/tiny-llama/compress/whitening-60.yaml",
            "--model_name_or_path",
            str(tmp_path / "gpt2"),
            "--dry_run",
            "true",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1
    assert "GPT2LMHeadModel is not supported" in err and "model_name_or_path" in err
