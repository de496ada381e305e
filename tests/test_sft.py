"""The SFT stage on the tiny default: loss goes down, only assistant tokens carry labels, LoRA, resume,
dry run, outputs as in the conventions."""

import json
from pathlib import Path

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
    assert {
        "model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
        "recipe.yaml",
        "metrics.json",
        "lineage.json",
        "README.md",
    } <= files
    assert not sft_run.with_name("out.tmp").exists()
    lineage = json.loads((sft_run / "lineage.json").read_text())["stages"]
    assert [s["stage"] for s in lineage] == ["tiny-model", "sft"]
    assert lineage[-1]["recipe"]["max_steps"] == 12
    card = (sft_run / "README.md").read_text()
    assert "tiny-model" in card and "sft" in card and "model-index" in card
    assert json.loads((sft_run / "config.json").read_text())["use_cache"] is True  # generation uses the KV cache
    model = AutoModelForCausalLM.from_pretrained(sft_run)
    base = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, base.model.layers[0].mlp.up_proj.weight)


def test_only_assistant_tokens_carry_labels(tiny_model, recipe_file, tmp_path):
    from llm4all_recipes.data.mixture import load_data
    from llm4all_recipes.models import load_model, load_tokenizer
    from llm4all_recipes.training import make_trainer

    recipe = parse_recipe("sft", ["--config", recipe_file(sft_text(tiny_model, tmp_path / "o"))])
    tokenizer = load_tokenizer(recipe.model_name_or_path)
    train, evals, _ = load_data(recipe)
    trainer = make_trainer(
        recipe,
        tmp_path / "o.tmp",
        model=load_model(str(tiny_model)),
        tokenizer=tokenizer,
        train_dataset=train,
        eval_datasets=evals,
    )
    row = trainer.train_dataset[0]
    batch = trainer.data_collator([row])
    labels = batch["labels"][0]
    labelled = tokenizer.decode(labels[labels != -100])
    expected = "".join(m["content"] + "<|im_end|>" for m in train[0]["messages"] if m["role"] == "assistant")
    assert labelled == expected
    user_text = next(m["content"] for m in train[0]["messages"] if m["role"] == "user")
    assert user_text not in labelled
    assert (labels != -100).sum() < (labels.numel() * 0.9)


@pytest.mark.parametrize("fsdp", [False, True])
def test_fsdp_checkpoints_activations_instead_of_the_trainer(tiny_model, recipe_file, tmp_path, monkeypatch, fsdp):
    """Under recipes/accelerate_configs/fsdp.yaml (FSDP's activation checkpointing on), a recipe's
    activation_checkpointing goes to FSDP: the Trainer's own would add an all-gather (and transformers refuses both)."""
    import yaml

    from llm4all_recipes.data.mixture import load_data
    from llm4all_recipes.models import load_model, load_tokenizer
    from llm4all_recipes.training import make_trainer

    config = yaml.safe_load(Path("recipes/accelerate_configs/fsdp.yaml").read_text())
    assert config["fsdp_config"]["fsdp_activation_checkpointing"] is True
    if fsdp:  # what `accelerate launch --config_file recipes/accelerate_configs/fsdp.yaml` exports
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
        monkeypatch.setenv("FSDP_ACTIVATION_CHECKPOINTING", "true")
    extra = "activation_checkpointing: true\n"
    recipe = parse_recipe("sft", ["--config", recipe_file(sft_text(tiny_model, tmp_path / "o", extra))])
    tokenizer = load_tokenizer(recipe.model_name_or_path)
    train, evals, _ = load_data(recipe)
    trainer = make_trainer(
        recipe,
        tmp_path / "o.tmp",
        model=load_model(str(tiny_model)),
        tokenizer=tokenizer,
        train_dataset=train,
        eval_datasets=evals,
    )
    assert trainer.args.activation_checkpointing is (not fsdp)
    assert recipe.activation_checkpointing is True  # the recipe as written (recipe.yaml) is unchanged


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
    tokens = sum(len(tokenizer.apply_chat_template(r["messages"], return_dict=True)["input_ids"]) for r in rows)
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
    path = recipe_file(
        sft_text(tiny_model, tmp_path / "cut", "max_steps: 1\n").replace("max_length: 512", f"max_length: {min(first)}")
    )
    assert main(["sft", "--config", path]) == 2
    err = capsys.readouterr().err
    assert "max_length" in err and f"every training conversation ({len(rows)})" in err
    assert not (tmp_path / "cut").exists() and not (tmp_path / "cut.tmp").exists()
    # one token more: exactly the conversations whose answer starts within max_length train
    dataset = datasets.Dataset.from_list(rows)
    assert sft.rows_cut_before_the_answer(dataset, tokenizer, min(first) + 1) == sum(f > min(first) for f in first)


