"""Continued pretraining: replay share as asked, source mask through packing, KL 0 when model = reference,
forgetting report (resume after kill -9: tests/test_runs.py)."""

import json

import pytest
import torch

from llm4all_recipes.cli import main
from llm4all_recipes.data.packing import StackCollator
from llm4all_recipes.models import load_model, load_tokenizer
from llm4all_recipes.parsing import parse_recipe
from llm4all_recipes.stages.cpt import build_rows
from llm4all_recipes.trainers.cpt import CPTTrainer
from llm4all_recipes.training import make_trainer

REPLAY = "recipes/tiny-llama/cpt/replay.yaml"


def recipe_for(tiny_model, tmp_path, *argv):
    return parse_recipe("cpt", ["--config", REPLAY, "--model_name_or_path", str(tiny_model), "--output_dir",
                                str(tmp_path / "cpt"), *argv])  # fmt: skip


@pytest.mark.parametrize("share", [0.05, 0.2, 0.25])
def test_realised_replay_share(tiny_model, tmp_path, share):
    recipe = recipe_for(tiny_model, tmp_path, "--replay_share", str(share), "--max_length", "64")
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
    recipe = recipe_for(tiny_model, tmp_path, "--kl_coef", "1", "--max_length", "64")
    tokenizer = load_tokenizer(str(tiny_model))
    rows, _ = build_rows(recipe, tokenizer)
    recipe.packing, recipe.remove_unused_columns, recipe.dataset_kwargs = (
        False,
        False,
        {"skip_prepare_dataset": True},
    )
    model, reference = load_model(str(tiny_model)), load_model(str(tiny_model))
    collator = StackCollator(("input_ids", "attention_mask", "labels", "kl_mask"))
    trainer = make_trainer(recipe, tmp_path / "o.tmp", model=model, tokenizer=tokenizer, train_dataset=rows, eval_datasets={},
                           trainer_cls=CPTTrainer, data_collator=collator, teacher_model=reference, kl_coef=1.0)  # fmt: skip
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
    argv = ["--config", REPLAY, "--model_name_or_path", str(tiny_model), "--output_dir", str(tmp_path / "cpt"),
            "--max_steps", "6", "--kl_coef", "0.5", "--warmup_steps", "1"]  # fmt: skip
    assert main(["cpt", *argv]) == 0
    out = tmp_path / "cpt"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["replay_share"] == pytest.approx(0.2, abs=0.02)
    assert (
        metrics["eval"]["new_eval"]["perplexity"] < metrics["eval_before"]["new_eval"]["perplexity"]
    )  # it learns
    points = metrics["forgetting"]["points"]
    assert [p["model"] for p in points] == ["before", "after"]
    assert (out / "forgetting.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (out / "README.md").read_text()
    assert "#### Forgetting" in card and "forgetting.png" in card and "replay share" in card
