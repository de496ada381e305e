"""The real-model recipe folders, without downloads: each is sized against its base's published config.json
(tests/fixtures/configs) — parameter counts, rank maps, memory/time tables of its README recomputed — and every
launch line of its README runs, on a tiny random model of the same family (`tiny.shrink_config`), with the Hub
datasets swapped for the fixtures and the sizes shrunk (max_steps 1)."""

import contextlib
import io
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm4all_recipes.cli import main
from llm4all_recipes.estimate import main as estimate
from llm4all_recipes.tiny import shrink_config

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "tests" / "fixtures" / "configs"
TEXT = REPO / "tests" / "fixtures" / "text"
# every recipe folder whose base has a config fixture of the same name
FOLDERS = sorted(p.parent.name for p in (REPO / "recipes").glob("*/README.md") if (CONFIGS / p.parent.name).is_dir())
# published parameter counts (model cards / safetensors index) of the bases we can check exactly
PARAMETERS = {
    "llama-3.1-8b-instruct": 8_030_261_248,
    "llama-3.2-1b": 1_235_814_400,
    "mistral-7b-instruct-v0.3": 7_248_023_552,
    "qwen2.5-1.5b-instruct": 1_543_714_304,
    "smollm2-135m": 134_515_008,  # the GGUF copy benchmarks/smollm2.py converts has exactly this many
}


def test_every_base_config_fixture_has_a_recipe_folder():
    families = {
        "qwen3-1.7b",
        "gemma-2-2b-it",
        "gemma-3-1b-it",
        "phi-3-mini-4k-instruct",
        "whisper-large-v3-turbo",  # the speech-text folder's encoder (its tests below)
    }  # test_architectures only
    assert set(FOLDERS) == {p.name for p in CONFIGS.iterdir() if p.is_dir()} - families
    assert len(FOLDERS) >= 6


