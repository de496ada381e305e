"""Which language a generated answer is in: frequent French and English function words (one per line in
data/function_words/<language>.txt). An answer is French when it has some French ones and at least as many as English
ones."""

import functools
import re
from pathlib import Path

WORDS = Path(__file__).parent / "function_words"


@functools.cache
def function_words(language: str) -> frozenset[str]:
    return frozenset((WORDS / f"{language}.txt").read_text(encoding="utf-8").split())


def looks_french(text: str) -> bool:
    words = re.findall(r"[^\W\d_]+", text.lower())
    fr = sum(w in function_words("fr") for w in words)
    en = sum(w in function_words("en") for w in words)
    return fr > 0 and fr >= en
