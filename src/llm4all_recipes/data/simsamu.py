"""Dialogues from simulated French SAMU calls in the layout of the Hub dataset `medkit/simsamu` (MIT).

Layout (one folder per call, named after its situation, plus root tables):

    dj_2022_feu/dj_2022_feu.{json,rttm,srt,m4a}    Rev-like JSON transcript, RTTM turns, SRT text, 8 kHz audio
    metadata.csv                                     rec_name,medecin,patient   (actor ids per role)
    simsamu_communication_modes.csv                  ,dialogue,role             (the caller's mode)
    summaries.jsonl                                  optional: {"id": <call>, "summary": <fiche de régulation>}

Dialogues come from the JSON: `monologues[]` with `speaker.id` and `terms[]` (`type` WORD or PUNCTUATION).
`medecin` is the regulator (assistant); `patient`, `patient_<n>` and `appelant` are callers (user); the
labels in `skip_speakers` (default `inintelligible`) and monologues whose words are all empty (the `<NA>`
items of the SRT) are skipped and counted; any other speaker is an error naming the file and the
monologue. Consecutive monologues of one role are merged into one turn. The RTTM is only checked
against the JSON (same speakers in the same order); disagreements are counted in the report.
"""

import csv
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import RecipeError
from .splits import grouped_splits
from .templates import render_prompt

logger = logging.getLogger(__name__)

REGULATOR = "medecin"
CALLER = re.compile(r"^(patient(_\d+)?|appelant)$")
MODES = ("Angry", "Shy", "Cooperative", "Incomprehensible", "Procedural", "Frightened", "Impassive")
_PREFIX = re.compile(
    r"^dj_(\d{4}|janvier|fevrier|février|mars|avril|mai|juin|juillet|aout|août|septembre|octobre|novembre|"
    r"decembre|décembre)_",
    re.IGNORECASE,
)
NA = "<NA>"


def situation_of(call_id: str) -> str:
    """`dj_2022_douleur_thoracique` -> `douleur_thoracique`, `dj_mai_da_dt` -> `da_dt`."""
    name = _PREFIX.sub("", call_id)
    return name.removeprefix("dj_") if name == call_id else name


@dataclass
class Call:
    id: str
    turns: list[dict[str, str]]  # [{"role": "assistant"|"user", "content": str}]
    duration: float
    skipped: Counter = field(default_factory=Counter)  # what was left out on purpose, by reason
    rttm_mismatch: bool = False


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(
            "missing file (every call folder holds <name>.json, .rttm and .srt)", source=str(path)
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecipeError(f"corrupt JSON: {exc}", source=str(path), line=getattr(exc, "lineno", None)) from None


def _role(speaker: str, skip: set[str], where: str, source: Path, line: int | None = None) -> str | None:
    if speaker == REGULATOR:
        return "assistant"
    if CALLER.match(speaker):
        return "user"
    if speaker in skip:
        return None
    raise RecipeError(
        f"{where}: unknown speaker id {speaker!r} (expected medecin, patient, patient_<n> or appelant; "
        f"labels to skip go in `skip_speakers`)",
        source=str(source),
        line=line,
    )


def _words(terms: list[dict], punctuation: bool) -> str:
    text = ""
    for term in terms:
        word = str(term.get("text", "")).strip()
        if not word:
            continue
        if term.get("type") == "WORD":
            text += (" " if text else "") + word
        elif punctuation:
            text += word
    return text


def read_call(folder: Path, *, skip_speakers: set[str], punctuation: bool) -> Call:
    """One call from its folder; errors name the file and the monologue index."""
    name = folder.name
    path = folder / f"{name}.json"
    data = _read_json(path)
    monologues = data.get("monologues") if isinstance(data, dict) else None
    if not isinstance(monologues, list):
        raise RecipeError("corrupt transcript: no `monologues` list", source=str(path))
    turns: list[dict[str, str]] = []
    skipped: Counter = Counter()
    speakers, end = [], 0.0
    for i, mono in enumerate(monologues):
        where = f"monologues[{i}]"
        try:
            speaker = str(mono["speaker"]["id"])
            terms = mono["terms"]
        except (KeyError, TypeError):
            raise RecipeError(f"{where}: expected speaker.id and terms", source=str(path)) from None
        role = _role(speaker, skip_speakers, where, path)
        speakers.append(speaker)
        ends = [t.get("end") for t in terms if isinstance(t.get("end"), int | float)]
        end = max([end, *ends])
        if role is None:
            skipped[f"speaker {speaker}"] += 1
            continue
        text = _words(terms, punctuation)
        if not _words(terms, False):
            skipped["untranscribed (<NA>) segment"] += 1
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] += " " + text
        else:
            turns.append({"role": role, "content": text})
    if not turns:
        raise RecipeError("empty call: no transcribed words", source=str(path))
    call = Call(name, turns, round(end, 2), skipped)
    call.rttm_mismatch = _rttm_speakers(folder / f"{name}.rttm", skip_speakers) != speakers
    skipped["SRT <NA> items"] += _srt_na_items(folder / f"{name}.srt")
    return call


