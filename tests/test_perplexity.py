"""Strided perplexity against a brute-force reference on a small random Llama."""

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from llm4all_recipes.evaluation.perplexity import _windows, corpus_ids, perplexity


class CharTokenizer:
    """Characters as token ids; enough for perplexity."""

    eos_token_id = 1

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [2 + (ord(c) % 60) for c in text]}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)  # fmt: skip
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
