"""Recipes: TRL-parser parsing into typed dataclasses, YAML vs CLI precedence, and bad recipes failing
with one clear message (file, key, line), exit status 2, before any model is loaded."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from llm4all_recipes import configs
from llm4all_recipes.cli import main
from llm4all_recipes.configs import SFTRecipe
from llm4all_recipes.errors import RecipeError
from llm4all_recipes.fields import DatasetSource
from llm4all_recipes.parsing import parse_recipe
from llm4all_recipes.resolved import is_secret, resolved_recipe

CHAT = "tests/fixtures/chat/train.jsonl"
CHAT_EVAL = "tests/fixtures/chat/eval.jsonl"


@pytest.fixture
def model_dir(tmp_path):
    """An existing folder standing for a model: parsing only checks that it exists."""
    path = tmp_path / "model"
    path.mkdir()
    return path


@pytest.fixture
def base(model_dir, tmp_path):
    def text(extra: str = "") -> str:
        return (
            f"model_name_or_path: {model_dir}\n"
            f"output_dir: {tmp_path / 'out'}\n"
            f"datasets:\n  - path: {CHAT}\n"
            f"eval_datasets:\n  - path: {CHAT_EVAL}\n"
            "learning_rate: 1.0e-4\n"
            "per_device_train_batch_size: 2\n" + extra
        )

    return text


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if any stage tries to load a model."""

    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded")

    import llm4all_recipes.models as models
    import llm4all_recipes.stages.cpt as cpt  # the stages bind load_model at import
    import llm4all_recipes.stages.kd as kd
    import llm4all_recipes.stages.sft as sft

    monkeypatch.setattr(models, "load_model", boom)
    for stage in (sft, kd, cpt):
        monkeypatch.setattr(stage, "load_model", boom)


def test_yaml_values_are_typed(recipe_file, base):
    recipe = parse_recipe("sft", ["--config", recipe_file(base("num_train_epochs: 2\nbf16: false\n"))])
    assert isinstance(recipe, SFTRecipe)
    assert recipe.learning_rate == pytest.approx(1e-4)
    assert recipe.num_train_epochs == 2.0
    assert recipe.per_device_train_batch_size == 2
    assert recipe.datasets == [DatasetSource(path=CHAT)]
    assert recipe.eval_datasets[0].tag == "eval"
    assert recipe.assistant_only_loss is True  # our default for chat SFT
    assert recipe.bf16 is False


def test_cli_overrides_beat_yaml(recipe_file, base):
    path = recipe_file(base())
    recipe = parse_recipe("sft", ["--config", path, "--learning_rate", "3e-3", "--per_device_train_batch_size=5"])
    assert recipe.learning_rate == pytest.approx(3e-3)
    assert recipe.per_device_train_batch_size == 5
    resolved = resolved_recipe(recipe)
    assert resolved["learning_rate"] == pytest.approx(3e-3)
    assert resolved["datasets"] == [{"path": CHAT}]  # entries keep what differs from the defaults


def test_yaml_floats_written_like_1e_minus_5_are_numbers(recipe_file, base):
    # PyYAML reads `1e-5` (no dot) as a string; the recipe still gets a float.
    recipe = parse_recipe("sft", ["--config", recipe_file(base().replace("1.0e-4", "1e-5"))])
    assert recipe.learning_rate == pytest.approx(1e-5)


def test_default_output_dir_follows_the_recipe_path(tmp_path, model_dir):
    path = tmp_path / "recipes" / "my-model" / "sft" / "french.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(f"model_name_or_path: {model_dir}\ndatasets:\n  - path: {CHAT}\n")
    recipe = parse_recipe("sft", ["--config", str(path)])
    assert recipe.output_dir == "outputs/my-model/sft/french"


