"""Distillation losses against torch.nn.functional.kl_div and brute-force references."""

import math

import pytest
import torch
import torch.nn.functional as F

from llm4all_recipes.trainers.losses import distillation_loss, divergence

V = 11


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(2, 5, V, generator=g) * 2
    teacher = torch.randn(2, 5, V, generator=g) * 2
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.bool)
    labels = torch.randint(0, V, (2, 5), generator=g)
    return student, teacher, mask, labels


def brute_kl(p, q):
    return sum(p[i] * (math.log(p[i]) - math.log(q[i])) for i in range(len(p)) if p[i] > 0)


def test_forward_and_reverse_kl_match_kl_div(batch):
    student, teacher, mask, _ = batch
    s_log, t_log = F.log_softmax(student, -1), F.log_softmax(teacher, -1)
    forward = F.kl_div(s_log, t_log, log_target=True, reduction="none").sum(-1)
    reverse = F.kl_div(t_log, s_log, log_target=True, reduction="none").sum(-1)
    assert torch.allclose(divergence(s_log, t_log, "forward_kl"), forward, atol=1e-6)
    assert torch.allclose(divergence(s_log, t_log, "reverse_kl"), reverse, atol=1e-6)
    got = distillation_loss(student, mask, teacher_logits=teacher, loss="forward_kl")
    assert got == pytest.approx(float(forward[mask].mean()), rel=1e-5)


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.9])
def test_jsd_matches_brute_force(batch, beta):
    student, teacher, _, _ = batch
    p_s, p_t = F.softmax(student[0, 0].double(), -1).tolist(), F.softmax(teacher[0, 0].double(), -1).tolist()
    m = [beta * a + (1 - beta) * b for a, b in zip(p_t, p_s)]
    reference = beta * brute_kl(p_t, m) + (1 - beta) * brute_kl(p_s, m)
    got = divergence(F.log_softmax(student[0, 0], -1), F.log_softmax(teacher[0, 0], -1), "jsd", beta)
    assert float(got) == pytest.approx(reference, rel=1e-5)


def test_jsd_limits_are_the_two_kls(batch):
    student, teacher, mask, _ = batch
    for beta, name in ((0.0, "forward_kl"), (1.0, "reverse_kl")):
        a = distillation_loss(student, mask, teacher_logits=teacher, loss="jsd", beta=beta)
        b = distillation_loss(student, mask, teacher_logits=teacher, loss=name)
        assert a == pytest.approx(float(b), rel=1e-6)
    # the mixture form itself tends to 0 at both ends (why they are special-cased)
    near = distillation_loss(student, mask, teacher_logits=teacher, loss="jsd", beta=1e-6)
    assert float(near) < 1e-4


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "jsd"])
def test_zero_when_student_equals_teacher(batch, loss):
    student, _, mask, _ = batch
    assert float(
        distillation_loss(student, mask, teacher_logits=student.clone(), loss=loss, temperature=2.0)
    ) == pytest.approx(0, abs=1e-6)


def test_temperature_and_tau_squared(batch):
    student, teacher, mask, _ = batch
    tau = 3.0
    t_log, s_log = F.log_softmax(teacher / tau, -1), F.log_softmax(student / tau, -1)
    reference = (F.kl_div(s_log, t_log, log_target=True, reduction="none").sum(-1)[mask] * tau**2).mean()
    assert distillation_loss(student, mask, teacher_logits=teacher, temperature=tau) == pytest.approx(
        float(reference), rel=1e-5
    )
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(student, mask, teacher_logits=teacher, temperature=0)
    with pytest.raises(ValueError, match="beta"):
        distillation_loss(student, mask, teacher_logits=teacher, loss="jsd", beta=1.5)


def test_mask_and_alpha_mix_with_cross_entropy(batch):
    student, teacher, mask, labels = batch
    kd = distillation_loss(student, mask, teacher_logits=teacher)
    ce = F.cross_entropy(student[mask], labels[mask])
    mixed = distillation_loss(student, mask, teacher_logits=teacher, labels=labels, alpha=0.3)
    assert mixed == pytest.approx(0.3 * float(ce) + 0.7 * float(kd), rel=1e-5)
    # masked-out tokens do not matter
    other = student.clone()
    other[~mask] = 100.0
    assert distillation_loss(other, mask, teacher_logits=teacher) == pytest.approx(float(kd), rel=1e-6)


