"""Every shipped recipe validates; the accelerate configs parse; `validate` reports bad files."""

from pathlib import Path

import pytest

from llm4all_recipes.cli import main
from llm4all_recipes.paths import collect_recipes

REPO = Path(__file__).resolve().parents[1]
ACCELERATE_CONFIGS = sorted((REPO / "recipes" / "accelerate_configs").glob("*.yaml"))


def test_every_shipped_recipe_is_valid(capsys):
    assert main(["validate", "recipes"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    shipped = collect_recipes(["recipes"])
    assert len(shipped) >= 4
    assert f"{len(shipped)}/{len(shipped)} recipes valid" in out
    assert "accelerate_configs" not in out


def test_validate_reports_each_bad_recipe(tmp_path, capsys):
    good = tmp_path / "recipes" / "m" / "sft" / "good.yaml"
    bad = tmp_path / "recipes" / "m" / "sft" / "bad.yaml"
    stray = tmp_path / "recipes" / "m" / "notastage" / "x.yaml"
    for p in (good, bad, stray):
        p.parent.mkdir(parents=True, exist_ok=True)
    good.write_text("model_name_or_path: outputs/m/base\ndatasets:\n  - path: tests/fixtures/chat/train.jsonl\n")
    bad.write_text("model_name_or_path: outputs/m/base\ndatasets:\n  - path: tests/fixtures/chat/train.jsonl\nlr: 1\n")
    stray.write_text("seed: 1\n")
    assert main(["validate", str(tmp_path / "recipes")]) == 2
    out = capsys.readouterr().out
    assert f"ok    {good}" in out
    assert f"FAIL  {bad}:4: key 'lr': unknown key" in out
    assert f"FAIL  {stray}: cannot tell the stage" in out
    assert "1/3 recipes valid" in out


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=[p.name for p in ACCELERATE_CONFIGS])
def test_accelerate_config_parses(path):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    assert config.compute_environment.value == "LOCAL_MACHINE"
    kind = config.distributed_type.value
    expected = {"cpu.yaml": "NO", "ddp.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP", "zero3.yaml": "DEEPSPEED"}[path.name]
    assert kind == expected
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == 3
        assert config.deepspeed_config["zero3_save_16bit_model"] is True


def test_all_four_accelerate_configs_ship():
    assert {p.name for p in ACCELERATE_CONFIGS} >= {"cpu.yaml", "ddp.yaml", "fsdp.yaml", "zero3.yaml"}


def _tensors(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def test_a_written_recipe_reruns_the_run(compressed_model, tiny_model, tmp_path):
    """`llm4all <stage> --config <output>/recipe.yaml` reproduces the output: the same weights for compress,
    the same losses and weights for a short SFT (no key lost on the way, e.g. names containing 'token')."""
    import json

    import torch

    again = tmp_path / "compress-again"
    assert main(["compress", "--config", str(compressed_model / "recipe.yaml"), "--output_dir", str(again)]) == 0
    first, second = _tensors(compressed_model), _tensors(again)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)

    runs = []
    for name, config in (("sft", "recipes/tiny-llama/sft/chat.yaml"), ("sft-again", None)):
        out = tmp_path / name
        argv = (
            ["--config", config, "--model_name_or_path", str(tiny_model), "--max_steps", "3", "--push_to_hub", "false"]
            if config
            else ["--config", str(tmp_path / "sft" / "recipe.yaml")]
        )
        assert main(["sft", *argv, "--output_dir", str(out)]) == 0
        runs.append(out)
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    assert metrics[0]["train"]["train_loss"] == metrics[1]["train"]["train_loss"]
    assert metrics[0]["eval"] == metrics[1]["eval"]
    first, second = _tensors(runs[0]), _tensors(runs[1])
    assert all(torch.equal(first[k], second[k]) for k in first)