def _rttm_speakers(path: Path, skip: set[str]) -> list[str]:
    if not path.is_file():
        raise RecipeError("missing file (every call folder holds <name>.json, .rttm and .srt)", source=str(path))
    speakers = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) < 8 or fields[0] != "SPEAKER":
            raise RecipeError(
                "malformed RTTM line (expected SPEAKER <file> <chan> <start> <dur> ...)",
                source=str(path),
                line=lineno,
            )
        _role(fields[7], skip, "speaker column", path, lineno)  # unknown ids are errors here too
        speakers.append(fields[7])
    return speakers


def _srt_na_items(path: Path) -> int:
    if not path.is_file():
        raise RecipeError("missing file (every call folder holds <name>.json, .rttm and .srt)", source=str(path))
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip() == NA)


def _read_csv(path: Path, key: str, value: str | tuple[str, ...]) -> dict[str, Any]:
    if not path.is_file():
        raise RecipeError(f"missing file (the simsamu layout has {path.name} at its root)", source=str(path))
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        needed = [key, *([value] if isinstance(value, str) else value)]
        if reader.fieldnames is None or any(c not in reader.fieldnames for c in needed):
            raise RecipeError(f"expected columns {needed}, found {reader.fieldnames}", source=str(path), line=1)
        out = {}
        for lineno, row in enumerate(reader, 2):
            out[row[key]] = (lineno, row[value] if isinstance(value, str) else {v: row[v] for v in value})
        return out


