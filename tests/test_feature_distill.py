"""Lillama feature distillation: the loss, held-out improvement per block, the best state protecting a
too-high learning rate, both schedules, resume per block, bad input."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F

import llm4all_recipes.compression.feature_distill as fd
from llm4all_recipes.cli import main
from llm4all_recipes.compression import ranks as R
from llm4all_recipes.compression.calibration import calibration_ids, decoder_layers
from llm4all_recipes.compression.compressor import compress_model
from llm4all_recipes.data.packing import corpus_ids
from llm4all_recipes.models import load_model, load_tokenizer
from llm4all_recipes.paths import write_json

RECIPE = "recipes/tiny-llama/feature-distill/whitening-60.yaml"


def test_lillama_loss_matches_its_formula():
    torch.manual_seed(0)
    a, y = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    cos = (a * y).sum(-1) / (a.norm(dim=-1) * y.norm(dim=-1))
    reference = (a - y).abs().mean() - torch.log(1 / (1 + torch.exp(-cos))).mean()
    assert fd.lillama_loss(a, y) == pytest.approx(float(reference), rel=1e-5)
    # identical activations: no L1 term, and -log σ(1) is the floor of the cosine term
    assert fd.lillama_loss(a, a) == pytest.approx(-F.logsigmoid(torch.tensor(1.0)).item(), rel=1e-5)


def test_every_block_is_at_least_as_good_on_held_out_tokens(distilled_model):
    blocks = json.loads((distilled_model / "metrics.json").read_text())["blocks"]
    assert [b["layer"] for b in blocks] == [0, 1, 2, 3]
    assert all(b["best_loss"] <= b["initial_loss"] for b in blocks)
    assert any(b["best_loss"] < b["initial_loss"] - 1e-3 for b in blocks)
    assert not (distilled_model / "distill_state").exists()  # resume-only state is not shipped
    card = (distilled_model / "README.md").read_text()
    assert "| 0 |" in card and "Lillama feature distillation" in card


def windows(model_path, n=16, holdout=4):
    tok = load_tokenizer(str(model_path))
    with open("tests/fixtures/text/old_train.jsonl", encoding="utf-8") as f:
        stream = corpus_ids(tok, [json.loads(line)["text"] for line in f])
    return calibration_ids(stream[:40000], n, 64, 0), calibration_ids(stream[40000:], holdout, 64, 1)


def factors(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if ".down." in n or ".up." in n}


def test_a_too_high_learning_rate_keeps_the_initial_state(compressed_model, tiny_model):
    student, teacher = load_model(str(compressed_model)), load_model(str(tiny_model))
    before = factors(student)
    train, hold = windows(tiny_model)
    cfg = fd.DistillConfig(learning_rate=1e-2, batch_size=4, eval_every=2, tokens_per_block=64 * 4 * 6)
    reports = fd.distill(teacher, student, train, hold, cfg)
    assert all(r.best_step == 0 and r.best_loss == r.initial_loss for r in reports)
    assert all(r.final_loss > r.initial_loss for r in reports)  # it did get worse ...
    after = factors(student)
    assert all(torch.equal(before[n], after[n]) for n in before)  # ... and the initial state was kept


def test_a_bfloat16_student_trains_like_float32_and_stays_bfloat16(tiny_model):
    """Real models load in bf16: the factors train as fp32 master weights under autocast, then are cast back;
    the held-out losses follow the float32 run's."""
    teacher = load_model(str(tiny_model))
    student = copy.deepcopy(teacher)
    targets = R.find_targets(student, R.DEFAULT_TARGETS)
    train, hold = windows(tiny_model)
    compress_model(student, train, targets, R.uniform(targets, 0.8), method="svd")
    cfg = fd.DistillConfig(learning_rate=1e-3, batch_size=4, eval_every=2, tokens_per_block=64 * 4 * 4)
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        s = copy.deepcopy(student).to(dtype)
        runs[dtype] = fd.distill(copy.deepcopy(teacher).to(dtype), s, train, hold, cfg)
        assert {p.dtype for p in s.parameters()} == {dtype}
    for r16, r32 in zip(runs[torch.bfloat16], runs[torch.float32]):
        assert r16.best_loss < r16.initial_loss
        assert r16.best_loss == pytest.approx(r32.best_loss, rel=0.02)


@pytest.mark.parametrize(("schedule", "joint"), [("sequential", False), ("parallel", True)])
def test_schedules(compressed_model, tiny_model, schedule, joint):
    student, teacher = load_model(str(compressed_model)), load_model(str(tiny_model))
    train, hold = windows(tiny_model)
    cfg = fd.DistillConfig(
        schedule=schedule,
        joint_inputs=joint,
        learning_rate=1e-4,
        batch_size=4,
        eval_every=2,
        tokens_per_block=64 * 4 * 4,
    )
    reports = fd.distill(teacher, student, train, hold, cfg)
    assert len(reports) == 4 and all(r.best_loss <= r.initial_loss for r in reports)