BAD_RECIPES = [
    # (what, extra YAML or replacement, key named in the message, words in the message)
    ("misspelt key", "learnin_rate: 0.1\n", "learnin_rate", "did you mean 'learning_rate'"),
    ("wrong type", "num_train_epochs: three\n", "num_train_epochs", "expected float"),
    ("wrong type in a list entry", None, "datasets[0].weight", "expected float"),
    ("invalid choice", "lr_scheduler_type: cosine_annealing\n", "lr_scheduler_type", "choose one of"),
    ("value out of range", "max_length: -4\n", "max_length", "must be > 0"),
    ("batch of zero rows", None, "per_device_train_batch_size", "must be > 0"),
    ("lora dropout out of range", "use_peft: true\nlora_dropout: 1.5\n", "lora_dropout", "must be in [0, 1)"),
    ("tracker not installed", "report_to: [swanlab]\n", "report_to", "pip install swanlab"),
    ("missing dataset file", None, "datasets[0].path", "tests/fixtures/chat/nope.jsonl"),
    (
        "missing chat template file",
        "chat_template_path: templates/none.jinja\n",
        "chat_template_path",
        "no such file",
    ),
    (
        "unknown shipped template",
        "chat_template_path: vicuna\n",
        "chat_template_path",
        "no shipped chat template",
    ),
    ("duplicate key", "max_length: 12\nmax_length: 13\n", "max_length", "duplicate key"),
    ("dataset without the stage's column", None, "datasets[0].columns", "no column ['{column}']"),
    ("eval set that is a training set", None, "eval_datasets[0]", "held out"),
    ("unknown key in a dataset entry", None, "datasets[0].wieght", "unknown key"),
    ("missing model", None, "model_name_or_path", "required"),
    ("merge with the base out of range", "merge_with_base: 1.5\n", "merge_with_base", "must be in [0, 1]"),
]
TEXT, TEXT_EVAL = "tests/fixtures/text/old_train.jsonl", "tests/fixtures/text/old_eval.jsonl"
# every training stage runs the same table: stage -> (train file, eval file, its column, a file without it)
STAGES = {
    "sft": (CHAT, CHAT_EVAL, "messages", TEXT),
    "kd": (TEXT, TEXT_EVAL, "text", CHAT),
    "cpt": (TEXT, TEXT_EVAL, "text", CHAT),
}


def _bad_text(stage: str, what: str, extra, base, model_dir) -> str:
    train, held_out, _, other = STAGES[stage]
    text = base(extra or "").replace(CHAT_EVAL, held_out).replace(CHAT, train)
    if stage == "kd":
        text += f"teacher_model_name_or_path: {model_dir}\n"
    if what == "wrong type in a list entry":
        text = text.replace(f"  - path: {train}\n", f"  - path: {train}\n    weight: heavy\n", 1)
    elif what == "batch of zero rows":
        text = text.replace("per_device_train_batch_size: 2", "per_device_train_batch_size: 0")
    elif what == "missing dataset file":
        text = text.replace(f"  - path: {train}\n", "  - path: tests/fixtures/chat/nope.jsonl\n", 1)
    elif what == "dataset without the stage's column":
        text = text.replace(f"  - path: {train}\n", f"  - path: {other}\n", 1)
    elif what == "eval set that is a training set":
        text = text.replace(held_out, train)
    elif what == "unknown key in a dataset entry":
        text = text.replace(f"  - path: {train}\n", f"  - path: {train}\n    wieght: 2\n", 1)
    elif what == "missing model":
        text = "\n".join(line for line in text.splitlines() if not line.startswith("model_name_or_path")) + "\n"
    return text


@pytest.mark.parametrize("stage", list(STAGES))
@pytest.mark.parametrize(("what", "extra", "key", "words"), BAD_RECIPES, ids=[b[0] for b in BAD_RECIPES])
def test_bad_recipe_fails_early_naming_file_and_key(
    stage, what, extra, key, words, recipe_file, base, capsys, no_model_load, tmp_path, model_dir
):
    path = recipe_file(_bad_text(stage, what, extra, base, model_dir), stage)
    assert main([stage, "--config", path]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}"), err
    assert f"key '{key}'" in err, err
    assert words.format(column=STAGES[stage][2]) in err, err
    assert len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_bad_recipe_message_gives_the_line(recipe_file, base):
    path = recipe_file(base("seed: 1\nlearnin_rate: 0.1\n"))
    with pytest.raises(RecipeError) as exc:
        parse_recipe("sft", ["--config", path])
    assert exc.value.line == 10
    assert str(exc.value).startswith(f"{path}:10: key 'learnin_rate'")


