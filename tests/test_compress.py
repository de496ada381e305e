"""The compress stage on the tiny default: ratio, rank map, streaming, the checkpoint format loaded both
ways (package / plain transformers with trust_remote_code, in a process that cannot import the package),
to_dense, dry run, and bad input."""

import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm4all_recipes.cli import main
from llm4all_recipes.compression import LowRankLinear, to_dense
from llm4all_recipes.models import load_model

RECIPE = "recipes/tiny-llama/compress/whitening-60.yaml"


def compress(model, out, *extra) -> int:
    """`llm4all compress` with RECIPE on `model`, writing `out`; returns the exit code."""
    return main(["compress", "--config", RECIPE, "--model_name_or_path", str(model), "--output_dir", str(out), *extra])


PROMPT = "La Bretagne est une région"


def test_ratio_ranks_and_streaming(compressed_model):
    config = json.loads((compressed_model / "config.json").read_text())
    assert config["model_type"] == "llm4all_lowrank" and config["base_config"]["model_type"] == "llama"
    cc = config["compression_config"]
    assert cc["method"] == "whitening" and cc["ratio"] == 0.6
    assert abs(cc["achieved_ratio"] - 0.6) <= 0.01
    assert len(cc["ranks"]) == 28 and cc["ranks"]["model.layers.0.self_attn.k_proj"] == 17  # ⌊0.4·64·128/192⌋
    assert cc["calibration"]["samples"] == 64 and cc["base_model"].endswith("tiny-model")
    metrics = json.loads((compressed_model / "metrics.json").read_text())
    assert metrics["peak_live_statistics"] == 4  # one layer's distinct inputs: qkv, o, gate/up, down
    model = load_model(str(compressed_model))
    assert sum(p.numel() for p in model.parameters()) == metrics["compression"]["model_params_after"]
    assert sum(isinstance(m, LowRankLinear) for m in model.modules()) == 28
    assert (compressed_model / "modeling_llm4all_lowrank.py").is_file()
    card = (compressed_model / "README.md").read_text()
    assert "trust_remote_code=True" in card and "vLLM" in card and "export-dense" in card


def test_perplexity_before_after_is_recorded(compressed_model):
    metrics = json.loads((compressed_model / "metrics.json").read_text())
    before, after = (
        metrics["eval_before"]["old_eval"]["perplexity"],
        metrics["eval"]["old_eval"]["perplexity"],
    )
    assert after >= before * 0.99 and after < before * 1.5


def test_to_dense_gives_the_same_function(compressed_model):
    model = load_model(str(compressed_model))
    ids = torch.arange(20)[None]
    reference = model(input_ids=ids).logits
    dense = to_dense(model)
    assert type(dense).__name__ == "LlamaForCausalLM" and not any(isinstance(m, LowRankLinear) for m in dense.modules())
    assert torch.allclose(dense(input_ids=ids).logits, reference, atol=1e-5)


