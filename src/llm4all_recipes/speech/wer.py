"""Word and character error rates of French transcripts (jiwer), after a French normalisation.

Normalisation (applied to reference and hypothesis alike): Unicode NFKC, lower case, typographic apostrophes
and dashes made plain, elisions and hyphenated words split (l'appel -> l appel, peut-être -> peut être),
numbers spelt out in French words (num2words: 15 -> quinze, 3,5 -> trois virgule cinq, 1er -> premier), every
other punctuation mark removed, whitespace collapsed. Accents are kept: "à" and "a" are different words.
The untranscribed markers of simsamu (`<NA>`) and bracketed tags ([rire], <bruit>) are dropped.

Rates are corpus-level (total errors / total reference words or characters), for any grouping: a call, a
speaker, everything. CER counts characters of the normalised text, spaces included (jiwer's convention).
"""

import re
import unicodedata
from collections.abc import Iterable

_TAGS = re.compile(r"<[^>]*>|\[[^\]]*\]")
_APOSTROPHES = str.maketrans({"’": "'", "‘": "'", "`": "'", "´": "'", "‐": "-", "‑": "-", "–": " ", "—": " "})
_ORDINAL = re.compile(r"\b(\d+)\s*(er|re|ère|e|ème|eme)\b")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")
_NOT_WORD = re.compile(r"[^\w\s]|_")


def _spell(match: re.Match) -> str:
    from num2words import num2words

    text = match.group(0)
    if "," in text or "." in text:  # a decimal (French comma or point): "3,05" -> trois virgule zéro cinq
        from decimal import Decimal

        return f" {num2words(Decimal(text.replace(',', '.')), lang='fr')} "
    return f" {num2words(int(text), lang='fr')} "


def _ordinal(match: re.Match) -> str:
    from num2words import num2words

    n = int(match.group(1))
    if n == 1 and match.group(2) in ("re", "ère"):
        return " première "
    return f" {num2words(n, lang='fr', to='ordinal')} "


def normalize_fr(text: str) -> str:
    """The comparable form of a French transcript (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text or "").translate(_APOSTROPHES).lower()
    text = _TAGS.sub(" ", text)
    text = re.sub(r"(?<=\d)[\s\u202f](?=\d{3}\b)", "", text)  # 1 000 -> 1000
    text = _ORDINAL.sub(_ordinal, text)
    text = _NUMBER.sub(_spell, text)
    text = text.replace("'", " ").replace("-", " ")
    text = _NOT_WORD.sub(" ", text)
    return " ".join(text.split())


def error_rates(references: Iterable[str], hypotheses: Iterable[str]) -> dict:
    """WER and CER (corpus-level) and their counts over aligned (reference, hypothesis) pairs, normalised.
    Pairs whose normalised reference is empty are left out (no words to recognise) and counted."""
    import jiwer

    refs, hyps, empty = [], [], 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        ref, hyp = normalize_fr(ref), normalize_fr(hyp)
        if not ref:
            empty += 1
            continue
        refs.append(ref)
        hyps.append(hyp)
    if not refs:
        return {"segments": 0, "empty_references": empty}
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    n_words = words.hits + words.substitutions + words.deletions
    n_chars = chars.hits + chars.substitutions + chars.deletions
    return {
        "wer": round(words.wer, 4),
        "cer": round(chars.cer, 4),
        "reference_words": n_words,
        "reference_chars": n_chars,
        "substitutions": words.substitutions,
        "deletions": words.deletions,
        "insertions": words.insertions,
        "segments": len(refs),
        "empty_references": empty,
    }
