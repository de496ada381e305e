"""Generation-based evaluation of the French tasks, on a budget of generations.

- SAMU calls: from a per-turn simsamu dataset (`prompt` = system + history, `completion` = the regulator's
  next turn), generate the next turn and score it with ROUGE-L against the real one.
- Meetings: generate a summary from the transcript; when the transcript does not fit the model's context,
  map-reduce: summarise each token-bounded chunk (data/prompts/meeting_chunk_summary.jinja), then merge the
  partial summaries (meeting_merge_summaries.jinja). ROUGE-1/2/L against the reference summary.
Greedy decoding, at most `max_new_tokens` per generation.
"""

import logging

import torch

from ..data.meetings import chunk_lines, transcript_lines
from ..data.templates import render_prompt
from .rouge import rouge

logger = logging.getLogger(__name__)


@torch.no_grad()
def generate(model, tokenizer, messages: list[dict], max_new_tokens: int = 64) -> str:
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    inputs = {k: v.to(next(model.parameters()).device) for k, v in inputs.items()}
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True).strip()


class Budget:
    def __init__(self, total: int):
        self.left = total

    def take(self, n: int = 1) -> bool:
        if self.left < n:
            return False
        self.left -= n
        return True


def simsamu_next_turn(model, tokenizer, rows, budget: Budget, max_new_tokens: int = 64) -> dict:
    predictions, references, samples = [], [], []
    for row in rows:
        if not budget.take():
            break
        pred = generate(model, tokenizer, row["prompt"], max_new_tokens)
        ref = row["completion"][0]["content"]
        predictions.append(pred)
        references.append(ref)
        samples.append({"id": row["id"], "prediction": pred, "reference": ref})
    if not predictions:
        return {"generations": 0, "rows": len(rows)}
    return {
        "rougeL": rouge(predictions, references, ("rougeL",))["rougeL"],
        "generations": len(predictions),
        "rows": len(rows),
        "samples": samples,
    }


def summarise_meeting(
    model, tokenizer, row: dict, budget: Budget, *, context: int, chunk_tokens: int, overlap: int, max_new_tokens: int
) -> str | None:
    """One summary, direct when the prompt fits `context` tokens, else map-reduce over chunks (None: no budget)."""
    system = render_prompt("meeting_system")
    lines = transcript_lines(row["turns"])
    direct = [
        {"role": "system", "content": system},
        {"role": "user", "content": render_prompt("meeting_summary", transcript="\n".join(lines))},
    ]
    size = len(tokenizer.apply_chat_template(direct, add_generation_prompt=True, return_dict=True)["input_ids"])
    if size + max_new_tokens <= context:
        return generate(model, tokenizer, direct, max_new_tokens) if budget.take() else None

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    chunks = row.get("chunks") or chunk_lines(lines, count, chunk_tokens, overlap)
    if not budget.take(len(chunks) + 1):
        return None
    partial = []
    for i, chunk in enumerate(chunks, 1):
        prompt = render_prompt("meeting_chunk_summary", transcript=chunk, index=i, total=len(chunks))
        partial.append(
            generate(
                model,
                tokenizer,
                [{"role": "system", "content": system}, {"role": "user", "content": prompt}],
                max_new_tokens,
            )
        )
    merge = render_prompt("meeting_merge_summaries", summaries=partial)
    return generate(
        model,
        tokenizer,
        [{"role": "system", "content": system}, {"role": "user", "content": merge}],
        max_new_tokens,
    )


def meeting_summaries(
    model,
    tokenizer,
    rows,
    budget: Budget,
    *,
    context: int,
    chunk_tokens: int = 384,
    overlap: int = 64,
    max_new_tokens: int = 64,
) -> dict:
    predictions, references, samples = [], [], []
    for row in rows:
        pred = summarise_meeting(
            model,
            tokenizer,
            row,
            budget,
            context=context,
            chunk_tokens=chunk_tokens,
            overlap=overlap,
            max_new_tokens=max_new_tokens,
        )
        if pred is None:
            break
        predictions.append(pred)
        references.append(row["summary"])
        samples.append({"id": row["id"], "prediction": pred})
    if not predictions:
        return {"meetings": 0, "rows": len(rows)}
    return {
        **rouge(predictions, references),
        "meetings": len(predictions),
        "rows": len(rows),
        "samples": samples,
    }
