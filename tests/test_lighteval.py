"""lighteval custom tasks on the French datasets, offline: local folders in the Hub parquet layout, the tiny model."""

import glob
from pathlib import Path

import pandas as pd
import pytest

from llm4all_recipes.data import meetings, simsamu

SIMSAMU = "llm4all_simsamu_next_turn|0"
MEETINGS = "llm4all_meeting_summary|0"
README = """---
configs:
- config_name: default
  data_files:
  - split: test
    path: data/test-*
---
"""


def _publish(rows: list[dict], folder: Path) -> str:
    """The layout `publish` writes: data/<split>-NNNNN-of-NNNNN.parquet and a README with `configs`."""
    import datasets

    (folder / "data").mkdir(parents=True)
    datasets.Dataset.from_list(rows).to_parquet(str(folder / "data" / "test-00000-of-00001.parquet"))
    (folder / "README.md").write_text(README, encoding="utf-8")
    return str(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("lighteval-data")
    turns, _ = simsamu.build_rows(Path("tests/fixtures/simsamu"), per_turn=True)
    by_split, _ = meetings.build_rows("tests/fixtures/meetings/meetings.jsonl")
    rows = [r for split in by_split.values() for r in split]
    return {
        "simsamu": _publish(turns[::12][:8], root / "simsamu"),
        "meetings": _publish(rows, root / "meetings"),
    }


@pytest.fixture
def model_copy(tiny_model, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


def _predictions(output_dir: Path, task: str) -> list[str]:
    (path,) = glob.glob(str(output_dir / "details" / "*" / "*" / f"details_{task.split('|')[0]}*.parquet"))
    return [str(r["text"][0]) for r in pd.read_parquet(path)["model_response"]]


def test_french_rouge_metric():
    from lighteval.models.model_output import ModelResponse

    from llm4all_recipes.evaluation.lighteval_tasks import FrenchRouge, chat_doc

    doc = chat_doc([{"role": "user", "content": "?"}], "Le médecin régulateur arrive.", "t|0")
    same = FrenchRouge(("rouge1", "rougeL")).compute(doc, ModelResponse(text=["le MÉDECIN régulateur arrive"]))
    assert same == {"rouge1_fr": 1.0, "rougeL_fr": 1.0}
    # accented words are words, not fragments: "médecin" ≠ "m" + "decin"
    assert FrenchRouge().compute(doc, ModelResponse(text=["m decin"])) == {"rougeL_fr": 0.0}


def test_make_tasks_and_cli_module(folders, monkeypatch):
    from lighteval.tasks.registry import Registry

    from llm4all_recipes.evaluation import lighteval_tasks as lt

    tasks = lt.make_tasks(folders["simsamu"], None, max_new_tokens=32)
    assert [t.name for t in tasks] == ["llm4all_simsamu_next_turn"]
    assert tasks[0].hf_subset == "default" and tasks[0].generation_size == 32
    assert [m.metric_name for m in tasks[0].metrics] == [["rougeL_fr"]]
    with pytest.raises(FileNotFoundError):
        lt.make_tasks(None, str(Path(folders["meetings"]) / "missing"))
    with pytest.raises(ValueError, match="meetings"):
        lt.run_lighteval("unused", [MEETINGS], "unused")
    # the module as `--custom-tasks` of the lighteval CLI: its TASKS_TABLE comes from the environment
    monkeypatch.setenv("LLM4ALL_LIGHTEVAL_SIMSAMU", folders["simsamu"])
    monkeypatch.setenv("LLM4ALL_LIGHTEVAL_MEETINGS", folders["meetings"])
    registry = Registry(tasks=f"{SIMSAMU},{MEETINGS}", custom_tasks=lt.__file__)
    task = registry.load_tasks()[MEETINGS]
    task.dataset = task.download_dataset_worker(task)
    doc = task.eval_docs()[0]
    assert [m["role"] for m in doc.specific["messages"]] == ["system", "user"]
    assert doc.get_golds()[0] and doc.query.endswith("Assistant :")


def test_long_prompts_fit_the_context(tiny_model):
    from transformers import AutoTokenizer

    from llm4all_recipes.evaluation.lighteval_tasks import MessagesPromptManager, chat_doc

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    manager = MessagesPromptManager(use_chat_template=True, tokenizer=tokenizer, max_length=256)
    long = " ".join(f"phrase {i} de la transcription." for i in range(400))
    doc = chat_doc(
        [{"role": "system", "content": "Système."}, {"role": "user", "content": f"Début. {long} Fin."}],
        "r",
        "t|0",
    )
    doc.generation_size = 64
    prompt = manager.prepare_prompt(doc)
    assert len(tokenizer(prompt)["input_ids"]) <= 256 - 64
    assert "Système." in prompt and "Début." in prompt and "Fin." in prompt and "[…]" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")  # the tiny model's ChatML, add_generation_prompt
    history = [{"role": r, "content": f"tour {i} " + "mot " * 20} for i, r in enumerate(["assistant", "user"] * 10)]
    doc = chat_doc([{"role": "system", "content": "Système."}, *history], "r", "t|0")
    doc.generation_size = 64
    prompt = manager.prepare_prompt(doc)
    assert len(tokenizer(prompt)["input_ids"]) <= 192
    assert "Système." in prompt and "tour 19 " in prompt and "tour 0 " not in prompt


def test_run_both_tasks(model_copy, folders, tmp_path):
    import torch

    from llm4all_recipes.evaluation.lighteval_tasks import run_lighteval

    out = tmp_path / "eval"
    scores = run_lighteval(str(model_copy), [SIMSAMU, MEETINGS], str(out), max_samples=3, **folders)
    assert set(scores) == {SIMSAMU, MEETINGS}
    assert set(scores[SIMSAMU]) == {"rougeL_fr"}
    assert set(scores[MEETINGS]) == {"rouge1_fr", "rouge2_fr", "rougeL_fr"}
    for metrics in scores.values():
        for value in metrics.values():
            assert isinstance(value, float) and 0.0 <= value <= 1.0
    # lighteval's files are left in output_dir, 3 samples per task; the temporary cache is gone
    assert glob.glob(str(out / "results" / "model" / "results_*.json"))
    assert len(_predictions(out, SIMSAMU)) == 3 and len(_predictions(out, MEETINGS)) == 3
    assert not glob.glob(str(out / "lighteval-cache-*"))
    assert torch.is_grad_enabled()  # lighteval turns autograd off at import and in the model: restored


def test_fresh_cache_recomputes(model_copy, folders, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from llm4all_recipes.evaluation.lighteval_tasks import run_lighteval

    cache = tmp_path / "kept-cache"
    run_lighteval(
        str(model_copy), [SIMSAMU], str(tmp_path / "a"), simsamu=folders["simsamu"], max_samples=3, cache_dir=str(cache)
    )
    before = _predictions(tmp_path / "a", SIMSAMU)
    # the weights change in place (a model retrained into the same folder): logits change sign
    model = AutoModelForCausalLM.from_pretrained(model_copy)
    with torch.no_grad():
        model.model.norm.weight.neg_()
    model.save_pretrained(model_copy)
    run_lighteval(str(model_copy), [SIMSAMU], str(tmp_path / "b"), simsamu=folders["simsamu"], max_samples=3)
    assert _predictions(tmp_path / "b", SIMSAMU) != before  # fresh cache: recomputed with the new weights
    # what the fresh cache avoids: lighteval keys its cache on its arguments, so the old predictions come back
    run_lighteval(
        str(model_copy), [SIMSAMU], str(tmp_path / "c"), simsamu=folders["simsamu"], max_samples=3, cache_dir=str(cache)
    )
    assert _predictions(tmp_path / "c", SIMSAMU) == before


def test_missing_lighteval_is_one_line_before_loading(tmp_path, monkeypatch, capsys):
    """lighteval is the `eval` extra: without it, a recipe that asks for lighteval tasks fails at parse time."""
    import importlib.util

    from llm4all_recipes.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lighteval" else real(name, *a))
    model = tmp_path / "model"
    model.mkdir()
    recipe = tmp_path / "eval.yaml"
    recipe.write_text(f"model_name_or_path: {model}\noutput_dir: {tmp_path / 'out'}\nlighteval_tasks: [meetings]\n")
    assert main(["eval", "--config", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert "key 'lighteval_tasks'" in err and "pip install 'llm4all-recipes[eval]'" in err, err
    assert not (tmp_path / "out").exists()


def test_a_build_dataset_output_is_read_as_it_is(model_copy, tmp_path, recipe_file):
    """The eval recipes point lighteval at `build-dataset` outputs (save_to_disk folders), unpublished:
    they are written in the Hub parquet layout for lighteval first (it failed with DataFilesNotFoundError)."""
    from llm4all_recipes.cli import main
    from llm4all_recipes.evaluation.lighteval_tasks import run_lighteval

    built = tmp_path / "turns"
    path = recipe_file(
        f"builder: simsamu\nsource: tests/fixtures/simsamu\noutput_dir: {built}\nper_turn: true\n",
        stage="datasets",
        name="t.yaml",
    )
    assert main(["build-dataset", "--config", path]) == 0
    out = tmp_path / "eval"
    scores = run_lighteval(str(model_copy), [SIMSAMU], str(out), max_samples=2, simsamu=str(built), split="validation")
    assert set(scores[SIMSAMU]) == {"rougeL_fr"} and 0.0 <= scores[SIMSAMU]["rougeL_fr"] <= 1.0
    assert len(_predictions(out, SIMSAMU)) == 2
    assert {p.name.split("-")[0] for p in (out / "data-simsamu" / "data").iterdir()} == {
        "train",
        "validation",
    }