def read_summaries(path: Path, call_ids: set[str]) -> dict[str, str]:
    """summaries.jsonl: {"id": call, "summary": text}; unknown calls and bad lines are errors (file:line)."""
    out = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            call, text = row["id"], row["summary"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise RecipeError(
                'expected a JSON object {"id": ..., "summary": ...}', source=str(path), line=lineno
            ) from None
        if call not in call_ids:
            raise RecipeError(f"summary for an unknown call {call!r}", source=str(path), line=lineno)
        out[call] = text
    return out


def call_folders(root: Path) -> list[Path]:
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise RecipeError("no call folder (expected <situation>/<situation>.json ...)", source=str(root))
    return folders


def transcript_text(turns: list[dict[str, str]]) -> str:
    """`Régulateur : …` / `Appelant : …` lines (a turn without a role, as ASR output without diarisation: its text)."""
    names = {"assistant": "Régulateur", "user": "Appelant"}
    return "\n".join(f"{names[t['role']]} : {t['content']}" if t.get("role") in names else t["content"] for t in turns)


def read_tables(root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(actors, communication modes) of the root tables: {call: (line, value)}; errors name file:line."""
    actors = _read_csv(root / "metadata.csv", "rec_name", ("medecin", "patient"))
    modes = _read_csv(root / "simsamu_communication_modes.csv", "dialogue", "role")
    for lineno, mode in modes.values():
        if mode not in MODES:
            raise RecipeError(
                f"unknown communication mode {mode!r} (expected one of {', '.join(MODES)})",
                source=str(root / "simsamu_communication_modes.csv"),
                line=lineno,
            )
    return actors, modes


def build_rows(
    root: Path,
    *,
    task: str = "dialogue",
    per_turn: bool = False,
    summaries: Path | None = None,
    skip_speakers: tuple[str, ...] = ("inintelligible",),
    punctuation: bool = True,
    calls: list[Call] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(rows, report). One row per call, or per regulator turn with its history (`per_turn`). `calls` replaces
    the calls read from the JSON transcripts (transcribe: the ASR output of the recordings)."""
    if calls is None:
        calls = [read_call(f, skip_speakers=set(skip_speakers), punctuation=punctuation) for f in call_folders(root)]
    ids = {c.id for c in calls}
    actors, modes = read_tables(root)
    texts = read_summaries(summaries, ids) if summaries else {}
    system = render_prompt("simsamu_system")
    rows, report = (
        [],
        {
            "calls": len(calls),
            "skipped": Counter(),
            "rttm_mismatches": [],
            "without_summary": [],
            "situations": {c.id: situation_of(c.id) for c in calls},
        },
    )
    for call in calls:
        report["skipped"].update(call.skipped)
        if call.rttm_mismatch:
            report["rttm_mismatches"].append(call.id)
        base = {
            "id": call.id,
            "situation": situation_of(call.id),
            "communication_mode": modes.get(call.id, (0, None))[1],
            "regulator_actor": actors.get(call.id, (0, {}))[1].get("medecin"),
            "caller_actor": actors.get(call.id, (0, {}))[1].get("patient"),
            "duration": call.duration,
            "num_turns": len(call.turns),
            "summary": texts.get(call.id),
        }
        if task == "transcript":
            if call.id not in texts:
                report["without_summary"].append(call.id)
            rows.append({**base, "transcript": transcript_text(call.turns), "text": transcript_text(call.turns)})
        elif task == "summary":
            if call.id not in texts:
                report["without_summary"].append(call.id)
                continue
            prompt = render_prompt("simsamu_summary", transcript=transcript_text(call.turns))
            rows.append(
                {
                    **base,
                    "messages": [
                        {"role": "user", "content": prompt},
                        {"role": "assistant", "content": texts[call.id]},
                    ],
                }
            )
        elif per_turn:
            history = [{"role": "system", "content": system}]
            for k, turn in enumerate(call.turns):
                if turn["role"] == "assistant":
                    rows.append(
                        {
                            **base,
                            "id": f"{call.id}#{k}",
                            "messages": [*history, turn],
                            "prompt": list(history),
                            "completion": [turn],
                        }
                    )
                history = [*history, turn]
        else:
            rows.append({**base, "messages": [{"role": "system", "content": system}, *call.turns]})
    report["skipped"] = dict(report["skipped"])
    if report["rttm_mismatches"]:
        logger.warning(
            "RTTM and JSON disagree on the speakers of %d call(s): %s",
            len(report["rttm_mismatches"]),
            report["rttm_mismatches"],
        )
    return rows, report


def split_calls(recipe, rows: list[dict], report: dict) -> tuple[dict[str, list[dict]], dict]:
    """simsamu rows into splits by situation. Splits are drawn over *all* calls (`report["situations"]`), so that
    every task variant (per call, per turn, summaries; references or ASR transcripts) puts a call in the same
    split: no situation leaks from one variant's train into another's test."""
    calls = list(report.pop("situations").items())
    parts = grouped_splits([s for _, s in calls], recipe.splits, recipe.seed, recipe.folds, recipe.fold)
    split_of = {calls[i][0]: name for name, idx in parts.items() for i in idx}
    report["group"] = "situation"
    report["splits_from"] = f"{recipe.folds}-fold, fold {recipe.fold}" if recipe.folds else "shares"
    return {name: [r for r in rows if split_of[r["id"].split("#")[0]] == name] for name in parts}, report


def build(recipe, source: str) -> tuple[dict[str, list[dict]], dict]:
    """The `simsamu` dataset builder (build-dataset): ({split: rows}, report), calls split by situation."""
    root = Path(source)
    summaries = Path(recipe.summaries) if recipe.summaries else root / "summaries.jsonl"
    rows, report = build_rows(
        root,
        task=recipe.task,
        per_turn=recipe.per_turn,
        summaries=summaries if summaries.is_file() else None,
        skip_speakers=tuple(recipe.skip_speakers),
        punctuation=recipe.punctuation,
    )
    return split_calls(recipe, rows, report)


def row_columns(task: str, per_turn: bool) -> dict[str, str]:
    """The columns of simsamu rows (build-dataset from transcripts, transcribe from recordings)."""
    columns = {
        "id": "call folder name" + (" + `#` + turn index" if per_turn else ""),
        "situation": "simulated situation (grouping key of the splits)",
        "communication_mode": "caller's communication mode (Angry, Shy, Cooperative, ...)",
        "regulator_actor / caller_actor": "actor ids of the roles",
        "duration": "seconds",
        "num_turns": "turns after merging",
        "summary": "fiche de régulation, when `summaries.jsonl` has one",
    }
    if task == "transcript":
        columns.update(transcript="`Régulateur : …` / `Appelant : …` lines", text="the same (for text stages)")
    else:
        columns["messages"] = "chat: system prompt, then the call (regulator = assistant)"
    if per_turn:
        columns["prompt / completion"] = "history / the regulator turn to predict"
    return columns


def card_facts(recipe, report: dict[str, Any]) -> dict[str, Any]:
    """What the dataset card says of these rows: summary, processing steps, columns."""
    task = {
        "dialogue": "one row per regulator turn with its history" if recipe.per_turn else "one row per call",
        "summary": "transcript → fiche de régulation, one row per call that has a summary",
        "transcript": "one row per call, its transcript (`Régulateur : …` / `Appelant : …` lines) as `text`",
    }[recipe.task]
    steps = [
        "Read each call's Rev-like JSON transcript (`monologues[].terms[]`), keeping WORD terms"
        + (" and punctuation" if recipe.punctuation else "")
        + ".",
        "Speakers: `medecin` → regulator (`assistant`); `patient`, `patient_<n>`, `appelant` → caller "
        f"(`user`); skipped labels: {', '.join(recipe.skip_speakers) or 'none'}; any other label is an error.",
        "Monologues without words (the `<NA>` items) are left out and counted; consecutive monologues of one "
        "role are merged into one turn.",
        "The RTTM file of each call is checked against the JSON (same speakers in the same order): "
        f"{len(report['rttm_mismatches'])} call(s) disagree"
        + (f" ({', '.join(report['rttm_mismatches'])})" if report["rttm_mismatches"] else "")
        + ".",
        "Labels: situation (the folder name without `dj_` and its year/month token), communication mode "
        "(`simsamu_communication_modes.csv`), actor ids (`metadata.csv`).",
        f"Task: {task}; the French system prompt is `data/prompts/simsamu_system.jinja`.",
    ]
    columns = row_columns(recipe.task, recipe.per_turn)
    return {
        "summary": f"Simulated French emergency calls to the SAMU (centre 15), as "
        f"{'transcripts' if recipe.task == 'transcript' else 'chat data'} ({task}).",
        "steps": steps,
        "columns": columns,
        "license": recipe.license or "mit",
        "task_categories": ["summarization", "text-generation"] if recipe.task == "summary" else ["text-generation"],
        "note": "the source calls were played by actors; no real patient data",
    }