def _estimate(folder: str, *flags: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert estimate([f"recipes/{folder}", *flags, "--base_config", str(CONFIGS / folder)]) == 0
    return out.getvalue().strip()


@pytest.mark.parametrize("folder", FOLDERS)
def test_readme_estimates_are_what_the_package_computes(folder):
    readme = (REPO / "recipes" / folder / "README.md").read_text()
    blocks = re.findall(r"<!-- estimate: (.*?) -->\n(.*?)\n<!-- end estimate -->", readme, re.S)
    assert [flags for flags, _ in blocks] == ["--gpus 1", "--gpus 8"]
    for flags, table in blocks:
        assert table == _estimate(folder, *flags.split()), (
            f"recipes/{folder}/README.md is stale: llm4all estimate recipes/{folder} --base_config "
            f"tests/fixtures/configs/{folder} --write-readme"
        )
    one = blocks[0][1]
    # the lineage is followed: kd trains the low-rank 20 % student its feature-distill step heals
    kd = next(line for line in one.splitlines() if "/kd/" in line).split("|")
    student = yaml.safe_load((REPO / kd[1].strip(" `")).read_text())["model_name_or_path"]
    start = yaml.safe_load((REPO / "recipes" / Path(student).relative_to("outputs")).with_suffix(".yaml").read_text())
    compress20 = next(line for line in one.splitlines() if f"{start['model_name_or_path'][8:]}.yaml` |" in line)
    compress20 = compress20.split("|")
    assert kd[3] == compress20[3] and "effective batch 16 × " in kd[8]


@pytest.mark.parametrize("folder", FOLDERS)
def test_compress_dry_run_against_the_published_config(folder, capsys):
    """Rank map and sizes from config.json alone (uniform ranks, as every real-model recipe now allocates)."""
    # the offline folders' own texts are not built in CI: fixture text for all
    text = [json.dumps([str(TEXT / f"old_{split}.jsonl")]) for split in ("train", "eval")]
    argv = [
        "compress",
        "--config",
        f"recipes/{folder}/compress/whitening-20.yaml",
        "--model_name_or_path",
        str(CONFIGS / folder),
        "--dry_run",
        "true",
        "--rank_allocation",
        "uniform",
        "--datasets",
        text[0],
        "--eval_datasets",
        text[1],
    ]
    rc = main(argv)
    out = capsys.readouterr().out
    assert rc == 0
    ranks = [int(r) for r in re.findall(r" rank (\d+)$", out, re.M)]
    config = json.loads((CONFIGS / folder / "config.json").read_text())
    multiple = yaml.safe_load((REPO / "recipes" / folder / "compress" / "whitening-20.yaml").read_text())[
        "rank_multiple"
    ]
    assert len(ranks) == 7 * config["num_hidden_layers"] and all(r % multiple == 0 for r in ranks)
    achieved = float(re.search(r"ratio ([\d.]+), target 0.2\)", out).group(1))
    assert 0.2 <= achieved < 0.21  # multiples of 64, topped up: never below the target
    before = int(re.search(r"# model: ([\d,]+) ->", out).group(1).replace(",", ""))
    if folder in PARAMETERS:
        assert before == PARAMETERS[folder]
    assert "# memory: peak" in out


# --------------------------------------------------------------------------- the README's launch lines
SWAP = {  # Hub datasets of the real recipes -> fixture text
    "HuggingFaceFW/fineweb-2": {"train": TEXT / "new_train.jsonl", "test": TEXT / "new_eval.jsonl"},
    "HuggingFaceFW/fineweb-edu": {"train": TEXT / "old_train.jsonl"},
    "Salesforce/wikitext": {"test": TEXT / "old_eval.jsonl"},
    # the offline texts of recipes/smollm2-135m (benchmarks/smollm2.py)
    **{
        f"benchmarks/data/smollm2/{lang}/{split}.jsonl": {"train": TEXT / f"{domain}_{fixture}.jsonl"}
        for lang, domain in (("en", "old"), ("fr", "new"))
        for split, fixture in (("train", "train"), ("validation", "eval"), ("test", "eval"))
    },
}
SMALL = {
    "num_calibration_samples": 8,
    "calibration_seq_len": 64,
    "calibration_batch_size": 4,
    "num_holdout_samples": 4,
    "tokens_per_block": 1024,
    "perplexity_max_length": 64,
    "rank_multiple": 4,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "batch_size": 4,
    "max_generations": 1,
    "max_new_tokens": 4,
    "eval_every": 4,
    "dtype": "float32",
}  # bf16 is slow on CPUs; its paths have their own tests


def shrink(recipe: dict, tiny: str, hub_id: str, teachers: tuple[str, ...] = ()) -> dict:
    """`teachers`: Hub models of another folder that a step of this one runs (the shared meeting-summary teacher)."""
    for key in ("model_name_or_path", "teacher_model_name_or_path", "tokenizer_name_or_path"):
        if recipe.get(key) == hub_id or recipe.get(key) in teachers:
            recipe[key] = tiny
    for key in ("datasets", "eval_datasets", "replay_datasets", "perplexity_datasets"):
        for source in recipe.get(key) or []:
            if source["path"] in SWAP:
                source.update(path=str(SWAP[source["path"]][source.get("split", "train")]), split="train")
                for k in ("name", "streaming", "max_rows"):
                    source.pop(k, None)
                if key != "datasets" and key != "replay_datasets":
                    source["max_rows"] = 3  # held-out text: a few documents
    recipe.update({k: v for k, v in SMALL.items() if k in recipe})
    explicit = [
        k for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads") if k in recipe
    ]
    if explicit:  # prune: the real sizes exceed the tiny model's (they are checked against the real config elsewhere)
        for k in explicit:
            recipe.pop(k)
        recipe["ratio"] = 0.4
    if "max_length" in recipe:
        # chats: long enough for the fixture meetings in the tiny tokenizer (the demo's 2048)
        recipe["max_length"] = min(recipe["max_length"], 2048) if "chat_template_path" in recipe else 128
    if "num_train_epochs" in recipe or "max_steps" in recipe:
        recipe.pop("num_train_epochs", None)
        recipe["max_steps"] = 1
    if "save_steps" in recipe:
        recipe["save_steps"] = 1
    # the dataset recipes: the fixture calls and meetings (same layouts, fewer rows)
    for hub, fixture in (("medkit/simsamu", "simsamu.yaml"), ("linagora/SUMM-RE", "summre-transcripts.yaml")):
        if recipe.get("source") == hub:
            fixture = yaml.safe_load((REPO / "recipes" / "datasets" / fixture).read_text())
            recipe.update(source=str(REPO / fixture["source"]), splits=fixture["splits"])
    if isinstance(recipe.get("source"), str) and (REPO / recipe["source"]).exists():  # offline recipes: fixtures
        recipe["source"] = str(REPO / recipe["source"])
    if "dataset" in recipe:  # generate: the toy writes no structured fiche, seldom ends, reads little
        # (sampled: a random stand-in's greedy answer can be blank lines; its words are no French)
        recipe.update(
            required_fields=[],
            min_words=1,
            drop_truncated=False,
            max_new_tokens=8,
            context_length=512,
            chunk_tokens=128,
            chunk_overlap=16,
            do_sample=True,
            temperature=1.0,
            top_p=1.0,
            french_only=False,
        )
    return recipe


def launch_lines(folder: str) -> list[str]:
    readme = (REPO / "recipes" / folder / "README.md").read_text()
    block = re.search(r"## Launch\n\n```bash\n(.*?)```", readme, re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def as_stage_argv(line: str) -> tuple[str, list[str]]:
    """(launcher, llm4all argv) of a launch line; the launcher's own files are checked here."""
    words = shlex.split(line)
    if words[0] == "llm4all":
        return "llm4all", words[1:]
    if words[:2] == ["accelerate", "launch"]:
        config = words[words.index("--config_file") + 1]
        assert Path(config).is_file() and yaml.safe_load(Path(config).read_text())["distributed_type"]
        return "accelerate", words[words.index("-m") + 2 :]
    if words[0] == "sbatch":
        script = next(w for w in words if w.endswith(".slurm"))
        stage, recipe, config = words[words.index(script) + 1 : words.index(script) + 4]
        assert Path(script).is_file() and Path(recipe).is_file() and Path(config).is_file()
        return "sbatch", [stage, "--config", recipe]
    raise AssertionError(f"unknown launcher: {line}")


@pytest.mark.parametrize("folder", FOLDERS)
def test_readme_launch_lines_run_on_a_tiny_model_of_the_family(folder, tiny_model, tmp_path, monkeypatch):
    lines = launch_lines(folder)
    assert lines[0] == f"llm4all pipeline --config recipes/{folder}/pipeline.yaml"
    # a repository-shaped folder: the recipes (shrunk, on a tiny model of the family) and the accelerate configs
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    torch.manual_seed(0)
    config = json.loads((CONFIGS / folder / "config.json").read_text())
    tiny = tmp_path / "tiny-base"
    stand_in = AutoModelForCausalLM.from_config(shrink_config(config, tokenizer))
    # a random model may end at once: the `generate` steps (the teacher's summaries) need some text
    stand_in.generation_config.suppress_tokens = tokenizer.all_special_ids
    stand_in.save_pretrained(tiny)
    tokenizer.save_pretrained(tiny)
    # the base the folder starts from: compress's model, or what its convert step reads (pickle weights on the Hub)
    converts = sorted((REPO / "recipes" / folder / "convert").glob("*.yaml"))
    first = converts[0] if converts else REPO / "recipes" / folder / "compress" / "whitening-20.yaml"
    hub_id = yaml.safe_load(first.read_text())["model_name_or_path"]
    if converts:  # the tiny stand-in has pickle weights only, as the Hub's main branch
        from safetensors.torch import load_file

        torch.save(load_file(tiny / "model.safetensors"), tiny / "pytorch_model.bin")
        (tiny / "model.safetensors").unlink()
    root = tmp_path / "repo"
    shutil.copytree(REPO / "recipes" / "accelerate_configs", root / "recipes" / "accelerate_configs")
    shutil.copy(REPO / "recipes" / "launch.slurm", root / "recipes" / "launch.slurm")
    pipeline = yaml.safe_load((REPO / "recipes" / folder / "pipeline.yaml").read_text())["steps"]
    # the folder's steps read recipes of their own folder, dataset recipes, or a shared step of another folder
    # (the 8B teacher's meeting summaries), whose Hub model becomes the tiny one too
    elsewhere = {REPO / step["recipe"] for step in pipeline if not step["recipe"].startswith(f"recipes/{folder}/")}
    teachers = tuple(m for p in elsewhere if (m := yaml.safe_load(p.read_text()).get("model_name_or_path")))
    for src in [
        *(REPO / "recipes" / folder).rglob("*.yaml"),
        *{*(REPO / "recipes" / "datasets").glob("*-hub*.yaml"), *elsewhere},
    ]:
        dst = root / src.relative_to(REPO)
        dst.parent.mkdir(parents=True, exist_ok=True)
        recipe = yaml.safe_load(src.read_text())
        dst.write_text(
            yaml.safe_dump(recipe if src.name == "pipeline.yaml" else shrink(recipe, str(tiny), hub_id, teachers))
        )
    monkeypatch.chdir(root)

    # step by step (one GPU), then the pipeline (every step is found finished), then the multi-GPU lines
    ran = []
    for line in [*lines[1:], lines[0]]:
        launcher, argv = as_stage_argv(line)
        if launcher != "llm4all":  # the same stage and recipe as a one-GPU line already run: checked, not rerun
            argv = [*argv, "--dry_run", "true"]
        assert main(argv) == 0, line
        ran.append(argv[0])
    cached = (REPO / "recipes" / folder / "cache-teacher").is_dir()  # kd from a teacher cache, or online
    # sft: simsamu and meetings (on the teacher's summaries: generate, where the model's context holds a meeting),
    # + the 8-GPU line
    meetings = any("sft/meetings.yaml" in line for line in lines)
    assert meetings or folder == "croissantllm-base"
    assert ran.count("sft") == sum(" sft " in f" {line} " for line in lines[1:]) and {
        *(["generate"] if folder != "smollm2-135m" and meetings else []),
        "compress",
        "feature-distill",
        *(["cache-teacher"] if cached else []),
        "kd",
        "cpt",
        "eval",
        "pipeline",
    } <= set(ran)
    out = root / "outputs" / folder
    evaluated = json.loads((out / "eval" / "simsamu" / "metrics.json").read_text())
    assert evaluated["simsamu"]["generations"] == 1
    lineage = json.loads((out / "sft" / "simsamu" / "lineage.json").read_text())["stages"]
    assert [step["stage"] for step in lineage] == [
        "base",
        *(["convert"] if converts else []),
        "compress",
        "feature-distill",
        "kd",
        "cpt",
        "sft",
    ]
    student = json.loads((out / "kd" / ("heal-cached-20" if cached else "heal-20") / "config.json").read_text())
    assert student["model_type"] == "llm4all_lowrank" and student["base_config"]["model_type"] == config["model_type"]


# --------------------------------------------------------------------------- the speech-text folder
SPEECH = "lucie-7b-instruct-speech"
SPEECH_PARTS = {  # the folder's two Hub models -> the config fixtures that size them
    "OpenLLM-France/Lucie-7B-Instruct": CONFIGS / "lucie-7b-instruct",
    "openai/whisper-large-v3-turbo": CONFIGS / "whisper-large-v3-turbo",
}


def test_speech_folder_estimates_are_what_the_package_computes():
    readme = (REPO / "recipes" / SPEECH / "README.md").read_text()
    blocks = re.findall(r"<!-- estimate: (.*?) -->\n(.*?)\n<!-- end estimate -->", readme, re.S)
    assert [flags for flags, _ in blocks] == ["--gpus 1", "--gpus 8 --shard false"]
    parts = [f for hub, path in SPEECH_PARTS.items() for f in ("--base_config", f"{hub}={path}")]
    for flags, table in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert estimate([f"recipes/{SPEECH}", *flags.split(), *parts]) == 0
        assert table == out.getvalue().strip(), f"recipes/{SPEECH}/README.md is stale: see its Hardware section"
    one = blocks[0][1]
    # whisper-large-v3-turbo's encoder (published total 809M, decoder included) + projector + Lucie-7B (6.71B)
    stage1 = next(line for line in one.splitlines() if "speech-sft/simsamu.yaml" in line).split("|")
    assert stage1[3].strip() == "7.38 B" and stage1[4].strip() == "37.8 M" and "encoder 637.0 M frozen" in stage1[8]
    stage2 = next(line for line in one.splitlines() if "simsamu-lora.yaml" in line).split("|")
    assert stage2[3] == stage1[3] and float(stage2[4].split()[0]) > 37.8  # + LoRA, on the same model
    from llm4all_recipes.errors import RecipeError

    with pytest.raises(RecipeError, match="at most one --base_config DIR"):
        estimate([f"recipes/{SPEECH}", "--base_config", "a", "--base_config", "b"])
    swapped = ["--base_config", f"openai/whisper-large-v3-turbo={SPEECH_PARTS['OpenLLM-France/Lucie-7B-Instruct']}"]
    with pytest.raises(RecipeError, match="is a llama, not a Whisper"):
        estimate([f"recipes/{SPEECH}", *parts[:2], *swapped])


def test_speech_folder_launch_lines_run_on_a_tiny_whisper_and_llama(tiny_model, tiny_whisper, tmp_path, monkeypatch):
    """Every launch line of the speech folder, with the tiny Whisper and the tiny Llama in place of the two Hub
    models and the two fixture calls in place of medkit/simsamu (one trains, one is held out)."""
    lines = launch_lines(SPEECH)
    assert lines[0] == f"llm4all pipeline --config recipes/{SPEECH}/pipeline.yaml"
    swap = {"OpenLLM-France/Lucie-7B-Instruct": str(tiny_model), "openai/whisper-large-v3-turbo": str(tiny_whisper)}
    root = tmp_path / "repo"
    shutil.copytree(REPO / "recipes" / "accelerate_configs", root / "recipes" / "accelerate_configs")
    for src in (REPO / "recipes" / SPEECH).rglob("*.yaml"):
        recipe = yaml.safe_load(src.read_text())
        if src.name != "pipeline.yaml":
            for key in ("model_name_or_path", "audio_encoder", "cascade_asr", "cascade_lm"):
                if recipe.get(key) in swap:
                    recipe[key] = swap[recipe[key]]
            if recipe.get("source") == "medkit/simsamu":
                recipe.update(source=str(REPO / "tests" / "fixtures" / "simsamu-audio"))
                recipe.update(splits={"train": 0.5, "validation": 0.5})
            if recipe.get("speech_split") == "test":
                recipe["speech_split"] = "validation"
            recipe.update({k: v for k, v in SMALL.items() if k in recipe})
            recipe.pop("num_train_epochs", None)
            if "max_length" in recipe:
                recipe.update(max_length=512, max_steps=1, save_steps=1, per_device_train_batch_size=2)
            if "max_generations" in recipe:
                recipe.update(max_generations=1, max_new_tokens=4, dtype="float32")
            recipe.update({k: "float32" for k in ("dtype",) if k in recipe})
        dst = root / src.relative_to(REPO)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_text(yaml.safe_dump(recipe))
    monkeypatch.chdir(root)
    ran = []
    for line in [*lines[1:], lines[0]]:
        launcher, argv = as_stage_argv(line)
        if launcher != "llm4all":
            argv = [*argv, "--dry_run", "true"]
        assert main(argv) == 0, line
        ran.append(argv[0])
    assert ran == ["speech-sft", "speech-sft", "eval", "speech-sft", "pipeline"]
    out = root / "outputs" / SPEECH
    lineage = json.loads((out / "speech-sft" / "simsamu-lora" / "lineage.json").read_text())["stages"]
    assert [step["stage"] for step in lineage][-2:] == ["speech-sft", "speech-sft"]  # after the LM's own (tiny-model)
    config = json.loads((out / "speech-sft" / "simsamu-lora" / "config.json").read_text())
    assert config["model_type"] == "llm4all_speech_llm" and config["stack_factor"] == 4
    metrics = json.loads((out / "eval" / "simsamu" / "metrics.json").read_text())
    assert {row["metric"] for row in metrics["comparison"]} >= {"wer", "perplexity"}
    assert metrics["speech"]["cascade"]["next_turn"]["rows"] == metrics["speech"]["speech-llm"]["next_turn"]["rows"]


def test_prune_dry_run_gives_minitron_4b_width_from_llama_3_1_8b(capsys):
    """NVIDIA's Llama-3.1-Minitron-4B-Width shapes from the 8B's published config: 4.5B parameters."""
    rc = main(
        [
            "prune",
            "--config",
            "recipes/llama-3.1-8b-instruct/prune/minitron-width.yaml",
            "--model_name_or_path",
            str(CONFIGS / "llama-3.1-8b-instruct"),
            "--dry_run",
            "true",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert re.search(r"hidden_size +4096 -> 3072", out) and re.search(r"intermediate_size +14336 -> 9216", out)
    assert "# model: 8,030,261,248 -> 4,512,746,496 parameters (43.8% removed" in out


MESSAGES = [
    {"role": "system", "content": "Tu es le SAMU."},
    {"role": "user", "content": "Bonjour"},
    {"role": "assistant", "content": "SAMU, j'écoute."},
]


@pytest.mark.parametrize(
    "name, rendered",
    [
        (
            "llama3",
            "<s><|start_header_id|>system<|end_header_id|>\n\nTu es le SAMU.<|eot_id|><|start_header_id|>user"
            "<|end_header_id|>\n\nBonjour<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
            "SAMU, j'écoute.<|eot_id|>",
        ),
        ("mistral", "<s>[INST] Tu es le SAMU.\n\nBonjour[/INST] SAMU, j'écoute.</s>"),
    ],
)
def test_shipped_chat_templates_write_the_models_format_with_generation_markers(name, rendered):
    """The recipe folders' templates: the Llama-3 / Lucie-Instruct header format and Mistral v0.3's [INST] format
    for plain conversations, with the assistant answer (and its end token) as the only trained span."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from llm4all_recipes.configs import read_chat_template

    template = read_chat_template(name)
    out, spans = render_jinja_template(
        conversations=[MESSAGES],
        chat_template=template,
        bos_token="<s>",
        eos_token="</s>",
        return_assistant_tokens_mask=True,
    )
    assert out == [rendered]
    assert [out[0][a:b] for a, b in spans[0]] == [rendered[rendered.rindex("SAMU, j'") :]]
    # the regulator speaks first (no user turn yet): the prompt still carries the system message
    prompt, _ = render_jinja_template(
        conversations=[MESSAGES[:1]],
        chat_template=template,
        bos_token="<s>",
        eos_token="</s>",
        add_generation_prompt=True,
    )
    assert "Tu es le SAMU." in prompt[0]


@pytest.mark.parametrize("folder", FOLDERS)
def test_every_step_of_the_one_gpu_pipeline_fits_one_gpu(folder):
    """The README's `llm4all pipeline` line runs every step on one GPU: each step's one-GPU estimate must fit
    (the 8B cpt step was 82.7 GiB on an 80 GB card)."""
    readme = (REPO / "recipes" / folder / "README.md").read_text()
    one_gpu = re.search(r"<!-- estimate: --gpus 1 -->\n(.*?)\n<!-- end estimate -->", readme, re.S).group(1)
    steps = yaml.safe_load((REPO / "recipes" / folder / "pipeline.yaml").read_text())["steps"]
    for step in steps:
        rows = [line for line in one_gpu.splitlines() if line.startswith(f"| `{step['recipe']}` |")]
        assert all("over" not in row for row in rows), rows


def test_mistral_template_gives_every_answer_an_instruction_when_the_assistant_speaks_first():
    """A SAMU call opens with the regulator (assistant): it used to be rendered as an answer right after <s>, an
    order Mistral's own template refuses; now an [INST] block (with the system message) opens the conversation and
    [INST] / answer alternate as Mistral expects."""
    from transformers.utils.chat_template_utils import render_jinja_template

    from llm4all_recipes.configs import read_chat_template

    call = [
        MESSAGES[0],
        {"role": "assistant", "content": "SAMU, j'écoute."},
        {"role": "user", "content": "Mon père a fait un malaise."},
        {"role": "assistant", "content": "Il respire ?"},
    ]
    out, spans = render_jinja_template(
        conversations=[call],
        chat_template=read_chat_template("mistral"),
        bos_token="<s>",
        eos_token="</s>",
        return_assistant_tokens_mask=True,
    )
    assert out == [
        "<s>[INST] Tu es le SAMU.[/INST] SAMU, j'écoute.</s>[INST] Mon père a fait un malaise.[/INST] Il respire ?</s>"
    ]
    assert [out[0][a:b] for a, b in spans[0]] == ["SAMU, j'écoute.</s>", "Il respire ?</s>"]
    assert all(out[0][:a].endswith("[/INST] ") for a, _ in spans[0])