def test_export_dense_stage(compressed_model, tmp_path):
    out = tmp_path / "dense"
    assert main(["export-dense", "--model_name_or_path", str(compressed_model), "--output_dir", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["model_type"] == "llama"
    plain = AutoModelForCausalLM.from_pretrained(out)  # no remote code, no package class
    low = load_model(str(compressed_model))
    ids = torch.arange(16)[None]
    assert torch.allclose(plain(input_ids=ids).logits, low(input_ids=ids).logits, atol=1e-5)


def test_svd_llm_v2_through_the_stage(tiny_model, compressed_model, tmp_path):
    """method + rank_allocation svd_llm_v2 from the recipe keys: the same budget as uniform whitening, ranks that
    differ within a kind (each matrix's truncation loss), and the model's loss no further from dense than whitening
    at uniform ranks on the same calibration, beyond noise."""
    out = tmp_path / "v2"
    assert compress(tiny_model, out, "--method", "svd_llm_v2", "--rank_allocation", "svd_llm_v2") == 0
    cc = json.loads((out / "config.json").read_text())["compression_config"]
    assert cc["method"] == "svd_llm_v2" and cc["rank_allocation"] == "svd_llm_v2"
    assert 0.6 <= cc["achieved_ratio"] <= 0.61
    q = [r for name, r in cc["ranks"].items() if name.endswith("q_proj")]
    assert len(q) == 4 and len(set(q)) > 1
    v2 = json.loads((out / "metrics.json").read_text())["eval"]["old_eval"]["perplexity"]
    uniform = json.loads((compressed_model / "metrics.json").read_text())["eval"]["old_eval"]["perplexity"]
    assert v2 <= uniform * 1.05


def test_dry_run_needs_no_calibration(tiny_model, tmp_path, capsys, monkeypatch):
    import llm4all_recipes.compression.compressor as compressor

    monkeypatch.setattr(compressor, "compress_model", lambda *a, **k: pytest.fail("calibration ran"))
    out = tmp_path / "dry"
    assert compress(tiny_model, out, "--dry_run", "true") == 0
    printed = capsys.readouterr().out
    assert "model.layers.3.mlp.down_proj" in printed and "rank 38" in printed
    assert "(ratio 0.6048, target 0.6)" in printed and "# memory:" in printed
    assert not out.exists()


BAD = [
    (["--ratio", "1.2"], "key 'ratio': must be in (0, 1)"),
    (["--ratio", "0"], "key 'ratio': must be in (0, 1)"),
    (["--targets", "q_proj", "qkv_proj"], "key 'targets': pattern(s) ['qkv_proj'] match no linear layer"),
    (["--rank_allocation", "explicit", "--ranks", '{"o_proj": 64}'], "key 'ranks.o_proj': rank 64"),
    (["--method", "refit", "--propagate", "original"], "key 'propagate': method refit fits each layer"),
]


@pytest.mark.parametrize(
    ("argv", "message"), BAD, ids=["ratio>1", "ratio=0", "pattern", "explicit-rank", "refit-original"]
)
def test_bad_input_fails_before_any_output(argv, message, tiny_model, tmp_path, capsys):
    out = tmp_path / "bad"
    assert compress(tiny_model, out, *argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not out.exists() and not (tmp_path / "bad.tmp").exists()


def test_model_without_linear_layers(tmp_path, capsys):
    from transformers import GPT2Config, GPT2LMHeadModel

    path = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(path)
    assert compress(path, tmp_path / "o", "--targets", "c_attn") == 2
    assert "is not supported: no nn.Linear inside its decoder blocks" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_empty_calibration_set(tiny_model, tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": ""}\n{"text": "  "}\n')
    recipe = tmp_path / "recipes" / "m" / "compress" / "c.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text(f"model_name_or_path: {tiny_model}\noutput_dir: {tmp_path / 'o'}\ndatasets:\n  - path: {empty}\n")
    assert main(["compress", "--config", str(recipe)]) == 2
    assert "key 'datasets': the calibration set is empty" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_compressing_a_compressed_model_is_refused(compressed_model, tmp_path, capsys):
    assert compress(compressed_model, tmp_path / "o") == 2
    assert "already low-rank" in capsys.readouterr().err


CHILD = r"""
import json, sys
sys.modules["llm4all_recipes"] = None  # this process cannot import the package
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
out = {}
for path in sys.argv[1:]:
    try:
        AutoModelForCausalLM.from_pretrained(path)
        out[path + "#plain"] = "loaded"
    except Exception as exc:
        out[path + "#plain"] = type(exc).__name__ + ": " + str(exc)[:300]
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    tok = AutoTokenizer.from_pretrained(path)
    ids = tok("La Bretagne est une région", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    greedy = model.generate(ids, max_new_tokens=20, min_new_tokens=20, do_sample=False)[0, ids.shape[1]:].tolist()
    out[path] = {"logits": logits[0].tolist(), "greedy": greedy, "class": type(model).__name__}
print("RESULT " + json.dumps(out))
"""


def test_chain_compress_distil_sft_reloads_both_ways(compressed_model, distilled_model, tmp_path):
    """compress -> feature-distill -> 3 SFT steps, then every checkpoint through both loaders."""
    sft = tmp_path / "sft"
    argv = [
        "--config",
        "recipes/tiny-llama/sft/chat.yaml",
        "--model_name_or_path",
        str(distilled_model),
        "--output_dir",
        str(sft),
        "--max_steps",
        "3",
        "--push_to_hub",
        "false",
    ]
    assert main(["sft", *argv]) == 0
    sft_config = json.loads((sft / "config.json").read_text())
    assert sft_config["model_type"] == "llm4all_lowrank"  # a compressed input is written back compressed
    assert sft_config["compression_config"]["feature_distill"]["schedule"] == "parallel"
    paths = [str(compressed_model), str(distilled_model), str(sft)]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *paths],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    child = json.loads(proc.stdout.split("RESULT ", 1)[1])
    for path in paths:
        assert child[path + "#plain"].startswith("ValueError") and "custom code" in child[path + "#plain"]  # loud
        model = load_model(path)
        tok = AutoTokenizer.from_pretrained(path)
        ids = tok(PROMPT, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        greedy = model.generate(ids, max_new_tokens=20, min_new_tokens=20, do_sample=False)[0, ids.shape[1] :].tolist()
        assert torch.allclose(logits, torch.tensor(child[path]["logits"]), atol=1e-5)
        assert greedy == child[path]["greedy"]
        assert child[path]["class"] == "LowRankLlamaForCausalLM"
