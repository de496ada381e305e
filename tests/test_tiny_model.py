"""The embedded default (`llm4all tiny-model`): a real, if small, French language model built offline."""

import json

import torch
import yaml
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm4all_recipes.configs import has_generation_markers


def test_reloads_with_plain_transformers(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert model.config.model_type == "llama"
    assert model.config.vocab_size == len(tokenizer) == 2048
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|pad|>"
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert tokenizer.model_max_length == model.config.max_position_embeddings  # no spurious length warning
    files = {p.name for p in tiny_model.iterdir()}
    assert "model.safetensors" in files and not any(f.endswith(".bin") for f in files)
    assert {"chat_template.jinja", "recipe.yaml", "metrics.json", "lineage.json", "README.md"} <= files
    assert not tiny_model.with_name(tiny_model.name + ".tmp").exists()


def test_tokenizer_keeps_french_accents(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    text = "Élodie a appelé le SAMU : « douleur thoracique », dit-elle, à Noël."
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode()) / 2  # real merges, not bytes


def test_chat_template_marks_assistant_turns(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert has_generation_markers(tokenizer.chat_template)
    messages = [
        {"role": "system", "content": "Tu es un assistant."},
        {"role": "user", "content": "Bonjour"},
        {"role": "assistant", "content": "Bonjour, que puis-je faire ?"},
    ]
    out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
    marked = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tokenizer.decode(marked) == "Bonjour, que puis-je faire ?<|im_end|>"


def test_pretraining_halves_held_out_perplexity(tiny_metrics):
    # The bar: held-out perplexity of the trained model <= 0.5x the untrained model's.
    assert tiny_metrics["perplexity_ratio"]["old_eval"] <= 0.5
    before = tiny_metrics["eval_before"]["old_eval"]["perplexity"]
    after = tiny_metrics["eval"]["old_eval"]["perplexity"]
    assert after < 0.5 * before
    assert before > 1000  # an untrained model is close to uniform over 2048 tokens
    assert tiny_metrics["train"]["global_step"] == 200
    assert tiny_metrics["data"][0]["source"] == "tests/fixtures/text/old_train.jsonl"  # old domain only


def test_card_and_lineage(tiny_model, tiny_metrics):
    card = ModelCard.load(tiny_model / "README.md")
    assert card.data.license == "apache-2.0"
    results = {r.dataset_name: r.metric_value for r in card.data.eval_results}
    assert results["old_eval"] == tiny_metrics["eval"]["old_eval"]["perplexity"]
    assert "## Lineage" in card.text
    lineage = json.loads((tiny_model / "lineage.json").read_text())["stages"]
    assert [s["stage"] for s in lineage] == ["tiny-model"]
    assert lineage[0]["versions"]["transformers"]
    recipe = yaml.safe_load((tiny_model / "recipe.yaml").read_text())
    assert recipe["output_dir"] == str(tiny_model) and recipe["max_steps"] == 200


def test_generates_french_looking_text(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    inputs = tokenizer("La région", return_tensors="pt")
    torch.manual_seed(0)
    out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    text = tokenizer.decode(out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert len(text.split()) >= 3


def test_written_files_hold_no_machine_path(tiny_model):
    """recipe.yaml, lineage.json and the card keep what the recipe said ('chatml'), not where it resolved to."""
    import os

    from llm4all_recipes import paths

    machine_paths = {str(paths.CHAT_TEMPLATES_DIR.parents[1]), os.getcwd()}
    for name in ("recipe.yaml", "lineage.json", "README.md", "metrics.json"):
        text = (tiny_model / name).read_text(encoding="utf-8")
        assert not [p for p in machine_paths if p in text], name
    assert yaml.safe_load((tiny_model / "recipe.yaml").read_text())["chat_template_path"] == "chatml"
