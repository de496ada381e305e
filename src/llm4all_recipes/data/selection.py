"""Data targeting for continued pretraining: exact and near duplicates, eval-set contamination.

- exact duplicates: documents whose NFC-normalised, lower-cased, whitespace-collapsed text is identical;
- near duplicates: MinHash (datasketch) of word 5-gram shingles, LSH at a Jaccard threshold; the first
  document of a near-duplicate group is kept;
- contamination: a document sharing any word n-gram (default 13, as GPT-3's decontamination) with the
  protected evaluation sets is removed.
Every removed document is reported with its reason (nothing is dropped silently).
"""

import hashlib
import re
import unicodedata
from collections.abc import Iterable

_WORD = re.compile(r"\w+", re.UNICODE)


def words(text: str) -> list[str]:
    return _WORD.findall(unicodedata.normalize("NFC", text).lower())


def exact_key(text: str) -> str:
    return hashlib.sha1(" ".join(words(text)).encode()).hexdigest()


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def duplicates(
    texts: list[str], *, threshold: float = 0.8, num_perm: int = 128, shingle: int = 5, seed: int = 0
) -> dict[int, str]:
    """{index: reason} of the documents to drop as exact or near duplicates of an earlier one."""
    from datasketch import MinHash, MinHashLSH

    dropped: dict[int, str] = {}
    seen: dict[str, int] = {}
    for i, text in enumerate(texts):
        key = exact_key(text)
        if key in seen:
            dropped[i] = f"exact duplicate of #{seen[key]}"
        else:
            seen[key] = i
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for i, text in enumerate(texts):
        if i in dropped:
            continue
        mh = MinHash(num_perm=num_perm, seed=seed)
        for gram in ngrams(words(text), shingle) or {tuple(words(text))}:
            mh.update(" ".join(gram).encode())
        match = lsh.query(mh)
        if match:
            dropped[i] = f"near duplicate of #{min(int(m) for m in match)}"
        else:
            lsh.insert(str(i), mh)
    return dropped


def contaminated(texts: list[str], protected: Iterable[str], n: int = 13) -> dict[int, str]:
    """{index: reason} of the documents sharing a word n-gram with the protected (evaluation) texts."""
    grams: set[tuple[str, ...]] = set()
    for text in protected:
        grams |= ngrams(words(text), n)
    out = {}
    for i, text in enumerate(texts):
        hit = next((g for g in ngrams(words(text), n) if g in grams), None)
        if hit:
            out[i] = f"shares a {n}-gram with an eval set: « {' '.join(hit)} »"
    return out
