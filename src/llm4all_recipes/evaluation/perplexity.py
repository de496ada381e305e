"""Strided perplexity of a causal LM on a text corpus.

Documents are tokenised, each followed by EOS, and joined into one stream. Windows of `max_length`
tokens move by `stride`; in each window only the tokens not scored by an earlier window count, so
every token (but the very first) is scored once, with at least `max_length - stride` tokens of context
when available. The negative log-likelihood is computed in float32 and summed in float64:

    ppl = exp( sum_t -log p(x_t | x_<t) / N )

Each result carries a `measure` key: a hash of the scored token ids, the window, the stride and the model's
dtype. A stage output's `metrics.json` keeps the results it measured on the weights it saved (`eval`), so a
later stage that starts from that folder reuses them instead of measuring the same model on the same text
again (`recorded_perplexities`); any difference in the text, tokenizer, window or dtype changes the key.
"""

import hashlib
import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.packing import corpus_ids

logger = logging.getLogger(__name__)


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


def measure_key(ids: list[int], max_length: int, stride: int, dtype) -> str:
    """What a perplexity depends on besides the weights: the scored ids, the window, the stride, the dtype."""
    digest = hashlib.sha256(torch.tensor(ids, dtype=torch.int64).numpy().tobytes())
    digest.update(f"|{max_length}|{stride}|{dtype}".encode())
    return digest.hexdigest()[:20]


def _stride(max_length: int, stride: int | None) -> int:
    stride = stride or max(1, max_length // 2)
    if not 0 < stride < max_length:
        raise ValueError(f"stride must be in (0, max_length) so that every window has context; got {stride}")
    return stride


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
    recorded: dict[str, dict] | None = None,
) -> dict[str, float]:
    """Returns {"perplexity", "loss" (mean NLL per token, in nats), "tokens" (scored), "measure" (its key)}; a
    result in `recorded` (measure key -> result, the model's own earlier measures) is returned without a pass."""
    ids = corpus_ids(tokenizer, texts)
    if len(ids) < 2:
        raise ValueError("perplexity needs at least 2 tokens of text")
    stride = _stride(max_length, stride)
    key = measure_key(ids, max_length, stride, next(model.parameters()).dtype)
    if recorded and key in recorded:
        return dict(recorded[key])
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
    return {
        "perplexity": math.exp(loss) if loss < 700 else math.inf,
        "loss": loss,
        "tokens": count,
        "measure": key,
    }


def recorded_perplexities(path: str | None) -> dict[str, dict]:
    """{measure key: result} of what the stage that wrote the folder `path` measured on the weights it saved
    (`eval` in its metrics.json); empty for a Hub id, a folder without metrics or results without a key. A stage
    writes its folder whole (`<output_dir>.tmp`, then a rename), so a metrics.json there describes those weights."""
    file = Path(path) / "metrics.json" if path else None
    if file is None or not file.is_file():
        return {}
    try:
        evals = json.loads(file.read_text(encoding="utf-8")).get("eval")
    except (OSError, ValueError, AttributeError):
        return {}
    if not isinstance(evals, dict):
        return {}
    return {
        v["measure"]: v
        for v in evals.values()
        if isinstance(v, dict) and isinstance(v.get("measure"), str) and isinstance(v.get("perplexity"), (int, float))
    }


@torch.no_grad()
def document_perplexities(
    model, tokenizer, texts: list[str], *, max_length: int = 512, batch_size: int = 8, desc: str = "scoring"
) -> list[float]:
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
    model,
    tokenizer,
    sets: dict,
    *,
    max_length: int,
    device: str = "cpu",
    tag: str = "",
    recorded_in: str | None = None,
) -> dict:
    """{name: perplexity(...)} of each named text set; the model visits `device` for the measure, then goes back.
    `recorded_in`: the folder the model was loaded from, whose own measures are reused (`recorded_perplexities`)."""
    recorded = recorded_perplexities(recorded_in)
    home = next(model.parameters()).device
    model.to(device)
    try:
        out = {}
        for name, ds in sets.items():
            out[name] = perplexity(
                model, tokenizer, ds["text"], max_length=max_length, desc=f"{tag} {name}".strip(), recorded=recorded
            )
            if out[name]["measure"] in recorded:
                logger.info(
                    "%s %s: perplexity %.2f, as measured by the stage that wrote %s",
                    tag or "model",
                    name,
                    out[name]["perplexity"],
                    recorded_in,
                )
        return out
    finally:
        model.to(home)


def held_out_meter(recipe, preprocessor, sets: dict, device: str, *, speech: bool = False):
    """`measure(model, tag, recorded_in=None) -> {label: {perplexity, loss, tokens, measure}}`: the held-out
    perplexities a stage reports, on its recipe's window (`perplexity_max_length`). `recorded_in`: the folder the
    model was loaded from, whose own measures are reused. A speech model (Whisper): the teacher-forced perplexity
    of the reference transcripts given their audio."""
    if speech:
        from ..speech.calibration import transcript_perplexities

        return lambda model, tag, recorded_in=None: transcript_perplexities(
            model, sets, device=device, batch_size=recipe.calibration_batch_size
        )

    def measure(model, tag: str, recorded_in: str | None = None) -> dict:
        return held_out_perplexities(
            model,
            preprocessor,
            sets,
            max_length=recipe.perplexity_max_length,
            device=device,
            tag=tag,
            recorded_in=recorded_in,
        )

    return measure
