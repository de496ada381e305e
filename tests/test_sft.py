"""The SFT stage on the tiny default: loss goes down, only assistant tokens carry labels, LoRA, resume,
dry run, outputs as in the conventions."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from llm4all_recipes.cli import main, run_stage
from llm4all_recipes.parsing import parse_recipe


def sft_text(model, out, extra=""):
    return (
        f"model_name_or_path: {model}\n"
        f"output_dir: {out}\n"
        "datasets:\n  - path: tests/fixtures/chat/train.jsonl\n"
        "eval_datasets:\n  - path: tests/fixtures/chat/eval.jsonl\n"
        "max_length: 512\nper_device_train_batch_size: 8\nlearning_rate: 1.0e-3\n"
        "logging_steps: 1\nsave_steps: 2\nseed: 0\n" + extra
    )


@pytest.fixture(scope="module")
def sft_run(tiny_model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sft")
    out = folder / "out"
    recipe = folder / "recipes" / "tiny" / "sft" / "smoke.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text(sft_text(tiny_model, out, "max_steps: 12\n"))
    assert main(["sft", "--config", str(recipe)]) == 0
    return out


def test_loss_goes_down(sft_run):
    metrics = json.loads((sft_run / "metrics.json").read_text())
    before, after = metrics["eval_before"]["eval"]["loss"], metrics["eval"]["eval"]["loss"]
    assert after < before - 0.2, (before, after)
    assert metrics["train"]["last_logged_loss"] < metrics["train"]["first_logged_loss"]
    assert metrics["train"]["global_step"] == 12 and metrics["world_size"] == 1


def test_outputs_follow_the_conventions(sft_run, tiny_model):
    files = {p.name for p in sft_run.iterdir()}
    assert {"model.safetensors", "tokenizer.json", "chat_template.jinja", "recipe.yaml", "metrics.json",
            "lineage.json", "README.md"} <= files  # fmt: skip
    assert not sft_run.with_name("out.tmp").exists()
    lineage = json.loads((sft_run / "lineage.json").read_text())["stages"]
    assert [s["stage"] for s in lineage] == ["tiny-model", "sft"]
    assert lineage[-1]["recipe"]["max_steps"] == 12
    card = (sft_run / "README.md").read_text()
    assert "tiny-model" in card and "sft" in card and "model-index" in card
    assert (
        json.loads((sft_run / "config.json").read_text())["use_cache"] is True
    )  # generation uses the KV cache
    model = AutoModelForCausalLM.from_pretrained(sft_run)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)


def test_only_assistant_tokens_carry_labels(tiny_model, recipe_file, tmp_path):
    from llm4all_recipes.models import load_model, load_tokenizer
    from llm4all_recipes.training import load_data, make_trainer

    recipe = parse_recipe("sft", ["--config", recipe_file(sft_text(tiny_model, tmp_path / "o"))])
    tokenizer = load_tokenizer(recipe.model_name_or_path)
    train, evals, _ = load_data(recipe)
    trainer = make_trainer(recipe, tmp_path / "o.tmp", model=load_model(str(tiny_model)), tokenizer=tokenizer,
                           train_dataset=train, eval_datasets=evals)  # fmt: skip
    row = trainer.train_dataset[0]
    batch = trainer.data_collator([row])
    labels = batch["labels"][0]
    labelled = tokenizer.decode(labels[labels != -100])
    expected = "".join(m["content"] + "<|im_end|>" for m in train[0]["messages"] if m["role"] == "assistant")
    assert labelled == expected
    user_text = next(m["content"] for m in train[0]["messages"] if m["role"] == "user")
    assert user_text not in labelled
    assert (labels != -100).sum() < (labels.numel() * 0.9)


def test_lora_saves_adapter_and_merged_model(tiny_model, recipe_file, tmp_path):
    out = tmp_path / "lora"
    path = recipe_file(sft_text(tiny_model, out, "max_steps: 3\nuse_peft: true\nlora_r: 4\nlora_alpha: 8\n"))
    metrics = run_stage("sft", ["--config", path])
    assert metrics["trainable_parameters"] < 0.2 * metrics["parameters"]
    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    merged = AutoModelForCausalLM.from_pretrained(out)  # plain transformers, no peft
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    q_merged, q_base = (
        merged.model.layers[0].self_attn.q_proj.weight,
        base.model.layers[0].self_attn.q_proj.weight,
    )
    assert q_merged.shape == q_base.shape and not torch.equal(q_merged, q_base)


class CrashAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt("simulated crash")


def test_resume_after_interruption(tiny_model, recipe_file, tmp_path):
    out = tmp_path / "resume"
    path = recipe_file(sft_text(tiny_model, out, "max_steps: 4\n"))
    with pytest.raises(KeyboardInterrupt):
        run_stage("sft", ["--config", path], callbacks=[CrashAt(3)])
    tmp = tmp_path / "resume.tmp"
    assert (tmp / "checkpoint-2").is_dir() and not out.exists()  # no half output that looks finished
    metrics = run_stage("sft", ["--config", path])
    assert metrics["resumed_from"] == "checkpoint-2"
    assert metrics["train"]["global_step"] == 4
    assert out.is_dir() and not tmp.exists()


def test_dry_run_prints_plan_without_loading_a_model(tiny_model, recipe_file, tmp_path, capsys, monkeypatch):
    import llm4all_recipes.stages.sft as sft

    monkeypatch.setattr(sft, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    path = recipe_file(sft_text(tiny_model, tmp_path / "dry", "num_train_epochs: 2\n"))
    assert main(["sft", "--config", path, "--dry_run", "true"]) == 0
    out = capsys.readouterr().out
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    with open("tests/fixtures/chat/train.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    tokens = sum(
        len(tokenizer.apply_chat_template(r["messages"], return_dict=True)["input_ids"]) for r in rows
    )
    steps = 2 * -(-len(rows) // 8)
    assert f"tokens per epoch: {tokens}" in out
    assert f"# steps: {steps} " in out
    assert "learning_rate: 0.001" in out
    assert not (tmp_path / "dry").exists() and not (tmp_path / "dry.tmp").exists()


def test_max_length_that_cuts_every_answer_is_refused_before_the_model_loads(
    tiny_model, recipe_file, tmp_path, capsys, monkeypatch
):
    """Every conversation longer than max_length before its first assistant token would train nothing (the
    trainer then fails deep inside torch's sampler): one line naming the key, exit 2, nothing written."""
    import datasets

    import llm4all_recipes.stages.sft as sft

    monkeypatch.setattr(sft, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    with open("tests/fixtures/chat/train.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    masks = [
        tokenizer.apply_chat_template(r["messages"], return_dict=True, return_assistant_tokens_mask=True)[
            "assistant_masks"
        ]
        for r in rows
    ]
    first = [mask.index(1) for mask in masks]  # tokens before each conversation's first answer token
    path = recipe_file(sft_text(tiny_model, tmp_path / "cut", "max_steps: 1\n").replace(
        "max_length: 512", f"max_length: {min(first)}"))  # fmt: skip
    assert main(["sft", "--config", path]) == 2
    err = capsys.readouterr().err
    assert "max_length" in err and f"every training conversation ({len(rows)})" in err
    assert not (tmp_path / "cut").exists() and not (tmp_path / "cut.tmp").exists()
    # one token more: exactly the conversations whose answer starts within max_length train
    dataset = datasets.Dataset.from_list(rows)
    assert sft.rows_cut_before_the_answer(dataset, tokenizer, min(first) + 1) == sum(
        f > min(first) for f in first
    )