def test_normalised_over_the_accumulation_window(batch):
    student, teacher, mask, _ = batch
    whole = distillation_loss(student, mask, teacher_logits=teacher)
    n = int(mask.sum())
    halves = sum(
        distillation_loss(student[i : i + 1], mask[i : i + 1], teacher_logits=teacher[i : i + 1], num_items=n)
        for i in range(2)
    )
    assert float(halves) == pytest.approx(float(whole), rel=1e-6)


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "jsd"])
def test_top_k_with_k_equal_vocabulary_is_exact(batch, loss):
    student, teacher, mask, _ = batch
    logprobs, indices = F.log_softmax(teacher / 2.0, -1).topk(V, dim=-1)
    full = distillation_loss(student, mask, teacher_logits=teacher, loss=loss, temperature=2.0)
    cached = distillation_loss(
        student, mask, teacher_logprobs=logprobs, teacher_indices=indices, loss=loss, temperature=2.0
    )
    assert float(cached) == pytest.approx(float(full), abs=1e-5)


def test_top_k_is_the_divergence_of_the_distributions_coarsened_to_k_plus_one_categories(batch):
    student, teacher, mask, _ = batch
    logprobs, indices = F.log_softmax(teacher, -1).topk(4, dim=-1)
    cached = distillation_loss(student, mask, teacher_logprobs=logprobs, teacher_indices=indices)
    p, q = F.softmax(teacher, -1)[mask], F.softmax(student, -1)[mask]
    top = indices[mask]
    reference = 0.0
    for i in range(len(p)):  # brute force: k cached tokens + one tail category, on each side
        p_top, q_top = p[i, top[i]].tolist(), q[i, top[i]].tolist()
        reference += brute_kl([*p_top, 1 - sum(p_top)], [*q_top, 1 - sum(q_top)])
    assert float(cached) == pytest.approx(reference / len(p), rel=1e-4)


@pytest.mark.parametrize("loss", ["forward_kl", "reverse_kl", "jsd"])
@pytest.mark.parametrize("k", [1, 3, 6])
def test_top_k_is_a_non_negative_lower_bound_of_the_full_divergence(batch, loss, k):
    student, teacher, mask, _ = batch
    logprobs, indices = F.log_softmax(teacher, -1).topk(k, dim=-1)
    full = distillation_loss(student, mask, teacher_logits=teacher, loss=loss)
    cached = distillation_loss(student, mask, teacher_logprobs=logprobs, teacher_indices=indices, loss=loss)
    assert 0 <= float(cached) <= float(full) + 1e-6


def test_top_k_penalises_a_student_that_empties_the_tail(batch):
    """The minimiser of a tail-dropping loss (all mass on the teacher's top k, in proportion) is not free here:
    only the teacher itself has a zero loss."""
    _, teacher, mask, _ = batch
    t_log = F.log_softmax(teacher, -1)
    logprobs, indices = t_log.topk(3, dim=-1)
    emptied = torch.full_like(teacher, -1e4).scatter(-1, indices, logprobs)  # renormalised by log_softmax
    loss = distillation_loss(emptied, mask, teacher_logprobs=logprobs, teacher_indices=indices)
    exact = distillation_loss(teacher, mask, teacher_logprobs=logprobs, teacher_indices=indices)
    assert float(exact) == pytest.approx(0.0, abs=1e-6)
    assert float(loss) > 0.1


def test_padded_teacher_vocabulary_is_allowed(batch):
    student, teacher, mask, _ = batch
    padded = torch.cat([teacher, torch.full((2, 5, 5), -1e4)], dim=-1)  # 5 unused embedding rows
    a = distillation_loss(student, mask, teacher_logits=padded)
    b = distillation_loss(student, mask, teacher_logits=teacher)
    assert float(a) == pytest.approx(float(b), rel=1e-6)
