"""Cards rendered from model_cards/ and dataset_cards/ templates through huggingface_hub."""

import datasets
import yaml
from huggingface_hub import DatasetCard, ModelCard
from huggingface_hub.repocard_data import eval_results_to_model_index

from llm4all_recipes.cards import dataset_repo_ids, render_model_card

LINEAGE = [
    {"stage": "base", "model": "OpenLLM-France/Lucie-7B"},
    {
        "stage": "compress",
        "output_dir": "outputs/lucie/compress/w60",
        "hub_repo_id": "llm4all/lucie-7b-w60",
        "recipe_path": "recipes/lucie/compress/w60.yaml",
        "recipe": {"ratio": 0.6, "method": "whitening"},
        "command": "llm4all compress --config recipes/lucie/compress/w60.yaml",
        "versions": {"torch": "2.13.0"},
    },
    {
        "stage": "sft",
        "output_dir": "outputs/lucie/sft/samu",
        "hub_repo_id": "llm4all/lucie-7b-w60-samu",
        "recipe_path": "recipes/lucie/sft/samu.yaml",
        "recipe": {"learning_rate": 1e-5},
        "command": "accelerate launch --num_processes 8 -m llm4all_recipes sft --config recipes/lucie/sft/samu.yaml",
        "versions": {"torch": "2.13.0"},
    },
]


def test_model_card_front_matter_and_lineage():
    text = render_model_card(
        stage="sft",
        model_name="llm4all/lucie-7b-w60-samu",
        summary="A test.",
        training="trained",
        lineage=LINEAGE,
        results=[{"dataset_name": "simsamu", "metric_type": "perplexity", "metric_value": 12.5}],
        datasets=dataset_repo_ids(["medkit/simsamu", "/nonexistent/local/data"]),
        license="apache-2.0",
        chat=True,
    )
    card = ModelCard(text)
    assert card.data.base_model == "llm4all/lucie-7b-w60"  # the parent stage's repo: the Hub's model tree
    assert card.data.datasets == ["medkit/simsamu"]  # Hub ids only in the front matter
    assert card.data.license == "apache-2.0"
    assert {"llm4all", "llm4all-sft"} <= set(card.data.tags)
    (result,) = card.data.eval_results
    assert (result.dataset_name, result.metric_type, result.metric_value) == ("simsamu", "perplexity", 12.5)
    lineage = card.text.split("## Lineage")[1]
    for stage in LINEAGE[1:]:
        assert stage["command"] in lineage and stage["recipe_path"] in lineage
    assert "OpenLLM-France/Lucie-7B" in lineage
    assert "ratio: 0.6" in lineage and "learning_rate: 1.0e-05" in lineage
    assert 'AutoModelForCausalLM.from_pretrained("llm4all/lucie-7b-w60-samu")' in card.text


def test_dataset_card_counts_match_the_data(tmp_path, recipe_file):
    from llm4all_recipes.cli import main

    out = tmp_path / "turns"
    path = recipe_file(
        f"builder: simsamu\nsource: tests/fixtures/simsamu\noutput_dir: {out}\nper_turn: true\n",
        stage="datasets",
        name="t.yaml",
    )
    assert main(["build-dataset", "--config", path]) == 0
    ds = datasets.load_from_disk(str(out))
    card = DatasetCard.load(out / "README.md")
    splits = {s["name"]: s["num_examples"] for s in card.data.dataset_info["splits"]}
    assert splits == {s: len(ds[s]) for s in ds}
    assert card.data.license == "mit" and card.data.language == ["fr"]
    assert "| untranscribed (<NA>) segment | 3 |" in card.text
    recipe_block = card.text.split("## Recipe")[1].split("```yaml")[1].split("```")[0]
    assert yaml.safe_load(recipe_block)["per_turn"] is True
    for split in ds:
        assert f"| {split} | {len(ds[split])} |" in card.text
    # the metadata datasets reads back (as DatasetDict.push_to_hub writes it): features, bytes and rows per split
    info = datasets.DatasetInfo._from_yaml_dict(card.data.dataset_info)
    assert {n: s.num_examples for n, s in info.splits.items()} == {s: len(ds[s]) for s in ds}
    assert all(s.num_bytes > 0 for s in info.splits.values())
    assert info.features == ds[next(iter(ds))].features
    assert f"split: {next(iter(ds))}}}]" in card.text  # the recipe line names a split that exists


