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
from pathlib import Path

import numpy as np

from ..data import simsamu
from ..errors import RecipeError
from .audio import SAMPLING_RATE, cut, decode
from .sources import Recording, read_source


def speech_rows(root: Path, recipe) -> tuple[dict[str, list[dict]], dict]:
    """({split: rows}, report) of a local source for the recipe's `tasks` (speech-sft, eval): simsamu calls split by
    situation (`splits`, `seed`, `folds`), a manifest in its own splits; rows over `max_audio_seconds` left out."""
    need = "task next_turn" if "next_turn" in recipe.tasks else None
    skip = set(recipe.skip_speakers)
    recordings, report = read_source(root, skip_speakers=skip, summaries=recipe.summaries, need_turns=need)
    if report["layout"] == "manifest":
        if list(recipe.tasks) != ["transcription"]:
            raise RecipeError("an audio manifest gives transcription rows only", key="tasks")
        splits = manifest_rows(recordings, recipe.prompts)
    else:
        summary_file = Path(recipe.summaries) if recipe.summaries else root / "summaries.jsonl"
        if "fiche" in recipe.tasks and not summary_file.is_file():
            raise RecipeError(f"task fiche needs summaries: no {summary_file}", key="summaries")
        fiches = simsamu.read_summaries(summary_file, set(report["situations"])) if "fiche" in recipe.tasks else {}
        rows = [row for rec in recordings for row in call_rows(rec, recipe.tasks, recipe.prompts, fiches, skip)]
        splits, report = simsamu.split_calls(recipe, rows, report)
    splits = too_long(splits, recipe.max_audio_seconds, report)
    report["rows"] = {name: dict(Counter(r["task"] for r in rows)) for name, rows in splits.items()}
    report["skipped"] = dict(report.get("skipped", {}))
    return splits, report


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


class AudioCache:
    """A row's audio: its file decoded once (the last few files kept), cut to the row's span."""

    def __init__(self, files: int = 8):
        self.decode = lru_cache(maxsize=files)(lambda path: decode(path))

    def clip(self, row: dict) -> np.ndarray:
        audio = self.decode(row["audio"])
        clip = audio if row["start"] is None else cut(audio, row["start"], row["end"])
        return clip if len(clip) else np.zeros(SAMPLING_RATE // 100, np.float32)  # an empty span: 10 ms


def user_turn(prompt: str) -> list[dict]:
    """The user message of a row: the audio placeholder, then the instruction on its own line."""
    return [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "\n" + prompt}]}]


def with_answer(prompt_ids: list[int], answer: list[int], max_length: int | None) -> tuple[list[int], list[int]]:
    """(input ids, labels): the prompt masked (-100), the answer learnt; past `max_length` the answer's end is cut,
    never the prompt (its audio placeholders must all be there)."""
    ids, labels = list(prompt_ids) + answer, [-100] * len(prompt_ids) + answer
    if max_length and len(ids) > max_length:
        keep = max(max_length, len(prompt_ids) + 1)
        ids, labels = ids[:keep], labels[:keep]
    return ids, labels


def pad(sequences: list[list[int]], labels: list[list[int]], pad_id: int) -> dict:
    import torch

    width = max(len(s) for s in sequences)
    return {
        "input_ids": torch.tensor([s + [pad_id] * (width - len(s)) for s in sequences]),
        "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences]),
        "labels": torch.tensor([t + [-100] * (width - len(t)) for t in labels]),
    }


class SpeechCollator:
    """Rows -> {input_ids, attention_mask, labels, input_features, feature_attention_mask}: the user turn holds the
    audio placeholder then the instruction (the model's chat template), the answer follows with the template's
    end-of-turn marker; labels are -100 except on the answer. Prompt and answer are tokenised apart (no merge
    across the boundary); a sequence longer than `max_length` loses the end of its answer, never its audio.
    `answers=False`: the prompts alone (for generate)."""

    def __init__(self, processor, max_length: int | None, end_of_turn: str | None, answers: bool = True):
        self.processor, self.max_length, self.end = processor, max_length, end_of_turn or ""
        self.audio, self.answers = AudioCache(), answers

    def __call__(self, rows: list[dict]) -> dict:
        tokenizer = self.processor.tokenizer
        prompts = [self.processor.apply_chat_template(user_turn(r["prompt"]), add_generation_prompt=True) for r in rows]
        clips = [self.audio.clip(r) for r in rows]
        encoded = self.processor(text=prompts, audio=clips, padding=False, return_tensors=None)
        sequences, labels = [], []
        for prompt_ids, row in zip(encoded["input_ids"], rows):
            answer = (
                tokenizer(row["completion"] + self.end, add_special_tokens=False)["input_ids"] if self.answers else []
            )
            ids, target = with_answer(prompt_ids, answer, self.max_length)
            sequences.append(ids)
            labels.append(target)
        audio = {k: encoded[k] for k in ("input_features", "feature_attention_mask")}
        return {**pad(sequences, labels, tokenizer.pad_token_id), **audio}
