"""What `speech-sft` trains on: rows of (audio span, instruction, answer) built from recordings, and the collator
that turns them into a speech-text model's inputs (audio decoded and cut at batch time, loss on the answer only).

Tasks, from a simsamu-layout call (RTTM turns, SRT references):
- transcription: each turn with a reference -> that reference;
- next_turn: each caller turn directly followed by a regulator turn -> the regulator's reference (what to answer);
- fiche: the whole call -> its summary (`summaries`).
A manifest's rows (`audio` + `text`) give transcription rows, in the manifest's own splits.
"""

from collections import Counter
from functools import lru_cache

import numpy as np

from ..data import simsamu
from .audio import SAMPLING_RATE, cut, decode
from .sources import Recording


def call_rows(rec: Recording, tasks: list[str], prompts: dict, summaries: dict, skip: set[str]) -> list[dict]:
    """The rows of one simsamu call (ids `<call>#<task>-<k>`, so split_calls finds the call)."""
    rows = []

    def add(task: str, start: float | None, end: float | None, completion: str | None) -> None:
        if completion and completion.strip():
            rows.append(
                {
                    "id": f"{rec.id}#{task}-{sum(r['task'] == task for r in rows)}",
                    "task": task,
                    "audio": str(rec.audio),
                    "start": start,
                    "end": end,
                    "prompt": prompts[task],
                    "completion": completion.strip(),
                }
            )

    turns = rec.segments or []
    roles = [simsamu._role(t.speaker, skip, "speaker", rec.audio) if t.speaker else None for t in turns]
    for i, turn in enumerate(turns):
        if "transcription" in tasks:
            add("transcription", turn.start, turn.end, turn.reference)
        if "next_turn" in tasks and roles[i] == "user" and i + 1 < len(turns) and roles[i + 1] == "assistant":
            add("next_turn", turn.start, turn.end, turns[i + 1].reference)
    if "fiche" in tasks:
        add("fiche", None, None, summaries.get(rec.id))
    return rows


def manifest_rows(recordings: list[Recording], prompts: dict) -> dict[str, list[dict]]:
    """{split: transcription rows} of a manifest (its files are its splits)."""
    out: dict[str, list[dict]] = {}
    for rec in recordings:
        if rec.reference and rec.reference.strip():
            out.setdefault(rec.split or "train", []).append(
                {
                    "id": rec.id,
                    "task": "transcription",
                    "audio": str(rec.audio),
                    "start": None,
                    "end": None,
                    "prompt": prompts["transcription"],
                    "completion": rec.reference.strip(),
                }
            )
    return out


def seconds(row: dict) -> float | None:
    """The row's audio length when its span is known (a turn), else None (a whole file)."""
    return None if row["start"] is None else row["end"] - row["start"]


def too_long(splits: dict[str, list[dict]], limit: float, report: dict) -> dict[str, list[dict]]:
    """Rows whose known audio span is longer than `limit` seconds left out (counted in report["skipped"])."""
    skipped = Counter()
    out = {}
    for name, rows in splits.items():
        out[name] = [r for r in rows if (seconds(r) or 0) <= limit]
        skipped[f"rows with more than {limit:g} s of audio"] += len(rows) - len(out[name])
    report.setdefault("skipped", Counter()).update(+skipped)
    return out


class SpeechCollator:
    """Rows -> {input_ids, attention_mask, labels, input_features, feature_attention_mask}: the user turn holds the
    audio placeholder then the instruction (the model's chat template), the answer follows with the template's
    end-of-turn marker; labels are -100 except on the answer. Prompt and answer are tokenised apart (no merge
    across the boundary); a sequence longer than `max_length` loses the end of its answer, never its audio."""

    def __init__(self, processor, max_length: int | None, end_of_turn: str | None):
        self.processor, self.max_length, self.end = processor, max_length, end_of_turn or ""
        self.decode = lru_cache(maxsize=8)(lambda path: decode(path))

    def samples(self, row: dict):
        audio = self.decode(row["audio"])
        return audio if row["start"] is None else cut(audio, row["start"], row["end"])

    def __call__(self, rows: list[dict]) -> dict:
        import torch

        tokenizer = self.processor.tokenizer
        clips = [self.samples(r) for r in rows]
        clips = [c if len(c) else np.zeros(SAMPLING_RATE // 100, np.float32) for c in clips]  # an empty span: 10 ms
        prompts = [
            self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "\n" + r["prompt"]}]}],
                add_generation_prompt=True,
            )
            for r in rows
        ]
        encoded = self.processor(text=prompts, audio=clips, padding=False, return_tensors=None)
        sequences, labels = [], []
        for prompt_ids, row in zip(encoded["input_ids"], rows):
            answer = tokenizer(row["completion"] + self.end, add_special_tokens=False)["input_ids"]
            ids = list(prompt_ids) + answer
            target = [-100] * len(prompt_ids) + answer
            if self.max_length and len(ids) > self.max_length:  # the answer's end goes, never the audio
                keep = max(self.max_length, len(prompt_ids) + 1)
                ids, target = ids[:keep], target[:keep]
            sequences.append(ids)
            labels.append(target)
        width = max(len(s) for s in sequences)
        pad = tokenizer.pad_token_id
        return {
            "input_ids": torch.tensor([s + [pad] * (width - len(s)) for s in sequences]),
            "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences]),
            "labels": torch.tensor([t + [-100] * (width - len(t)) for t in labels]),
            "input_features": encoded["input_features"],
            "feature_attention_mask": encoded["feature_attention_mask"],
        }
