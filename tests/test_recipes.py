"""Every shipped recipe validates; the accelerate configs parse; `validate` reports bad files."""

from pathlib import Path

import pytest

from llm4all_recipes.cli import collect_recipes, main

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
    good.write_text(
        "model_name_or_path: outputs/m/base\ndatasets:\n  - path: tests/fixtures/chat/train.jsonl\n"
    )
    bad.write_text(
        "model_name_or_path: outputs/m/base\ndatasets:\n  - path: tests/fixtures/chat/train.jsonl\nlr: 1\n"
    )
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
    expected = {"cpu.yaml": "NO", "ddp.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP", "zero3.yaml": "DEEPSPEED"}[
        path.name
    ]
    assert kind == expected
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == 3
        assert config.deepspeed_config["zero3_save_16bit_model"] is True


def test_all_four_accelerate_configs_ship():
    assert {p.name for p in ACCELERATE_CONFIGS} >= {"cpu.yaml", "ddp.yaml", "fsdp.yaml", "zero3.yaml"}
