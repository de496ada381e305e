"""Deterministic splits in which no group (a SAMU situation, a meeting) appears in two splits."""

import random
from collections import Counter


def grouped_splits(
    groups: list[str], ratios: dict[str, float], seed: int, folds: int | None = None, fold: int = 0
) -> dict[str, list[int]]:
    """Row indices per split, no group in two splits. Deterministic for a seed.

    Ratios: groups (shuffled) go one by one to the split furthest below its share of rows. Folds: groups are
    dealt into `folds` balanced folds; fold `fold` is `test`, the others `train`.
    """
    sizes = Counter(groups)
    order = sorted(sizes)
    random.Random(seed).shuffle(order)
    if folds:
        bins: list[list[str]] = [[] for _ in range(folds)]
        for g in sorted(order, key=lambda g: -sizes[g]):  # largest first, into the lightest fold
            min(bins, key=lambda b: sum(sizes[x] for x in b)).append(g)
        assign = {g: ("test" if i == fold else "train") for i, b in enumerate(bins) for g in b}
        names = ["train", "test"]
    else:
        total = sum(ratios.values())
        names = list(ratios)
        filled = dict.fromkeys(names, 0)
        assign = {}
        for g in order:
            target = max(names, key=lambda s: ratios[s] / total * len(groups) - filled[s])
            assign[g] = target
            filled[target] += sizes[g]
    return {s: [i for i, g in enumerate(groups) if assign[g] == s] for s in names}