def test_resume_skips_finished_blocks(compressed_model, tmp_path, monkeypatch):
    out = tmp_path / "fd"
    argv = [
        "--config",
        RECIPE,
        "--model_name_or_path",
        str(compressed_model),
        "--output_dir",
        str(out),
        "--tokens_per_block",
        "4096",
        "--num_calibration_samples",
        "16",
    ]
    trained = []
    real = fd.train_block

    def crash_on_block_2(block, pairs, hold, cfg, layer):
        if layer == 2:
            raise KeyboardInterrupt("simulated crash")
        trained.append(layer)
        return real(block, pairs, hold, cfg, layer)

    monkeypatch.setattr(fd, "train_block", crash_on_block_2)
    with pytest.raises(KeyboardInterrupt):
        main(["feature-distill", *argv])
    state = tmp_path / "fd.tmp" / "distill_state"
    assert sorted(json.loads((state / "progress.json").read_text())) == ["0", "1"]
    assert not out.exists()
    trained.clear()
    monkeypatch.setattr(fd, "train_block", lambda *a: (trained.append(a[-1]), real(*a))[1])
    assert main(["feature-distill", *argv]) == 0
    assert trained == [2, 3]  # blocks 0 and 1 came from the saved state
    assert [b["layer"] for b in json.loads((out / "metrics.json").read_text())["blocks"]] == [0, 1, 2, 3]


def test_student_must_be_low_rank(tiny_model, tmp_path, capsys):
    argv = ["--config", RECIPE, "--model_name_or_path", str(tiny_model), "--output_dir", str(tmp_path / "o")]
    assert main(["feature-distill", *argv]) == 2
    assert "key 'model_name_or_path': not a low-rank checkpoint" in capsys.readouterr().err


def test_blocks_are_found_generically(compressed_model):
    prefix, layers = decoder_layers(load_model(str(compressed_model)))
    assert prefix == "model.layers" and len(layers) == 4


def test_an_unreadable_progress_file_restarts_the_blocks_instead_of_failing(tmp_path, caplog):
    (tmp_path / "progress.json").write_text("")  # what a kill mid-write left before writes were atomic
    assert fd._finished(tmp_path) == {}
    assert "unreadable" in caplog.text
    write_json(tmp_path / "progress.json", {"0": {"layer": 0}})
    assert fd._finished(tmp_path) == {0: {"layer": 0}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["progress.json"]  # no temporary file left


def test_report_to_receives_block_losses_and_perplexities(compressed_model, tmp_path, monkeypatch):
    """report_to works for feature distillation as for the Trainer stages (accelerate's tracker API): each block's
    held-out loss along its steps, and the held-out perplexities before/after."""
    import transformers.integrations
    from accelerate import Accelerator
    from accelerate.tracking import GeneralTracker

    from llm4all_recipes import tracking
    from llm4all_recipes.cli import main

    logged = []

    class Recorder(GeneralTracker):
        name, requires_logging_directory, tracker = "recorder", False, None

        def __init__(self):
            super().__init__()

        def store_init_configuration(self, values):
            logged.append(("config", values))

        def log(self, values, step=None, **kwargs):
            logged.append((step, values))

    monkeypatch.setattr(transformers.integrations, "is_tensorboard_available", lambda: True)
    monkeypatch.setattr(tracking, "_accelerator", lambda names, folder: Accelerator(log_with=[Recorder()]))
    out = tmp_path / "fd"
    assert (
        main(
            [
                "feature-distill",
                "--config",
                RECIPE,
                "--model_name_or_path",
                str(compressed_model),
                "--output_dir",
                str(out),
                "--tokens_per_block",
                "4096",
                "--eval_every",
                "1",
                "--report_to",
                "tensorboard",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert logged[0][0] == "config" and logged[0][1]["learning_rate"] == pytest.approx(1e-3)
    for block in metrics["blocks"]:
        losses = {
            s: v[f"block_{block['layer']}/held_out_loss"]
            for s, v in logged[1:]
            if f"block_{block['layer']}/held_out_loss" in v
        }
        assert losses[0] == pytest.approx(block["initial_loss"]) and min(losses.values()) == pytest.approx(
            block["best_loss"]
        )
    (before,) = [v for s, v in logged if s == 0 and "old_eval/perplexity" in v]
    (after,) = [v for s, v in logged if s == 1 and "old_eval/perplexity" in v]
    assert before["old_eval/perplexity"] == pytest.approx(metrics["eval_before"]["old_eval"]["perplexity"])
    assert after["old_eval/perplexity"] == pytest.approx(metrics["eval"]["old_eval"]["perplexity"])