def test_bad_cli_override_names_the_command_line(recipe_file, base, capsys, no_model_load):
    path = recipe_file(base())
    assert main(["sft", "--config", path, "--learning_rate", "fast"]) == 2
    err = capsys.readouterr().err
    assert "command line" in err and "learning_rate" in err and "invalid float value" in err
    assert main(["sft", "--config", path, "--no_such_key", "1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


def test_cli_override_errors_are_blamed_on_the_command_line(recipe_file, base):
    with pytest.raises(RecipeError) as exc:
        parse_recipe("sft", ["--config", recipe_file(base()), "--max_length", "-3"])
    assert exc.value.source == "command line" and exc.value.key == "max_length"


def test_yaml_syntax_error_gives_file_and_line(recipe_file, base, capsys):
    path = recipe_file(base("datasets: [unclosed\n"))
    assert main(["sft", "--config", path]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}:" in err and "invalid YAML" in err


def test_missing_recipe_file(capsys):
    assert main(["sft", "--config", "recipes/none/sft/missing.yaml"]) == 2
    assert "recipes/none/sft/missing.yaml: no such recipe file" in capsys.readouterr().err


def test_recipe_in_another_stage_folder_is_refused(recipe_file, base, capsys):
    path = recipe_file(base(), stage="tiny-model")
    assert main(["sft", "--config", path]) == 2
    assert "is a 'tiny-model' recipe" in capsys.readouterr().err


def test_assistant_only_loss_needs_generation_markers(recipe_file, base, tmp_path, capsys):
    plain = tmp_path / "plain.jinja"
    plain.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    path = recipe_file(base(f"chat_template_path: {plain}\n"))
    assert main(["sft", "--config", path]) == 2
    assert "generation" in capsys.readouterr().err
    # without assistant-only loss the same template is fine
    recipe = parse_recipe("sft", ["--config", path, "--assistant_only_loss", "false"])
    assert recipe.chat_template_path == str(plain)


def test_finished_output_dir_is_not_overwritten_silently(recipe_file, base, tmp_path):
    (tmp_path / "out").mkdir()
    path = recipe_file(base())
    with pytest.raises(RecipeError, match="overwrite_output_dir"):
        parse_recipe("sft", ["--config", path])
    assert parse_recipe("sft", ["--config", path, "--overwrite_output_dir", "true"]).overwrite_output_dir


def test_unknown_command_suggests(capsys):
    assert main(["stf"]) == 2
    assert "did you mean 'sft'" in capsys.readouterr().err


def test_every_field_has_help():
    import dataclasses

    for stage, cls in configs.RECIPES.items():
        for f in dataclasses.fields(cls):
            if f.init:
                assert f.metadata.get("help"), f"{stage}: {f.name} has no help"
    for cls in (DatasetSource, configs.PipelineStep):
        assert all(f.metadata.get("help") for f in dataclasses.fields(cls))


def test_stage_help_lists_keys(capsys):
    assert main(["sft", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--assistant_only_loss" in out and "--datasets" in out and "--use_peft" in out


def test_list_keys_take_json_on_the_command_line(recipe_file, base, tmp_path):
    path = recipe_file(base())
    more = tmp_path / "more.jsonl"
    more.write_text(Path(CHAT).read_text(encoding="utf-8").splitlines()[0] + "\n", encoding="utf-8")
    entries = json.dumps([{"path": CHAT, "weight": 2}, str(more)])
    recipe = parse_recipe(
        "sft", ["--config", path, "--datasets", entries, "--lora_target_modules", '["q_proj", "v_proj"]']
    )
    assert recipe.datasets == [DatasetSource(path=CHAT, weight=2), DatasetSource(path=str(more))]
    assert recipe.lora_target_modules == ["q_proj", "v_proj"]
    spaced = parse_recipe("sft", ["--config", path, "--lora_target_modules", "q_proj", "v_proj"])
    assert spaced.lora_target_modules == ["q_proj", "v_proj"]  # space-separated values still work
    resolved = resolved_recipe(recipe)
    assert resolved["datasets"] == [{"path": CHAT, "weight": 2}, {"path": str(more)}]
    with pytest.raises(RecipeError, match="invalid JSON list"):
        parse_recipe("sft", ["--config", path, "--datasets", '[{"path": '])


def test_secret_keys_are_filtered_by_name_not_by_substring(recipe_file, base):
    recipe = parse_recipe("sft", ["--config", recipe_file(base("hub_token: hf_x\n")), "--max_length", "64"])
    resolved = resolved_recipe(recipe)
    assert "hub_token" not in resolved and resolved["max_length"] == 64
    assert is_secret("hub_token") and not is_secret("tokens_per_block")
    assert not any(
        is_secret(k) for k in ("max_new_tokens", "chunk_tokens", "tokenizer_name_or_path", "pad_token", "eos_token")
    )


def test_texts_a_benchmark_script_builds_are_produced_paths(tmp_path):
    """benchmarks/data/ is built by scripts such as benchmarks/smollm2.py: `validate` accepts a recipe that reads it
    before it exists (as it does outputs/); running the stage names the script to run first."""
    from llm4all_recipes.errors import RecipeError
    from llm4all_recipes.paths import check_path

    missing = "benchmarks/data/nowhere-in-this-checkout/train.jsonl"
    check_path(missing, "datasets[0].path", static=True, hub_ok=True)  # validate: fine
    with pytest.raises(RecipeError, match="produced by a benchmark script"):
        check_path(missing, "datasets[0].path", static=False, hub_ok=True)
    with pytest.raises(RecipeError, match=r"no such file or folder: benchmarks/nowhere/x\.jsonl$"):
        check_path("benchmarks/nowhere/x.jsonl", "datasets[0].path", static=True)  # only benchmarks/data/


def test_merge_refuses_to_write_over_its_input_model(tmp_path, capsys):
    """`merge --models A B --output_dir A --overwrite_output_dir true` used to replace input A silently."""
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        save_file({"w": torch.ones(2)}, folder / "model.safetensors")
    rc = main(
        [
            "merge",
            "--config",
            "recipes/tiny-llama/merge/wise-ft.yaml",
            "--models",
            json.dumps([str(a), str(b)]),
            "--weights",
            "[0.5, 0.5]",
            "--output_dir",
            str(a),
            "--overwrite_output_dir",
            "true",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "output_dir" in err and "is the input `models`" in err, err
    assert (a / "config.json").read_text() == "{}" and load_file(a / "model.safetensors")["w"].tolist() == [
        1,
        1,
    ]


@pytest.mark.parametrize("key", ["model_name_or_path", "datasets"])
def test_output_dir_may_not_hold_an_input(recipe_file, base, model_dir, tmp_path, key):
    data = tmp_path / "out" / "data.jsonl"
    data.parent.mkdir()
    data.write_text(Path(CHAT).read_text())
    args = {
        "model_name_or_path": ["--output_dir", str(model_dir)],
        "datasets": ["--datasets", json.dumps([str(data)])],
    }[key]
    with pytest.raises(RecipeError, match=f"the input `{key}`") as err:
        parse_recipe("sft", ["--config", recipe_file(base()), *args, "--overwrite_output_dir", "true"])
    assert err.value.key == "output_dir"
    assert data.is_file()


def test_a_command_line_key_is_never_abbreviated(capsys):
    """argparse's prefix matching used to take `--rat 0.5` as `--ratio 0.5`."""
    rc = main(
        ["compress", "--config", "recipes/tiny-llama/compress/whitening-60.yaml", "--rat", "0.5", "--dry_run", "true"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.strip() == "error: command line: key 'rat': unknown key (did you mean 'ratio'?)"


@pytest.fixture
def small_llama(tmp_path):
    """A real checkpoint (random weights) whose config says 1,024 positions: only its config is read here."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=32,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path / "small")
    return tmp_path / "small"


@pytest.mark.parametrize("stage", ["sft", "kd", "cpt"])
def test_max_length_beyond_the_model_context_is_refused(stage, small_llama, tmp_path, capsys):
    """`--max_length 1000000000` used to be accepted (then blamed on `datasets`)."""
    recipe = {
        "sft": "recipes/tiny-llama/sft/chat.yaml",
        "kd": "recipes/tiny-llama/kd/heal.yaml",
        "cpt": "recipes/tiny-llama/cpt/naive.yaml",
    }[stage]
    extra = ["--teacher_model_name_or_path", str(small_llama)] if stage == "kd" else []
    rc = main(
        [
            stage,
            "--config",
            recipe,
            "--model_name_or_path",
            str(small_llama),
            *extra,
            "--max_length",
            "1000000000",
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "key 'max_length': 1,000,000,000 tokens is beyond the model's context" in err, err
    assert "max_position_embeddings is 1,024" in err and not (tmp_path / "out").exists()


@pytest.mark.parametrize("steps", ["-7", "0"])
def test_max_steps_must_be_positive_or_minus_one(steps, small_llama, capsys):
    """`cpt --max_steps -7` used to train by epochs silently."""
    rc = main(
        [
            "cpt",
            "--config",
            "recipes/tiny-llama/cpt/naive.yaml",
            "--model_name_or_path",
            str(small_llama),
            "--max_steps",
            steps,
            "--dry_run",
            "true",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "key 'max_steps'" in err and f"got {steps}" in err, err


def test_max_new_tokens_beyond_the_model_context_is_refused(small_llama, tmp_path, capsys):
    """`generate --max_new_tokens 1000000000` used to be reported as a `prompt` problem."""
    rc = main(
        [
            "generate",
            "--config",
            "recipes/tiny-llama/generate/samu-next-turns.yaml",
            "--model_name_or_path",
            str(small_llama),
            "--max_new_tokens",
            "1000000000",
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "key 'max_new_tokens': 1,000,000,000 tokens is beyond" in err, err


def test_a_wrong_list_item_names_the_allowed_values(tmp_path, small_llama, capsys):
    """`axes: [width]` used to say "expected list, got [...] (list)" without the allowed values."""
    path = tmp_path / "prune.yaml"
    path.write_text(
        f"model_name_or_path: {small_llama}\nratio: 0.2\naxes: [mlp, width]\n"
        f"output_dir: {tmp_path / 'out'}\ndatasets:\n  - path: tests/fixtures/text/old_train.jsonl\n"
    )
    assert main(["prune", "--config", str(path), "--dry_run", "true"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {path}:3: key 'axes': item 1: 'width' is not one of: mlp, heads, embedding, depth"
    )


@pytest.mark.parametrize("stage", ["sft", "kd", "cpt"])
def test_a_speech_model_given_to_a_text_training_stage_is_named(stage, tiny_whisper, tmp_path, capsys):
    """A Whisper model given to sft used to fail with an AttributeError deep in the forward (or be reported as a
    chat-template problem)."""
    recipe = {
        "sft": "recipes/tiny-llama/sft/chat.yaml",
        "kd": "recipes/tiny-llama/kd/heal.yaml",
        "cpt": "recipes/tiny-llama/cpt/naive.yaml",
    }[stage]
    extra = ["--teacher_model_name_or_path", str(tiny_whisper)] if stage == "kd" else []
    rc = main(
        [
            stage,
            "--config",
            recipe,
            "--model_name_or_path",
            str(tiny_whisper),
            *extra,
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and f"key 'model_name_or_path': {tiny_whisper} is a speech model (Whisper)" in err, err


def test_a_speech_recipe_given_a_text_model_is_refused(small_llama, tmp_path, capsys):
    """recipes/tiny-whisper/compress with a text model used to calibrate on the transcripts and write a model."""
    rc = main(
        [
            "compress",
            "--config",
            "recipes/tiny-whisper/compress/whitening-40.yaml",
            "--model_name_or_path",
            str(small_llama),
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "key 'datasets[0]': tests/fixtures/speech/train.jsonl holds recordings" in err, err
    assert not (tmp_path / "out").exists()


def test_a_text_recipe_given_a_speech_model_is_refused(tiny_whisper, tmp_path, capsys):
    rc = main(
        [
            "compress",
            "--config",
            "recipes/tiny-llama/compress/whitening-60.yaml",
            "--model_name_or_path",
            str(tiny_whisper),
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "is a speech model but tests/fixtures/text/old_train.jsonl has no `audio` column" in err, err
