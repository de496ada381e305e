"""Continued pretraining: replay share as asked, source mask through packing (KL on replay, new or all tokens),
KL 0 when model = reference, the KL schedule, merging with the starting model (α = 0 exact, the grid's rule),
forgetting report (resume after kill -9: tests/test_runs.py)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from llm4all_recipes.cli import main
from llm4all_recipes.data.packing import StackCollator
from llm4all_recipes.errors import RecipeError
from llm4all_recipes.models import load_model, load_tokenizer
from llm4all_recipes.parsing import parse_recipe
from llm4all_recipes.stages.cpt import build_rows, choose_alpha
from llm4all_recipes.trainers.cpt import CPTTrainer
from llm4all_recipes.training import make_trainer

REPLAY = "recipes/tiny-llama/cpt/replay.yaml"


def recipe_for(tiny_model, tmp_path, *argv):
    return parse_recipe(
        "cpt",
        ["--config", REPLAY, "--model_name_or_path", str(tiny_model), "--output_dir", str(tmp_path / "cpt"), *argv],
    )


@pytest.mark.parametrize("share", [0.05, 0.2, 0.25])
def test_realised_replay_share(tiny_model, tmp_path, share):
    recipe = recipe_for(tiny_model, tmp_path, "--replay_share", str(share), "--max_length", "64", "--kl_on", "replay")
    rows, report = build_rows(recipe, load_tokenizer(str(tiny_model)))
    assert abs(report["replay_share"] - share) <= 0.02
    replay = [r for r in rows if r["replay"]]
    assert len(replay) == report["replay_rows"] and len(rows) == report["new_rows"] + report["replay_rows"]
    # the source mask survives packing: every block is all-new or all-replay, flagged on every token
    assert all(set(r["kl_mask"]) == {r["replay"]} for r in rows)


def test_kl_on_all_tokens_flags_every_block(tiny_model, tmp_path):
    recipe = recipe_for(tiny_model, tmp_path, "--kl_coef", "1", "--kl_on", "all")
    rows, _ = build_rows(recipe, load_tokenizer(str(tiny_model)))
    assert all(set(r["kl_mask"]) == {1} for r in rows)


def test_kl_is_zero_when_the_model_is_the_reference(tiny_model, tmp_path):
    recipe = recipe_for(tiny_model, tmp_path, "--kl_coef", "1", "--max_length", "64", "--kl_on", "replay")
    tokenizer = load_tokenizer(str(tiny_model))
    rows, _ = build_rows(recipe, tokenizer)
    recipe.packing, recipe.remove_unused_columns, recipe.dataset_kwargs = (
        False,
        False,
        {"skip_prepare_dataset": True},
    )
    model, reference = load_model(str(tiny_model)), load_model(str(tiny_model))
    collator = StackCollator(("input_ids", "attention_mask", "labels", "kl_mask"))
    trainer = make_trainer(
        recipe,
        tmp_path / "o.tmp",
        model=model,
        tokenizer=tokenizer,
        train_dataset=rows,
        eval_datasets={},
        trainer_cls=CPTTrainer,
        data_collator=collator,
        teacher_model=reference,
        kl_coef=1.0,
    )
    batch = collator([r for r in rows if r["replay"]][:4] + [r for r in rows if not r["replay"]][:4])
    with torch.no_grad():
        ce, kl = trainer.loss_terms(model, dict(batch))
        assert float(kl) == pytest.approx(0.0, abs=1e-6) and float(ce) > 1.0
        with torch.no_grad():  # a different model: the KL is positive, and only replay blocks count
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        _, kl_moved = trainer.loss_terms(model, dict(batch))
        no_replay = dict(batch)
        no_replay["kl_mask"] = torch.zeros_like(batch["kl_mask"])
        _, kl_none = trainer.loss_terms(model, no_replay)
    assert float(kl_moved) > 1e-4 and float(kl_none) == 0.0


def test_forgetting_report(tiny_model, tmp_path):
    argv = [
        "--config",
        REPLAY,
        "--model_name_or_path",
        str(tiny_model),
        "--output_dir",
        str(tmp_path / "cpt"),
        "--max_steps",
        "6",
        "--kl_coef",
        "0.5",
        "--warmup_steps",
        "1",
    ]
    assert main(["cpt", *argv]) == 0
    out = tmp_path / "cpt"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["replay_share"] == pytest.approx(0.2, abs=0.02)
    assert metrics["eval"]["new_eval"]["perplexity"] < metrics["eval_before"]["new_eval"]["perplexity"]  # it learns
    points = metrics["forgetting"]["points"]
    assert [p["model"] for p in points] == ["before", "after"]
    assert (out / "forgetting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (out / "README.md").read_text()
    assert "#### Forgetting" in card and "forgetting.png" in card and "replay share" in card


def test_kl_on_new_flags_only_new_blocks(tiny_model, tmp_path):
    recipe = recipe_for(tiny_model, tmp_path, "--kl_coef", "1", "--kl_on", "new", "--max_length", "64")
    rows, _ = build_rows(recipe, load_tokenizer(str(tiny_model)))
    assert {r["replay"] for r in rows} == {0, 1}
    assert all(set(r["kl_mask"]) == {1 - r["replay"]} for r in rows)


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [(1.0, None, [1.0, 1.0, 1.0]), (2.0, 0.0, [2.0, 1.0, 0.0]), (0.0, 3.0, [0.0, 1.5, 3.0])],
)
def test_kl_coef_schedule_is_linear_from_first_to_last_step(start, end, expected):
    trainer = CPTTrainer.__new__(CPTTrainer)  # the schedule only reads the coefficients and the trainer state
    trainer.kl_coef, trainer.kl_coef_end = start, end
    trainer.state = type("State", (), {"max_steps": 11})()
    coefs = []
    for step in (0, 5, 10):
        trainer.state.global_step = step
        coefs.append(trainer.current_kl_coef())
    assert coefs == pytest.approx(expected)


def test_choose_alpha_keeps_the_gain_and_minimises_forgetting():
    before, trained = (40.0, 50.0), (60.0, 30.0)  # (old, new) perplexity: gain 20, rise 20
    grid = {0.9: (50.0, 30.5), 0.8: (45.0, 30.9), 0.7: (43.0, 31.5), 0.5: (41.0, 36.0)}
    assert choose_alpha(grid, before, trained, min_gain=0.95) == 0.8  # 0.7 keeps 92.5 % of the gain
    assert choose_alpha(grid, before, trained, min_gain=0.9) == 0.7
    assert choose_alpha({0.5: (41.0, 45.0)}, before, trained, min_gain=0.95) == 1.0  # none keeps it: unmerged
    # nothing learned, or worse (the pipeline's lr 1e-3 on the healed SmolLM2 student: French 423 -> 820, English
    # 37 -> 6,589): the starting model, never worse
    assert choose_alpha(grid, before, (60.0, 55.0), min_gain=0.95) == 0.0
    assert choose_alpha(grid, before, (42.0, 30.0), min_gain=0.95) == 1.0  # the trained model forgets least


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_merge_with_base_zero_returns_the_starting_model_exactly(tiny_model, tmp_path):
    argv = [
        "--config",
        REPLAY,
        "--model_name_or_path",
        str(tiny_model),
        "--output_dir",
        str(tmp_path / "cpt"),
        "--max_steps",
        "2",
        "--warmup_steps",
        "0",
        "--merge_with_base",
        "0",
    ]
    assert main(["cpt", *argv]) == 0
    out, start = _weights(tmp_path / "cpt"), _weights(tiny_model)
    assert out.keys() == start.keys() and all(torch.equal(out[k], start[k]) for k in start)
    metrics = json.loads((tmp_path / "cpt" / "metrics.json").read_text())
    assert metrics["merge_with_base"]["alpha"] == 0
    assert metrics["eval"]["old_eval"]["perplexity"] == pytest.approx(metrics["eval_before"]["old_eval"]["perplexity"])


def test_merge_grid_keeps_the_chosen_interpolation(tiny_model, tmp_path):
    argv = [
        "--config",
        REPLAY,
        "--model_name_or_path",
        str(tiny_model),
        "--output_dir",
        str(tmp_path / "cpt"),
        "--max_steps",
        "6",
        "--warmup_steps",
        "1",
        "--merge_grid",
        "[0.3, 0.6, 0.9]",
        "--merge_min_gain",
        "0.5",
    ]
    assert main(["cpt", *argv]) == 0
    out = tmp_path / "cpt"
    metrics = json.loads((out / "metrics.json").read_text())
    merge, points = metrics["merge_with_base"], metrics["forgetting"]["points"]
    assert [p["model"].split(" ")[0] for p in points] == ["before", "after", "α=0.9", "α=0.6", "α=0.3"]
    # the rule, recomputed from the report: lowest old-domain perplexity among the α keeping half the gain
    before, after = points[0], points[1]
    assert after["new"] < before["new"]  # it learned: the rule has a gain to keep
    candidates = [(1.0, after)] + [(float(p["model"].split("=")[1].split(" ")[0]), p) for p in points[2:]]
    ok = [(a, p) for a, p in candidates if before["new"] - p["new"] >= 0.5 * (before["new"] - after["new"])]
    expected = min(ok, key=lambda ap: (ap[1]["old"], -ap[0]))[0]
    assert merge["alpha"] == expected and metrics["eval"] == merge["results"].get(f"{expected:g}", metrics["eval"])
    # the written weights are the interpolation at that α of the start and the trained checkpoint
    trained, start, written = _weights(out / "checkpoint-6"), _weights(tiny_model), _weights(out)
    for key in start:
        assert torch.allclose(written[key], torch.lerp(start[key], trained[key], merge["alpha"]), atol=1e-6), key
    card = (out / "README.md").read_text()
    assert "merged with the starting model (linear, WiSE-FT)" in card and f"Kept: α = {merge['alpha']:g}" in card


@pytest.mark.parametrize(
    ("argv", "key", "words"),
    [
        (["--merge_grid", "[0.5, 1.5]"], "merge_grid", "in [0, 1]"),
        (["--merge_grid", "[0.5]", "--merge_with_base", "0.8"], "merge_grid", "not both"),
        (
            ["--merge_grid", "[0.5]", "--eval_datasets", '[{"path": "tests/fixtures/text/new_eval.jsonl"}]'],
            "merge_grid",
            "needs an old_* and a new_* set",
        ),
        (["--kl_coef", "0", "--kl_coef_end", "-1"], "kl_coef_end", "must be >= 0"),
    ],
)
def test_bad_merge_and_kl_keys_fail_before_loading(tiny_model, tmp_path, argv, key, words):
    with pytest.raises(RecipeError) as exc:
        recipe_for(tiny_model, tmp_path, *argv)
    assert f"key '{key}'" in str(exc.value) and words in str(exc.value)


def test_training_that_makes_the_new_domain_worse_returns_the_starting_model(tiny_model, tmp_path):
    """The merge grid used to keep the trained model (α = 1) when training gained nothing on the new domain: with a
    learning rate that wrecks the model, the stage now returns its start, exactly, and says so."""
    out = tmp_path / "cpt"
    argv = [
        "--config",
        REPLAY,
        "--model_name_or_path",
        str(tiny_model),
        "--output_dir",
        str(out),
        "--max_steps",
        "3",
        "--warmup_steps",
        "0",
        "--learning_rate",
        "0.2",
        "--merge_grid",
        "[0.5, 0.9]",
    ]
    assert main(["cpt", *argv]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["merge_with_base"]["alpha"] == 0.0 and metrics["eval"] == metrics["eval_before"]
    trained = metrics["forgetting"]["points"][1]
    assert trained["new"] > metrics["forgetting"]["points"][0]["new"]  # training did make it worse
    weights, start = _weights(out), _weights(tiny_model)
    assert weights.keys() == start.keys() and all(torch.equal(weights[k], start[k]) for k in start)
