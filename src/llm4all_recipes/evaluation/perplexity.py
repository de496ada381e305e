"""Strided perplexity of a causal LM on a text corpus.

Documents are tokenised, each followed by EOS, and joined into one stream. Windows of `max_length`
tokens move by `stride`; in each window only the tokens not scored by an earlier window count, so
every token (but the very first) is scored once, with at least `max_length - stride` tokens of context
when available. The negative log-likelihood is computed in float32 and summed in float64:

    ppl = exp( sum_t -log p(x_t | x_<t) / N )
"""

import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def corpus_ids(tokenizer, texts: Iterable[str]) -> list[int]:
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    return ids


def _windows(n: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, number of new target tokens) for each window."""
    out, prev_end, begin = [], 0, 0
    while True:
        end = min(begin + max_length, n)
        out.append((begin, end, end - prev_end))
        prev_end = end
        if end == n:
            return out
        begin += stride


@torch.no_grad()
def perplexity(
    model,
    tokenizer,
    texts: Iterable[str],
    *,
    max_length: int = 512,
    stride: int | None = None,
    batch_size: int = 8,
    desc: str = "perplexity",
) -> dict[str, float]:
    """Returns {"perplexity", "loss" (mean NLL per token, in nats), "tokens" (scored)}."""
    ids = corpus_ids(tokenizer, texts)
    if len(ids) < 2:
        raise ValueError("perplexity needs at least 2 tokens of text")
    stride = stride or max(1, max_length // 2)
    if not 0 < stride < max_length:
        raise ValueError(f"stride must be in (0, max_length) so that every window has context; got {stride}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    data = torch.tensor(ids, dtype=torch.long)
    windows = _windows(len(ids), max_length, stride)
    nll, count = 0.0, 0
    # windows of equal length are batched together (all but possibly the last)
    groups: dict[int, list[tuple[int, int, int]]] = {}
    for w in windows:
        groups.setdefault(w[1] - w[0], []).append(w)
    bar = tqdm(total=len(windows), desc=desc, leave=False, disable=len(windows) < 4)
    for length, group in groups.items():
        for start in range(0, len(group), batch_size):
            chunk = group[start : start + batch_size]
            inputs = torch.stack([data[b:e] for b, e, _ in chunk]).to(device)
            labels = inputs.clone()
            for row, (_, _, new) in enumerate(chunk):
                labels[row, : length - new] = -100
            logits = model(input_ids=inputs).logits[:, :-1].float()
            targets = labels[:, 1:]
            loss = F.cross_entropy(
                logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum", ignore_index=-100
            )
            nll += float(loss.double())
            count += int((targets != -100).sum())
            bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    loss = nll / count
    # a diverged model's loss can exceed what exp() represents: its perplexity is then infinite, not a crash
    return {"perplexity": math.exp(loss) if loss < 700 else math.inf, "loss": loss, "tokens": count}


@torch.no_grad()
def document_perplexities(model, tokenizer, texts: list[str], *, max_length: int = 512, batch_size: int = 8,
                          desc: str = "scoring") -> list[float]:  # fmt: skip
    """Perplexity of each document on its first `max_length` tokens (EOS appended), batched with padding."""
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[float] = []
    encoded = [
        [*ids[: max_length - 1], tokenizer.eos_token_id]
        for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    ]
    for start in tqdm(range(0, len(encoded), batch_size), desc=desc, leave=False):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros_like(ids)
        for i, seq in enumerate(chunk):
            ids[i, : len(seq)] = torch.tensor(seq)
            attention[i, : len(seq)] = 1
        logits = model(input_ids=ids.to(device), attention_mask=attention.to(device)).logits[:, :-1].float()
        targets = ids[:, 1:].to(device)
        mask = attention[:, 1:].to(device).bool()
        nll = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        per_doc = (nll * mask).sum(1).double() / mask.sum(1).clamp_min(1)
        out.extend(math.exp(float(v)) for v in per_doc)
    return out


def held_out_perplexities(
    model, tokenizer, sets: dict, *, max_length: int, device: str = "cpu", tag: str = ""
) -> dict:
    """{name: perplexity(...)} of each named text set; the model visits `device` for the measure, then goes back."""
    home = next(model.parameters()).device
    model.to(device)
    try:
        return {
            name: perplexity(
                model, tokenizer, ds["text"], max_length=max_length, desc=f"{tag} {name}".strip()
            )
            for name, ds in sets.items()
        }
    finally:
        model.to(home)