def copy_of(model, folder):
    import shutil

    shutil.copytree(model, folder)
    return folder


def test_a_tokenizer_without_chat_template_is_named_before_the_model_loads(
    tiny_model, recipe_file, tmp_path, capsys, monkeypatch
):
    """With assistant_only_loss false this used to be a traceback from apply_chat_template."""
    import llm4all_recipes.stages.sft as sft

    monkeypatch.setattr(sft, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    model = copy_of(tiny_model, tmp_path / "plain")
    (model / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    path = recipe_file(sft_text(model, tmp_path / "out", "assistant_only_loss: false\nmax_steps: 1\n"))
    assert main(["sft", "--config", path]) == 2
    err = capsys.readouterr().err
    assert "key 'chat_template_path'" in err and f"the tokenizer of {model} has no chat template" in err, err
    assert not (tmp_path / "out").exists()


def test_a_truncated_tokenizer_file_is_named(tiny_model, recipe_file, tmp_path, capsys):
    model = copy_of(tiny_model, tmp_path / "broken")
    data = (model / "tokenizer.json").read_bytes()
    (model / "tokenizer.json").write_bytes(data[: len(data) // 2])
    assert main(["sft", "--config", recipe_file(sft_text(model, tmp_path / "out", "max_steps: 1\n"))]) == 2
    err = capsys.readouterr().err
    assert f"{model / 'tokenizer.json'} is truncated or not JSON" in err, err


class ForceAt:
    """A logits processor that makes `token` the only choice at new-token position `step`."""

    def __init__(self, prompt_length: int, step: int, token: int):
        self.at, self.token = prompt_length + step, token

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] == self.at:
            scores = torch.full_like(scores, -float("inf"))
            scores[:, self.token] = 0.0
        return scores


@pytest.mark.parametrize("template", ["chatml", "llama3", "mistral"])
def test_generation_stops_at_the_end_of_turn_of_every_shipped_template(template, tiny_model, recipe_file, tmp_path):
    """The template's end-of-turn marker is one token of the saved tokenizer (added when the vocabulary lacks it:
    llama3's <|eot_id|> here) and in the saved generation_config's eos_token_id, so generation stops there — it
    used to run on (base models: the marker is not their EOS) and later turns leaked into ROUGE."""
    from transformers import LogitsProcessorList

    from llm4all_recipes.models import chat_markers

    out = tmp_path / template
    path = recipe_file(sft_text(tiny_model, out, f"max_steps: 1\nchat_template_path: {template}\n"))
    assert main(["sft", "--config", path]) == 0
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    markers, end = chat_markers(tokenizer)
    eot = tokenizer.convert_tokens_to_ids(end)
    assert tokenizer(end, add_special_tokens=False)["input_ids"] == [eot]
    assert all(len(tokenizer(m, add_special_tokens=False)["input_ids"]) == 1 for m in markers)
    stops = model.generation_config.eos_token_id
    assert eot in ([stops] if isinstance(stops, int) else stops)
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)
    added = json.loads((out / "metrics.json").read_text())["added_tokens"]
    assert added == (["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"] if template == "llama3" else [])
    messages = [{"role": "user", "content": "Bonjour"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    n = prompt["input_ids"].shape[1]
    force = LogitsProcessorList([ForceAt(n, 3, eot)])
    new = model.generate(**prompt, max_new_tokens=20, do_sample=False, logits_processor=force)[0, n:].tolist()
    assert len(new) == 4 and new[-1] == eot  # stopped right after the end of turn, not at max_new_tokens


def test_a_run_of_few_optimizer_steps_is_flagged(tiny_model, recipe_file, tmp_path, capsys, caplog):
    """48 conversations at 8 per step are 6 steps an epoch: the dry run says so (on 8 GPUs the same recipe would
    make one step), and so does the real run's first log line; an explicit max_steps is the user's choice."""
    from types import SimpleNamespace

    from llm4all_recipes.training import few_steps_callback

    path = recipe_file(sft_text(tiny_model, tmp_path / "dry", "num_train_epochs: 1\n"))
    assert main(["sft", "--config", path, "--dry_run", "true"]) == 0
    assert (
        "# WARNING: only 6 optimizer step(s) (8 sequences per step on 1 process(es)): lower gradient_accumulation_steps"
    ) in capsys.readouterr().out
    assert main(["sft", "--config", path, "--dry_run", "true", "--max_steps", "3"]) == 0
    assert "WARNING" not in capsys.readouterr().out
    args = SimpleNamespace(world_size=8, per_device_train_batch_size=1, gradient_accumulation_steps=2)
    with caplog.at_level("WARNING"):
        few_steps_callback().on_train_begin(args, SimpleNamespace(max_steps=3), None)
    assert "only 3 optimizer step(s) (16 sequences per step on 8 process(es))" in caplog.text
