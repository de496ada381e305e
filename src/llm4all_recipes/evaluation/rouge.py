"""ROUGE for French, with `rouge_score` directly (`evaluate.load("rouge")` needs the Hub).

rouge_score's default tokenizer keeps only [a-z0-9] ("médecin" → "m", "decin"): here words are Unicode `\\w+`
runs of the NFC-normalised, lower-cased text, and there is no (English) stemming.
"""

import re
import unicodedata

_WORD = re.compile(r"\w+", re.UNICODE)


class FrenchTokenizer:
    """The `tokenize(text) -> list[str]` interface rouge_score expects."""

    def tokenize(self, text: str) -> list[str]:
        return _WORD.findall(unicodedata.normalize("NFC", text).lower())


def rouge(
    predictions: list[str], references: list[str], types: tuple[str, ...] = ("rouge1", "rouge2", "rougeL")
) -> dict[str, float]:
    """Mean F1 of each ROUGE type over the pairs."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError("as many predictions as references are needed")
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=False, tokenizer=FrenchTokenizer())
    totals = dict.fromkeys(types, 0.0)
    for pred, ref in zip(predictions, references):
        scores = scorer.score(ref, pred)
        for t in types:
            totals[t] += scores[t].fmeasure
    n = max(len(predictions), 1)
    return {t: totals[t] / n for t in types}
