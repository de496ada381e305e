"""The KD stage: KDTrainer (a TRL SFTTrainer subclass) with an online teacher or an offline top-k cache,
healing a compressed student, LoRA students, and bad input."""

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from llm4all_recipes.cli import main
from llm4all_recipes.models import load_model, load_tokenizer
from llm4all_recipes.parsing import parse_recipe
from llm4all_recipes.trainers.kd import CachedTeacherCollator, KDTrainer, TeacherCache
from llm4all_recipes.training import make_trainer

HEAL = "recipes/tiny-llama/kd/heal.yaml"


@pytest.fixture(scope="module")
def small_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("kd") / "small.jsonl"
    with open("tests/fixtures/text/old_eval.jsonl", encoding="utf-8") as f:
        path.write_text("".join(f.readlines()[:3]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def exact_cache(tiny_model, small_text, tmp_path_factory):
    """A cache with k = vocabulary size, in float32: the cached loss must equal the online one."""
    out = tmp_path_factory.mktemp("cache") / "exact"
    argv = [
        "--config",
        "recipes/tiny-llama/cache-teacher/base.yaml",
        "--teacher_model_name_or_path",
        str(tiny_model),
        "--output_dir",
        str(out),
        "--datasets",
        str(small_text),
        "--max_length",
        "64",
        "--top_k",
        "2048",
        "--cache_dtype",
        "float32",
        "--kd_temperature",
        "2.0",
        "--shard_rows",
        "8",
    ]
    assert main(["cache-teacher", *argv]) == 0
    return out


def test_cache_layout_and_fingerprint(exact_cache, tiny_model):
    meta = json.loads((exact_cache / "fingerprint.json").read_text())
    assert meta["top_k"] == 2048 and meta["temperature"] == 2.0 and meta["max_length"] == 64
    shards = sorted(p.name for p in (exact_cache / "topk").iterdir())
    assert len(shards) == 2 * -(-meta["rows"] // 8) and shards[0] == "indices-00000.npy"
    report = json.loads((exact_cache / "metrics.json").read_text())
    assert report["mean_topk_mass"] == pytest.approx(1.0, abs=1e-4)  # k = V holds all the mass
    assert report["rows"] == meta["rows"] and report["dropped_tail_tokens"] < 64


def test_cached_loss_equals_online_loss_when_k_is_the_vocabulary(exact_cache, tiny_model, tmp_path):
    student, teacher = load_model(str(tiny_model)), load_model(str(tiny_model))
    torch.manual_seed(0)
    with torch.no_grad():  # a student that differs from its teacher
        for p in student.parameters():
            p.add_(0.02 * torch.randn_like(p))
    tokenizer = load_tokenizer(str(tiny_model))
    cache = TeacherCache(exact_cache)
    from datasets import load_from_disk

    rows = load_from_disk(str(exact_cache / "data"))
    recipe_path = tmp_path / "recipes" / "m" / "kd" / "k.yaml"
    recipe_path.parent.mkdir(parents=True)
    recipe_path.write_text(
        f"model_name_or_path: {tiny_model}\nteacher_cache: {exact_cache}\noutput_dir: {tmp_path / 'o'}\n"
        "kd_temperature: 2.0\nmax_length: 64\nper_device_train_batch_size: 4\n"
    )
    recipe = parse_recipe("kd", ["--config", str(recipe_path)])
    recipe.packing, recipe.remove_unused_columns, recipe.dataset_kwargs = (
        False,
        False,
        {"skip_prepare_dataset": True},
    )
    features = [rows[i] for i in range(4)]
    for loss in ("forward_kl", "reverse_kl", "jsd"):
        trainer = make_trainer(
            recipe,
            tmp_path / "o.tmp",
            model=student,
            tokenizer=tokenizer,
            train_dataset=rows,
            eval_datasets={},
            trainer_cls=KDTrainer,
            teacher_model=teacher,
            kd_loss=loss,
            kd_temperature=2.0,
            data_collator=CachedTeacherCollator(cache),
        )
        cached = trainer.compute_loss(student, CachedTeacherCollator(cache)(features))
        batch = CachedTeacherCollator(cache)(features)
        del batch["teacher_logprobs"], batch["teacher_indices"]
        online = trainer.compute_loss(student, batch)  # the teacher runs
        assert float(cached.detach()) == pytest.approx(float(online.detach()), abs=1e-5), loss
        assert float(online.detach()) > 1e-3


def test_heal_recovers_the_gap(svd80_distilled, svd80_compressed, tiny_model, tmp_path):
    """heal.yaml (<= 200 steps, fixed seed) on a student >= 1.2x worse than dense recovers >= 30 % of the gap."""
    compressed = json.loads((svd80_compressed / "metrics.json").read_text())
    dense = compressed["eval_before"]["old_eval"]["perplexity"]
    assert compressed["eval"]["old_eval"]["perplexity"] >= 1.2 * dense
    out = tmp_path / "heal"
    argv = [
        "--config",
        HEAL,
        "--model_name_or_path",
        str(svd80_distilled),
        "--teacher_model_name_or_path",
        str(tiny_model),
        "--output_dir",
        str(out),
    ]
    assert main(["kd", *argv]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["global_step"] <= 200
    before, after = (
        metrics["eval_before"]["old_eval"]["perplexity"],
        metrics["eval"]["old_eval"]["perplexity"],
    )
    assert metrics["teacher_eval"]["old_eval"]["perplexity"] == pytest.approx(dense, rel=1e-6)
    assert (before - after) >= 0.3 * (before - dense), (dense, before, after)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llm4all_lowrank"  # a low-rank student stays low-rank
    card = (out / "README.md").read_text()
    assert "### Distillation" in card and "forward_kl" in card and "tokens seen" in card
    # what a stranger reads names no machine path (the lineage records them)
    body = card.split("\n## Lineage")[0]
    assert not [p for p in (str(tiny_model), str(svd80_distilled), str(tmp_path)) if p in body], body


def test_heal_from_a_top_64_cache_also_recovers_the_gap(svd80_distilled, tiny_model, tmp_path):
    """The recipes' cache (k = 64 of 2048, float16, ~60 % of the teacher's mass): heal-cached.yaml must heal
    too. (Dropping the tail instead of keeping it as a category made this student's perplexity explode.)"""
    cache = tmp_path / "cache"
    assert (
        main(
            [
                "cache-teacher",
                "--config",
                "recipes/tiny-llama/cache-teacher/base.yaml",
                "--teacher_model_name_or_path",
                str(tiny_model),
                "--output_dir",
                str(cache),
            ]
        )
        == 0
    )
    out = tmp_path / "heal-cached"
    assert (
        main(
            [
                "kd",
                "--config",
                "recipes/tiny-llama/kd/heal-cached.yaml",
                "--model_name_or_path",
                str(svd80_distilled),
                "--teacher_cache",
                str(cache),
                "--output_dir",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    dense = json.loads((Path(tiny_model) / "metrics.json").read_text())["eval"]["old_eval"]["perplexity"]
    before, after = (metrics[k]["old_eval"]["perplexity"] for k in ("eval_before", "eval"))
    assert (before - after) >= 0.2 * (before - dense), (dense, before, after)
    new_before, new_after = (metrics[k]["new_eval"]["perplexity"] for k in ("eval_before", "eval"))
    assert new_after <= 1.02 * new_before  # the domain the cache did not cover is not wrecked


def test_lora_student_and_cached_teacher(compressed_model, tiny_model, exact_cache, tmp_path):
    out = tmp_path / "lora"
    path = tmp_path / "recipes" / "m" / "kd" / "lora.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(
        f"model_name_or_path: {compressed_model}\nteacher_cache: {exact_cache}\noutput_dir: {out}\n"
        "kd_temperature: 2.0\nmax_length: 64\nper_device_train_batch_size: 4\nmax_steps: 3\n"
        "use_peft: true\nlora_r: 4\nlora_alpha: 8\nlearning_rate: 1.0e-3\nkeep_best: false\n"
        "eval_datasets:\n  - path: tests/fixtures/text/old_eval.jsonl\n"
    )
    # keep_best off: 3 LoRA steps on the toy can end within noise of the start (then the start would be kept
    # and no adapter written); this test is about the LoRA + cached-teacher path
    assert main(["kd", "--config", str(path)]) == 0
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert json.loads((out / "config.json").read_text())["model_type"] == "llm4all_lowrank"
    merged = load_model(str(out))
    assert not any("lora" in n for n, _ in merged.named_parameters())


def _recipe(tmp_path, text):
    path = tmp_path / "recipes" / "m" / "kd" / "bad.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_bad_input(tiny_model, exact_cache, tmp_path, capsys):
    base = (
        f"model_name_or_path: {tiny_model}\noutput_dir: {tmp_path / 'o'}\n"
        "datasets:\n  - path: tests/fixtures/text/old_train.jsonl\n"
    )
    cases = [
        (base + f"teacher_model_name_or_path: {tiny_model}\nkd_temperature: 0\n", "key 'kd_temperature': must be > 0"),
        (
            base + f"teacher_model_name_or_path: {tiny_model}\nkd_loss: jsd\nkd_beta: 1.5\n",
            "key 'kd_beta': must be in [0, 1]",
        ),
        (base, "key 'teacher_model_name_or_path': required"),
        (
            f"model_name_or_path: {tmp_path}\nteacher_model_name_or_path: {tiny_model}\noutput_dir: {tmp_path / 'o'}\n"
            "datasets:\n  - path: tests/fixtures/text/old_train.jsonl\n",
            "is not a loadable checkpoint",
        ),
        (
            f"model_name_or_path: {tiny_model}\nteacher_cache: {exact_cache}\n"
            f"output_dir: {tmp_path / 'o'}\nkd_temperature: 1.0\n",
            "fingerprint mismatch: the cache holds log-probs at temperature 2.0",
        ),
    ]
    for text, message in cases:
        assert main(["kd", "--config", _recipe(tmp_path, text)]) == 2
        err = capsys.readouterr().err
        assert message in err, err
        assert not (tmp_path / "o").exists()


def test_different_tokenizers_are_refused(tiny_model, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    tok = json.loads((other / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = list(vocab)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (other / "tokenizer.json").write_text(json.dumps(tok))
    text = (
        f"model_name_or_path: {tiny_model}\nteacher_model_name_or_path: {other}\noutput_dir: {tmp_path / 'o'}\n"
        "datasets:\n  - path: tests/fixtures/text/old_train.jsonl\n"
    )
    assert main(["kd", "--config", _recipe(tmp_path, text)]) == 2
    assert "different tokenizers" in capsys.readouterr().err


def test_tampered_cache_is_refused(exact_cache, tiny_model, tmp_path, capsys):
    tampered = tmp_path / "cache"
    shutil.copytree(exact_cache, tampered)
    meta = json.loads((tampered / "fingerprint.json").read_text())
    meta["data"] = "0" * 64
    (tampered / "fingerprint.json").write_text(json.dumps(meta))
    text = (
        f"model_name_or_path: {tiny_model}\nteacher_cache: {tampered}\n"
        f"output_dir: {tmp_path / 'o'}\nkd_temperature: 2.0\n"
    )
    assert main(["kd", "--config", _recipe(tmp_path, text)]) == 2
    assert "fingerprint mismatch: the cache's data/ changed" in capsys.readouterr().err


def _weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / "model.safetensors"))


def short_kd(student, teacher, out, *extra) -> list[str]:
    return [
        "kd",
        "--config",
        HEAL,
        "--model_name_or_path",
        str(student),
        "--teacher_model_name_or_path",
        str(teacher),
        "--output_dir",
        str(out),
        "--max_steps",
        "4",
        "--save_steps",
        "2",
        "--warmup_steps",
        "0",
        "--max_length",
        "64",
        "--push_to_hub",
        "false",
        *extra,
    ]


def test_a_harmful_learning_rate_leaves_the_student_unchanged(svd80_compressed, tiny_model, tmp_path, caplog):
    """keep_best (the kd default): no step beats the start on held-out loss -> the output is the input, loudly."""
    out = tmp_path / "harm"
    assert main(short_kd(svd80_compressed, tiny_model, out, "--learning_rate", "1.0")) == 0
    before, after = _weights(svd80_compressed), _weights(out)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["kept"] == "start" and metrics["train"]["best_loss"] > metrics["train"]["start_loss"]
    assert metrics["eval"] == metrics["eval_before"]  # the perplexities of the same weights
    assert "NO STEP IMPROVED the held-out loss on old_eval" in caplog.text
    assert "this is the starting model, unchanged" in (out / "README.md").read_text()
    assert json.loads((out / "config.json").read_text())["model_type"] == "llm4all_lowrank"


@pytest.mark.parametrize("trainable", ["factors", "factors+norms"])
def test_factor_only_training_changes_no_other_parameter(svd80_compressed, tiny_model, tmp_path, trainable):
    out = tmp_path / trainable
    argv = short_kd(svd80_compressed, tiny_model, out, "--trainable", trainable, "--keep_best", "false")
    assert main(argv) == 0
    before, after = _weights(svd80_compressed), _weights(out)
    factors = [k for k in before if k.endswith((".down.weight", ".up.weight"))]
    norms = [k for k in before if "norm" in k]
    assert factors and norms and all(not torch.equal(before[k], after[k]) for k in factors)
    changed = set(factors) | (set(norms) if trainable == "factors+norms" else set())
    assert all(torch.equal(before[k], after[k]) for k in before if k not in changed)  # embeddings, lm_head ...
    assert all(not torch.equal(before[k], after[k]) for k in changed)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["trainable"] == trainable
    assert metrics["trainable_parameters"] == sum(before[k].numel() for k in changed)
    assert f"trained: `{trainable}`, {metrics['trainable_parameters']:,} of" in (out / "README.md").read_text()


def test_factors_need_a_low_rank_student(tiny_model, tmp_path, capsys):
    assert main(short_kd(tiny_model, tiny_model, tmp_path / "o", "--trainable", "factors")) == 2
    assert "key 'trainable': factors needs a low-rank (compressed) model" in capsys.readouterr().err


def test_chat_distillation_recipe_evaluates_on_held_out_text(svd80_compressed, tiny_model, tmp_path):
    """chat-distill.yaml trains on conversations and keeps its best state on held-out *text* (its eval_datasets
    were once loaded as chat sets, which failed)."""
    out = tmp_path / "chat"
    argv = [
        "kd",
        "--config",
        "recipes/tiny-llama/kd/chat-distill.yaml",
        "--model_name_or_path",
        str(svd80_compressed),
        "--teacher_model_name_or_path",
        str(tiny_model),
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--save_steps",
        "1",
        "--push_to_hub",
        "false",
    ]
    assert main(argv) == 0
    train = json.loads((out / "metrics.json").read_text())["train"]
    assert train["selected_on"] == "old_eval" and train["kept"] in ("best", "start") and train["global_step"] == 2


def test_a_run_that_reads_its_cache_many_times_is_flagged(tiny_model, exact_cache, tmp_path, capsys):
    """The 8-GPU KD read its teacher cache ~6 times: the run says how many times it reads it (3 rows here)."""
    path = _recipe(
        tmp_path,
        f"model_name_or_path: {tiny_model}\nteacher_cache: {exact_cache}\n"
        f"output_dir: {tmp_path / 'o'}\nkd_temperature: 2.0\nmax_length: 64\n"
        "per_device_train_batch_size: 2\ngradient_accumulation_steps: 2\nmax_steps: 50\n",
    )
    assert main(["kd", "--config", path, "--dry_run", "true"]) == 0
    rows = int(re.search(r"kd from cache .*: (\d+) rows", out := capsys.readouterr().out).group(1))
    assert (
        f"# WARNING: this run reads the teacher cache's {rows:,} rows {200 / rows:.1f} times (200 rows: 4 per step"
        in out
    )
    assert main(["kd", "--config", path, "--dry_run", "true", "--max_steps", "1"]) == 0
    assert "WARNING" not in capsys.readouterr().out
