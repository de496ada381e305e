"""A speech-text model against the cascade (Whisper transcribes, then a text model answers from the transcript),
on the same held-out rows (speech/sft_data.py), per task:

- transcription: WER / CER of the generated transcription (the cascade's is Whisper's own);
- next_turn: perplexity of the regulator's real answer (teacher-forced: the audio, or its transcript, then the
  instruction) and ROUGE-L of a generated one;
- fiche: perplexity of the reference fiche and ROUGE-1/2/L of a generated one.

Perplexities use every row; generations the first `generations` rows of each task (greedy, `max_new_tokens`).
"""

import math
from collections import defaultdict

import torch

from ..speech.sft_data import AudioCache, SpeechCollator, pad, with_answer
from ..speech.wer import error_rates
from .rouge import rouge

LOWER_IS_BETTER = {"wer", "cer", "perplexity"}


@torch.no_grad()
def answer_nll(model, batch: dict) -> tuple[float, int]:
    """(summed negative log-likelihood, tokens) of the labelled tokens of a batch."""
    labels = batch.pop("labels")[:, 1:]
    logits = model(**batch).logits[:, :-1]
    mask = labels != -100
    return float(torch.nn.functional.cross_entropy(logits[mask].float(), labels[mask], reduction="sum")), int(
        mask.sum()
    )


def by_task(rows: list[dict]) -> dict[str, list[dict]]:
    out = defaultdict(list)
    for row in rows:
        out[row["task"]].append(row)
    return dict(out)


def quality(task: str, predictions: list[str], references: list[str]) -> dict:
    if not predictions:
        return {}
    if task == "transcription":
        rates = error_rates(references, predictions)
        return {k: rates[k] for k in ("wer", "cer") if k in rates}
    return rouge(predictions, references, ("rougeL",) if task == "next_turn" else ("rouge1", "rouge2", "rougeL"))


def _scores(task: str, nll: float, tokens: int, rows: list[dict], predictions: list[str]) -> dict:
    refs = [r["completion"] for r in rows[: len(predictions)]]
    out = {"rows": len(rows), "generations": len(predictions), **quality(task, predictions, refs)}
    if tokens:
        out["perplexity"] = math.exp(nll / tokens)
    out["samples"] = [
        {"id": r["id"], "prediction": p, "reference": r["completion"]} for r, p in zip(rows[:2], predictions[:2])
    ]
    return out


@torch.no_grad()
def speech_llm_scores(model, processor, rows: list[dict], *, end: str | None, generations: int, max_new_tokens: int):
    """{task: scores} of the speech-text model, from the audio itself."""
    teacher = SpeechCollator(processor, None, end)
    prompts = SpeechCollator(processor, None, end, answers=False)
    prompts.audio = teacher.audio  # one decoded copy of each file
    out = {}
    for task, task_rows in by_task(rows).items():
        nll = tokens = 0
        for row in task_rows:
            n, t = answer_nll(model, teacher([row]))
            nll, tokens = nll + n, tokens + t
        predictions = []
        for row in task_rows[:generations]:
            batch = prompts([row])
            batch.pop("labels")
            new = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
            predictions.append(processor.tokenizer.decode(new[0], skip_special_tokens=True).strip())
        out[task] = _scores(task, nll, tokens, task_rows, predictions)
    return out


@torch.no_grad()
def cascade_scores(transcriber, lm, tokenizer, rows: list[dict], *, end, generations: int, max_new_tokens: int):
    """{task: scores} of the cascade: Whisper's transcript of each row's audio, then the text model."""
    audio = AudioCache()
    transcripts = dict(zip((r["id"] for r in rows), transcriber.clips([audio.clip(r) for r in rows], batch_size=8)))
    out = {}
    for task, task_rows in by_task(rows).items():
        said = [transcripts[r["id"]] for r in task_rows]
        if task == "transcription":  # the cascade's transcription is Whisper's: nothing for the text model to do
            out[task] = _scores(task, 0.0, 0, task_rows, said[:generations])
            continue
        nll = tokens = 0
        predictions = []
        for i, (row, transcript) in enumerate(zip(task_rows, said)):
            chat = [{"role": "user", "content": f"{transcript}\n{row['prompt']}"}]  # the transcript where the audio was
            text = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            prompt = tokenizer(text, add_special_tokens=False)["input_ids"]
            answer = tokenizer(row["completion"] + (end or ""), add_special_tokens=False)["input_ids"]
            ids, labels = with_answer(prompt, answer, None)
            n, t = answer_nll(lm, pad([ids], [labels], tokenizer.pad_token_id))
            nll, tokens = nll + n, tokens + t
            if i < generations:
                ids = torch.tensor([prompt])
                new = lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens)
                predictions.append(tokenizer.decode(new[0, ids.shape[1] :], skip_special_tokens=True).strip())
        out[task] = _scores(task, nll, tokens, task_rows, predictions)
    return out


def comparison(speech: dict, cascade: dict) -> list[dict]:
    """One row per (task, metric) both systems have: values, which is better, and by how much (relative)."""
    rows = []
    for task, ours in speech.items():
        theirs = cascade.get(task, {})
        for metric, value in ours.items():
            if metric in ("rows", "generations", "samples") or metric not in theirs:
                continue
            other = theirs[metric]
            lower = metric in LOWER_IS_BETTER
            better = "tie" if value == other else "speech-llm" if (value < other) == lower else "cascade"
            rows.append(
                {
                    "task": task,
                    "metric": metric,
                    "speech-llm": value,
                    "cascade": other,
                    "better": better,
                    "relative": (value - other) / other if other else None,
                }
            )
    return rows


def comparison_md(rows: list[dict]) -> str:
    lines = ["| task | metric | speech-text model | cascade | better | difference |", "|---|---|---:|---:|---|---:|"]
    for r in rows:
        diff = "-" if r["relative"] is None else f"{r['relative']:+.1%}"
        lines.append(
            f"| {r['task']} | {r['metric']} | {r['speech-llm']:.4g} | {r['cascade']:.4g} | {r['better']} | {diff} |"
        )
    return "\n".join(lines)
