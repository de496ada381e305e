"""The eval stage: perplexity along the lineage (forgetting report + plot), next-turn ROUGE-L on SAMU calls,
meeting summaries with map-reduce, the generation budget, and the evaluated model's card updated."""

import json
import shutil

import pytest
from huggingface_hub import ModelCard

from llm4all_recipes.cli import main
from llm4all_recipes.evaluation.generation import Budget, meeting_summaries
from llm4all_recipes.models import load_model, load_tokenizer


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-data")
    for name, extra in {
        "turns": "builder: simsamu\nsource: tests/fixtures/simsamu\nper_turn: true\n",
        "meetings": "builder: meetings\nsource: tests/fixtures/meetings/meetings.jsonl\n",
    }.items():
        recipe = root / "recipes" / "m" / "datasets" / f"{name}.yaml"
        recipe.parent.mkdir(parents=True, exist_ok=True)
        recipe.write_text(extra + f"output_dir: {root / name}\nsplits: {{train: 0.5, test: 0.5}}\nseed: 0\n")
        assert main(["build-dataset", "--config", str(recipe)]) == 0
    return root


def test_eval_stage(compressed_model, task_data, tmp_path, recipe_file):
    model = tmp_path / "model"
    shutil.copytree(compressed_model, model)  # its card gets the results: work on a copy
    out = tmp_path / "eval"
    path = recipe_file(
        f"model_name_or_path: {model}\noutput_dir: {out}\n"
        "perplexity_datasets:\n  - path: tests/fixtures/text/old_eval.jsonl\n  - path: "
        "tests/fixtures/text/new_eval.jsonl\n"
        f"simsamu_dataset: {task_data / 'turns'}\nmeetings_dataset: {task_data / 'meetings'}\n"
        "max_generations: 4\nmax_new_tokens: 16\n",
        stage="eval",
        name="e.yaml",
    )
    assert main(["eval", "--config", path]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # the lineage: the tiny base model, then this (compressed) model
    assert metrics["models"] == ["tiny-model", "this model"]
    assert set(metrics["perplexity"]["this model"]) == {"old_eval", "new_eval"}
    assert metrics["perplexity"]["tiny-model"]["old_eval"] < metrics["perplexity"]["this model"]["old_eval"] * 1.05
    assert 0 <= metrics["simsamu"]["rougeL"] <= 1
    gens = metrics["simsamu"]["generations"] + (4 - metrics["generations_left"] - metrics["simsamu"]["generations"])
    assert gens <= 4 and metrics["generations_left"] >= 0
    assert [p["model"] for p in metrics["forgetting"]["points"]] == ["tiny-model", "this model"]
    assert (out / "forgetting.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "README.md").read_text()
    assert "model-index" in report and "Learning vs forgetting" in report
    # the evaluated model's own card now carries the results
    card = ModelCard.load(model / "README.md")
    names = {(r.dataset_name, r.metric_type) for r in card.data.eval_results}
    assert ("simsamu next regulator turn", "rougeL") in names and ("old_eval", "perplexity") in names
    assert card.text.count("## Evaluation\n") == 1 and "### By llm4all eval" in card.text  # one section
    assert (model / "forgetting.png").is_file()
    (row,) = [r for r in card.data.eval_results if r.metric_type == "rougeL"]
    assert row.dataset_split == "test" and row.metric_args["samples"] == metrics["simsamu"]["generations"]
    (ppl,) = [r for r in card.data.eval_results if r.dataset_name == "old_eval"]
    assert ppl.metric_args["tokens"] > 0 and ppl.dataset_split == "train"


def test_long_meetings_are_summarised_by_map_reduce(tiny_model):
    model, tokenizer = load_model(str(tiny_model)), load_tokenizer(str(tiny_model))
    with open("tests/fixtures/meetings/meetings.jsonl", encoding="utf-8") as f:
        long = max((json.loads(line) for line in f), key=lambda m: sum(len(t["text"]) for t in m["turns"]))
    budget = Budget(20)
    scores = meeting_summaries(
        model, tokenizer, [long], budget, context=1024, chunk_tokens=900, overlap=32, max_new_tokens=8
    )
    used = 20 - budget.left
    assert scores["meetings"] == 1 and used >= 3  # several chunk summaries + the merge
    assert 0 <= scores["rougeL"] <= 1
    short_budget = Budget(2)  # not enough for the map-reduce of this meeting: nothing is generated
    assert (
        meeting_summaries(
            model, tokenizer, [long], short_budget, context=1024, chunk_tokens=384, overlap=32, max_new_tokens=8
        )["meetings"]
        == 0
    )
    assert short_budget.left == 2


def test_eval_needs_something_to_evaluate(tiny_model, recipe_file, capsys):
    path = recipe_file(f"model_name_or_path: {tiny_model}\n", stage="eval", name="nothing.yaml")
    assert main(["eval", "--config", path]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err
