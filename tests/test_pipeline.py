"""The pipeline runner: steps in order, finished ones skipped, --force, --from, the summary table."""

import json

import pytest

from llm4all_recipes.cli import main


@pytest.fixture
def pipeline(tmp_path, tiny_model):
    recipes = tmp_path / "recipes" / "m"
    (recipes / "datasets").mkdir(parents=True)
    (recipes / "sft").mkdir()
    (recipes / "publish").mkdir()
    (recipes / "datasets" / "calls.yaml").write_text(
        f"builder: simsamu\nsource: tests/fixtures/simsamu\noutput_dir: {tmp_path / 'out' / 'calls'}\n"
        "push_to_hub: true\nhub_dataset_id: me/calls\nhub_target: local\nhub_overwrite: true\n"
    )
    (recipes / "sft" / "calls.yaml").write_text(
        f"model_name_or_path: {tiny_model}\noutput_dir: {tmp_path / 'out' / 'sft'}\n"
        f"datasets:\n  - path: {tmp_path / 'out' / 'calls'}\n    split: train\nmax_steps: 2\nmax_length: 512\n"
        "hub_model_id: me/calls-model\n"
    )
    (recipes / "publish" / "model.yaml").write_text(
        f"path: {tmp_path / 'out' / 'sft'}\nrepo_id: me/calls-model\ntarget: local\noverwrite: true\n"
    )
    path = tmp_path / "recipes" / "m" / "pipeline.yaml"
    path.write_text(
        "steps:\n"
        f"  - recipe: {recipes / 'datasets' / 'calls.yaml'}\n"
        f"  - recipe: {recipes / 'sft' / 'calls.yaml'}\n"
        f"  - recipe: {recipes / 'publish' / 'model.yaml'}\n"
    )
    return path


def rows_of(output: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.split("|")[1:-1]]
        for line in output.splitlines()
        if line.startswith("| ") and "---" not in line
    ][1:]


def test_runs_then_skips_then_reruns(pipeline, tmp_path, capsys, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setenv("LLM4ALL_HUB_DIR", str(hub))
    assert main(["pipeline", "--config", str(pipeline)]) == 0
    first = rows_of(capsys.readouterr().out)
    assert [r[0] for r in first] == ["build-dataset:calls", "sft:calls", "publish:model"]
    assert [r[1] for r in first] == ["ran", "ran", "ran"]
    assert first[0][-1] == str(hub / "datasets" / "me" / "calls")
    assert (hub / "me" / "calls-model" / "model.safetensors").is_file()
    assert main(["pipeline", "--config", str(pipeline)]) == 0
    assert [r[1] for r in rows_of(capsys.readouterr().out)] == ["skipped", "skipped", "skipped"]
    assert main(["pipeline", "--config", str(pipeline), "--from", "sft"]) == 0
    assert [r[1] for r in rows_of(capsys.readouterr().out)] == ["skipped", "ran", "ran"]
    assert main(["pipeline", "--config", str(pipeline), "--force", "true"]) == 0
    assert [r[1] for r in rows_of(capsys.readouterr().out)] == ["ran", "ran", "ran"]


def test_a_bad_step_stops_everything_before_it_runs(pipeline, tmp_path, capsys):
    sft = tmp_path / "recipes" / "m" / "sft" / "calls.yaml"
    sft.write_text(sft.read_text() + "learnin_rate: 1\n")
    assert main(["pipeline", "--config", str(pipeline)]) == 2
    assert f"{sft}:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # not even the first step ran


def test_unknown_from_step(pipeline, capsys):
    assert main(["pipeline", "--config", str(pipeline), "--from", "kd"]) == 2
    assert "no step named 'kd'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "metrics, unchanged",
    [
        ({"train": {"kept": "start"}}, True),  # kd/cpt/sft with keep_best: no step beat the starting model
        ({"train": {"kept": "best"}}, False),
        ({"blocks": [{"best_step": 0}, {"best_step": 0}]}, True),  # feature distillation: no block improved
        ({"blocks": [{"best_step": 0}, {"best_step": 32}]}, False),
    ],
)
def test_the_summary_flags_a_stage_that_changed_nothing(tmp_path, metrics, unchanged):
    from types import SimpleNamespace

    from llm4all_recipes.pipeline import _row

    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    row = _row(SimpleNamespace(name="kd:heal"), SimpleNamespace(output_dir=str(tmp_path)), "ran", 1.0)
    assert ("UNCHANGED" in row["status"]) is unchanged


def test_step_overrides_with_lists_reach_the_recipe(pipeline, tmp_path):
    """A step's `overrides` may set list keys (JSON on the step's command line), e.g. another mixture."""
    from llm4all_recipes.configs import PipelineStep
    from llm4all_recipes.parsing import parse_recipe

    sft_recipe = str(tmp_path / "recipes" / "m" / "sft" / "calls.yaml")
    chat = "tests/fixtures/chat/train.jsonl"
    step = PipelineStep(recipe=sft_recipe, overrides={"datasets": [{"path": chat, "weight": 2}], "max_steps": 3})
    recipe = parse_recipe("sft", step.argv(), static=True)
    assert [(s.path, s.weight) for s in recipe.datasets] == [(chat, 2.0)] and recipe.max_steps == 3
