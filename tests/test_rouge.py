"""ROUGE on accented French against hand-computed values."""

import pytest

from llm4all_recipes.evaluation.rouge import FrenchTokenizer, rouge

REF = "Le médecin régulateur envoie le SMUR."
PRED = "le médecin envoie une ambulance"


def test_tokenizer_keeps_accented_words():
    assert FrenchTokenizer().tokenize("Le médecin régulateur, à l'hôpital : SAMU-15") == [
        "le",
        "médecin",
        "régulateur",
        "à",
        "l",
        "hôpital",
        "samu",
        "15",
    ]


def test_hand_computed_scores():
    # ref: le médecin régulateur envoie le smur (6); pred: le médecin envoie une ambulance (5)
    # unigrams in common (clipped): le, médecin, envoie = 3 -> P 3/5, R 3/6, F1 = 6/11
    # bigrams: ref 5, pred 4, common "le médecin" = 1 -> F1 = 2 * (1/4 * 1/5) / (1/4 + 1/5) = 2/9
    # LCS: le médecin envoie = 3 -> same as ROUGE-1
    scores = rouge([PRED], [REF])
    assert scores["rouge1"] == pytest.approx(6 / 11)
    assert scores["rouge2"] == pytest.approx(2 / 9)
    assert scores["rougeL"] == pytest.approx(6 / 11)


def test_default_rouge_score_tokenizer_would_be_wrong():
    from rouge_score import rouge_scorer

    default = rouge_scorer.RougeScorer(["rouge1"]).score(REF, PRED)["rouge1"].fmeasure
    assert default != pytest.approx(6 / 11)  # it splits "médecin" into "m" + "decin"


def test_identical_and_disjoint():
    assert rouge(["Élodie appelle le 15"], ["élodie appelle le 15"])["rougeL"] == pytest.approx(1.0)
    assert rouge(["bonjour"], ["au revoir"])["rouge1"] == 0.0
