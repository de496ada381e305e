"""Strided perplexity against a brute-force reference on a small random Llama."""

import copy
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from llm4all_recipes.evaluation.perplexity import (
    _windows,
    corpus_ids,
    held_out_perplexities,
    perplexity,
    recorded_perplexities,
)


class CharTokenizer:
    """Characters as token ids; enough for perplexity."""

    eos_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + (ord(c) % 60) for c in text]}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    return LlamaForCausalLM(config).eval()


TEXTS = ["le médecin régulateur décroche", "une chute dans l'escalier", "douleur thoracique depuis une heure"]


def reference_nll(model, ids, max_length, stride):
    """Score each token t >= 1 with the window that first covers it, one window at a time."""
    total, count = 0.0, 0
    for begin, end, new in _windows(len(ids), max_length, stride):
        x = torch.tensor([ids[begin:end]])
        with torch.no_grad():
            logp = F.log_softmax(model(input_ids=x).logits[0].double(), -1)
        for pos in range(end - begin - new, end - begin):
            if pos == 0:
                continue
            total -= float(logp[pos - 1, ids[begin + pos]])
            count += 1
    return total / count, count


@pytest.mark.parametrize(("max_length", "stride"), [(16, 8), (16, 15), (32, 5), (200, 100)])
def test_matches_brute_force(model, max_length, stride):
    tok = CharTokenizer()
    ids = corpus_ids(tok, TEXTS)
    ref, count = reference_nll(model, ids, max_length, stride)
    got = perplexity(model, tok, TEXTS, max_length=max_length, stride=stride, batch_size=3)
    assert got["tokens"] == count == len(ids) - 1  # every token but the first, once
    assert got["loss"] == pytest.approx(ref, rel=1e-5)
    assert got["perplexity"] == pytest.approx(math.exp(ref), rel=1e-5)


def test_uniform_model_has_vocabulary_size_perplexity():
    class Uniform(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.training = False

        def forward(self, input_ids):
            return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 64)})

    got = perplexity(Uniform(), CharTokenizer(), TEXTS, max_length=16)
    assert got["perplexity"] == pytest.approx(64.0, rel=1e-5)  # float32 log-softmax


def test_windows_cover_every_token_once():
    for n, max_length, stride in [(100, 16, 8), (17, 16, 15), (5, 16, 4)]:
        covered = []
        for _, end, new in _windows(n, max_length, stride):
            covered.extend(range(end - new, end))
        assert covered == list(range(n))


# ------------------------------------------------------------------ reusing what a stage measured on its output
def test_the_measure_key_names_text_window_stride_and_dtype(model):
    tok = CharTokenizer()
    got = perplexity(model, tok, TEXTS, max_length=16)
    assert got["measure"] == perplexity(model, tok, TEXTS, max_length=16)["measure"]
    others = [
        perplexity(model, tok, TEXTS[:2], max_length=16),  # other text
        perplexity(model, tok, TEXTS, max_length=32),  # other window
        perplexity(model, tok, TEXTS, max_length=16, stride=4),  # other stride
        perplexity(copy.deepcopy(model).to(torch.float64), tok, TEXTS, max_length=16),  # other dtype
    ]
    assert len({got["measure"], *(o["measure"] for o in others)}) == 5


class Counting(torch.nn.Module):
    """A model that counts its forward passes."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, input_ids):
        self.calls += 1
        return self.inner(input_ids=input_ids)


def test_a_recorded_measure_is_returned_without_a_forward_pass(model, tmp_path):
    tok, counting = CharTokenizer(), Counting(model)
    sets = {"old": {"text": TEXTS}, "new": {"text": TEXTS[:2]}}
    held_out_perplexities(counting, tok, {"new": sets["new"]}, max_length=16)
    new_only = counting.calls  # forward passes of one measure of the new set
    measured = held_out_perplexities(counting, tok, sets, max_length=16)
    calls = counting.calls
    assert 0 < new_only < calls - new_only
    # the folder's metrics.json: the old set as measured (a sentinel value proves it is read, not recomputed)
    recorded = {**measured["old"], "perplexity": 1234.5}
    (tmp_path / "metrics.json").write_text(json.dumps({"eval": {"anything": recorded}}))
    again = held_out_perplexities(counting, tok, sets, max_length=16, recorded_in=str(tmp_path))
    assert again["old"] == recorded  # reused ...
    assert again["new"] == measured["new"]  # ... and the set it lacks measured
    assert counting.calls - calls == new_only  # the new set's windows only
    # another window, a Hub id, a folder without metrics or with a broken file: measured
    assert (
        held_out_perplexities(counting, tok, sets, max_length=32, recorded_in=str(tmp_path))["old"]["perplexity"]
        != 1234.5
    )
    assert recorded_perplexities("HuggingFaceTB/SmolLM2-135M-Instruct") == {}
    assert recorded_perplexities(None) == {}
    (tmp_path / "metrics.json").write_text("{not json")
    assert recorded_perplexities(str(tmp_path)) == {}


def _sentinel_copy(folder, dest, value):
    """A copy of a stage output whose recorded perplexities are all `value` (keys kept)."""
    shutil.copytree(folder, dest)
    metrics = json.loads((dest / "metrics.json").read_text())
    for v in metrics["eval"].values():
        v["perplexity"] = value
    (dest / "metrics.json").write_text(json.dumps(metrics))
    return dest


def test_stages_reuse_what_their_input_folders_measured(compressed_model, tiny_model, tmp_path):
    """compress (the dense input), kd (student and teacher) and feature-distill read their inputs' metrics.json
    instead of measuring the same weights on the same text again."""
    from llm4all_recipes.cli import main

    student = _sentinel_copy(compressed_model, tmp_path / "student", 1111.0)
    teacher = _sentinel_copy(tiny_model, tmp_path / "teacher", 2222.0)
    out = tmp_path / "kd"
    assert (
        main(
            [
                "kd",
                "--config",
                "recipes/tiny-llama/kd/heal.yaml",
                "--model_name_or_path",
                str(student),
                "--teacher_model_name_or_path",
                str(teacher),
                "--output_dir",
                str(out),
                "--max_steps",
                "1",
                "--save_steps",
                "1",
                "--push_to_hub",
                "false",
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert {v["perplexity"] for v in metrics["eval_before"].values()} == {1111.0}
    assert {v["perplexity"] for v in metrics["teacher_eval"].values()} == {2222.0}
    assert all(v["perplexity"] != 1111.0 for v in metrics["eval"].values())  # the trained model is measured

    out = tmp_path / "fd"
    assert (
        main(
            [
                "feature-distill",
                "--config",
                "recipes/tiny-llama/feature-distill/whitening-60.yaml",
                "--model_name_or_path",
                str(student),
                "--teacher_model_name_or_path",
                str(teacher),
                "--output_dir",
                str(out),
                "--tokens_per_block",
                "2048",
            ]
        )
        == 0
    )
    assert {v["perplexity"] for v in json.loads((out / "metrics.json").read_text())["eval_before"].values()} == {1111.0}

    out = tmp_path / "compress"
    assert (
        main(
            [
                "compress",
                "--config",
                "recipes/tiny-llama/compress/whitening-60.yaml",
                "--model_name_or_path",
                str(teacher),
                "--output_dir",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert {v["perplexity"] for v in metrics["eval_before"].values()} == {2222.0}
