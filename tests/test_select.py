"""Data targeting: duplicates (exact, MinHash near), eval-set decontamination, perplexity band; every
removed document is reported with its reason."""

import json

import datasets
import pytest

from llm4all_recipes.cli import main
from llm4all_recipes.data.selection import contaminated, duplicates
from llm4all_recipes.stages.select import quantile


def read(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


def test_duplicates_exact_and_near():
    docs = read("tests/fixtures/text/new_train.jsonl")[:6]
    near = docs[2].replace("médecin", "docteur", 1)  # one word changed in a long document
    texts = [*docs, docs[1].upper(), near]
    dropped = duplicates(texts)
    assert dropped[6] == "exact duplicate of #1"  # case and spacing do not matter
    assert dropped[7] == "near duplicate of #2"
    assert set(dropped) == {6, 7}


def test_contamination_by_ngram():
    eval_doc = read("tests/fixtures/text/new_eval.jsonl")[0]
    clean = read("tests/fixtures/text/new_train.jsonl")[:3]
    leaked = "Un paragraphe neuf. " + " ".join(eval_doc.split()[10:30]) + " Et la suite."
    found = contaminated([*clean, leaked], [eval_doc], n=13)
    assert list(found) == [3] and "shares a 13-gram" in found[3]


def test_quantile_matches_numpy_linear():
    values = [5.0, 1.0, 3.0, 2.0, 4.0]
    assert quantile(values, 0.1) == pytest.approx(1.4)
    assert quantile(values, 0.5) == 3.0 and quantile(values, 1.0) == 5.0


def test_select_stage(tiny_model, tmp_path, recipe_file):
    docs = read("tests/fixtures/text/new_train.jsonl")
    eval_doc = read("tests/fixtures/text/new_eval.jsonl")[0]
    extra = [docs[0], "Préambule. " + " ".join(eval_doc.split()[5:25]) + " Fin."]
    source = tmp_path / "docs.jsonl"
    source.write_text(
        "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs + extra), encoding="utf-8"
    )
    out = tmp_path / "selected"
    path = recipe_file(
        f"model_name_or_path: {tiny_model}\noutput_dir: {out}\ndatasets:\n  - path: {source}\n"
        "decontaminate:\n  - path: tests/fixtures/text/new_eval.jsonl\nscore_max_length: 128\n",
        stage="select",
        name="s.yaml",
    )
    assert main(["select", "--config", path]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["documents"] == len(docs) + 2
    assert report["dropped"]["exact duplicate"] == 1 and report["dropped"]["eval overlap"] == 1
    kept = datasets.load_from_disk(str(out))["train"]
    with open(out / "dropped.jsonl", encoding="utf-8") as f:
        dropped = [json.loads(line) for line in f]
    assert len(kept) + len(dropped) == report["documents"]  # nothing silently lost
    lo, hi = report["thresholds"]["low"], report["thresholds"]["high"]
    assert all(lo <= p <= hi for p in kept["perplexity"])
    assert sum("quantile" in d["reason"] for d in dropped) == report["dropped"]["perplexity"] >= 2
    assert "dropped.jsonl" in (out / "README.md").read_text()