def test_dataset_ids_of_published_local_folders(tmp_path):
    folder = tmp_path / "built"
    folder.mkdir()
    (folder / "lineage.json").write_text('{"stages": [{"stage": "build-dataset", "hub_repo_id": "me/calls"}]}')
    unpublished = tmp_path / "other"
    unpublished.mkdir()
    (unpublished / "lineage.json").write_text('{"stages": [{"stage": "build-dataset", "hub_repo_id": null}]}')
    ids = dataset_repo_ids(
        ["medkit/simsamu", str(folder), str(unpublished), "tests/fixtures/chat/train.jsonl"], ["me/extra"]
    )
    assert ids == ["me/extra", "medkit/simsamu", "me/calls"]


SNIPPET_CHILD = r"""
import re, sys
sys.modules["llm4all_recipes"] = None  # a stranger's machine: plain transformers, no llm4all package
card = open(sys.argv[1], encoding="utf-8").read()
code = re.search(r"```python\n(.*?)```", card, re.S).group(1)
exec(compile(code, "card snippet", "exec"), {})
"""


def test_card_snippets_run_verbatim_without_the_package(compressed_model, hub, tmp_path):
    """The low-rank checkpoints of compress and of an SFT on top, pushed to a (loopback) Hub by the stages
    themselves: each card's Python block, exactly as written, loads and generates in a process that cannot
    import the package, with stdin closed (a trust_remote_code prompt would fail it)."""
    import os
    import subprocess
    import sys

    from llm4all_recipes.cli import main

    hub_args = ["--push_to_hub", "true", "--hub_target", "hub"]
    compressed = tmp_path / "compress"
    assert (
        main(
            [
                "compress",
                "--config",
                "recipes/tiny-llama/compress/whitening-60.yaml",
                "--model_name_or_path",
                str(compressed_model.parent / "tiny-model"),
                "--output_dir",
                str(compressed),
                "--hub_model_id",
                "someone/tiny-w60",
                *hub_args,
            ]
        )
        == 0
    )
    sft = tmp_path / "sft"
    assert (
        main(
            [
                "sft",
                "--config",
                "recipes/tiny-llama/sft/chat.yaml",
                "--model_name_or_path",
                str(compressed),
                "--output_dir",
                str(sft),
                "--max_steps",
                "2",
                "--hub_model_id",
                "someone/tiny-w60-chat",
                *hub_args,
            ]
        )
        == 0
    )
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf-home"), "OMP_NUM_THREADS": "1"}
    for folder, repo in ((compressed, "someone/tiny-w60"), (sft, "someone/tiny-w60-chat")):
        card = (folder / "README.md").read_text()
        assert f'from_pretrained("{repo}", trust_remote_code=True)' in card
        run = subprocess.run(
            [sys.executable, "-c", SNIPPET_CHILD, str(folder / "README.md")],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            stdin=subprocess.DEVNULL,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        assert "Do you wish to run the custom code" not in run.stdout + run.stderr


def test_two_local_sets_with_the_same_file_name_are_two_model_index_entries():
    """benchmarks/data/smollm2/{en,fr}/validation.jsonl used to be one model-index dataset holding both
    perplexities (huggingface_hub groups results by dataset type)."""
    from llm4all_recipes.cards import eval_result, perplexity_results
    from llm4all_recipes.fields import DatasetSource

    sources = [
        DatasetSource(path="benchmarks/data/smollm2/en/validation.jsonl", label="old_en_validation"),
        DatasetSource(path="benchmarks/data/smollm2/fr/validation.jsonl", label="new_fr_validation"),
    ]
    rows = perplexity_results(
        {
            "old_en_validation": {"perplexity": 36.9, "tokens": 10},
            "new_fr_validation": {"perplexity": 422.9, "tokens": 20},
        },
        sources,
    )
    index = eval_results_to_model_index("m", [eval_result(r) for r in rows])
    entries = [(e["dataset"]["type"], [m["value"] for m in e["metrics"]]) for e in index[0]["results"]]
    assert entries == [("en/validation", [36.9]), ("fr/validation", [422.9])]
