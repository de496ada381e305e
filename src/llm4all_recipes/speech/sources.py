"""What `transcribe` reads: recordings and, when present, their turns and reference text.

Two sources:

- a **simsamu-layout folder** (`medkit/simsamu`): one folder per call holding `<call>.m4a` (or .wav, .flac ...),
  and optionally `<call>.rttm` (diarisation: speaker turns) and `<call>.srt` (reference text per turn). The
  recording is cut along the RTTM turns (speaker labels kept), each turn's reference being the text of the SRT
  cues it overlaps most; without an RTTM, along the SRT cues (no speaker); with neither, the whole recording is
  transcribed long-form with timestamps (its reference, if any, from `<call>.json`'s words).
- a **manifest**: a `.jsonl` file (or a folder of them, one split per file) whose rows have an `audio` path
  (relative to the file) and optionally `text` (the reference) and `id`; or a `save_to_disk` dataset with an
  `audio` column (paths or the datasets Audio feature's {path, bytes}) — the rows keep their other columns.
"""

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import RecipeError
from .audio import find_audio

NA = "<NA>"
_SRT_TIME = re.compile(r"(\d+):(\d\d):(\d\d)[,.](\d{1,3})\s*-->\s*(\d+):(\d\d):(\d\d)[,.](\d{1,3})")


@dataclass
class Segment:
    start: float
    end: float
    speaker: str | None = None
    reference: str | None = None  # None: no reference text (no SRT, or an untranscribed <NA> cue)
    text: str = ""  # the transcription


@dataclass
class Recording:
    id: str
    audio: Path | None  # None: a call folder without audio (reported, not transcribed)
    segments: list[Segment] | None  # None: long-form (no turns known)
    reference: str | None = None  # long-form: the whole recording's reference
    split: str | None = None  # manifests: the split (file) it comes from
    row: dict = field(default_factory=dict)  # manifests: the source row (its `audio` as the source writes it)
    audio_bytes: bytes | None = None  # a dataset's embedded audio (the Audio feature's `bytes`)

    @property
    def audio_source(self) -> Path | bytes | None:
        return self.audio_bytes if self.audio_bytes is not None else self.audio


def read_rttm(path: Path) -> list[tuple[float, float, str]]:
    """(start, end, speaker) turns of an RTTM file, in time order; malformed lines name the file:line."""
    turns = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split()
        try:
            if len(fields) < 8 or fields[0] != "SPEAKER":
                raise ValueError
            start, duration = float(fields[3]), float(fields[4])
        except ValueError:
            raise RecipeError(
                "malformed RTTM line (expected SPEAKER <file> <chan> <start> <dur> <NA> <NA> <speaker> ...)",
                source=str(path),
                line=lineno,
            ) from None
        turns.append((start, start + duration, fields[7]))
    return sorted(turns)


def read_srt(path: Path) -> list[tuple[float, float, str]]:
    """(start, end, text) cues of an SRT file; malformed timings name the file:line."""
    cues, lines = [], path.read_text(encoding="utf-8-sig").splitlines()
    i = 0
    while i < len(lines):
        match = _SRT_TIME.search(lines[i])
        if not match:
            if "-->" in lines[i]:
                raise RecipeError("malformed SRT timing", source=str(path), line=i + 1)
            i += 1
            continue
        g = [int(x) for x in match.groups()]
        start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000
        end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000
        text = []
        i += 1
        while i < len(lines) and lines[i].strip():
            text.append(lines[i].strip())
            i += 1
        cues.append((start, end, " ".join(text)))
    return cues


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def turn_references(turns: list[tuple[float, float, str]], cues: list[tuple[float, float, str]]) -> list[str | None]:
    """Each cue goes to the turn it overlaps most; a turn's reference is its cues' text (None if it has none,
    or only untranscribed <NA> cues)."""
    texts: list[list[str]] = [[] for _ in turns]
    for cue in cues:
        best = max(range(len(turns)), key=lambda k: _overlap(turns[k][:2], cue[:2]), default=None)
        if best is not None and _overlap(turns[best][:2], cue[:2]) > 0 and cue[2].strip() != NA:
            texts[best].append(cue[2])
    return [" ".join(t) if t else None for t in texts]


def _json_reference(path: Path) -> str | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        words = [
            str(t.get("text", "")).strip() for m in data["monologues"] for t in m["terms"] if t.get("type") == "WORD"
        ]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return " ".join(w for w in words if w) or None


def call_recording(folder: Path, skip_speakers: set[str]) -> tuple[Recording, int]:
    """One call folder as a Recording, and how many turns were skipped (their speaker is in skip_speakers)."""
    name = folder.name
    rttm, srt = folder / f"{name}.rttm", folder / f"{name}.srt"
    cues = read_srt(srt) if srt.is_file() else []
    skipped = 0
    if rttm.is_file():
        turns = read_rttm(rttm)
        refs = turn_references(turns, cues) if cues else [None] * len(turns)
        segments = []
        for (start, end, speaker), ref in zip(turns, refs):
            if speaker in skip_speakers:
                skipped += 1
                continue
            segments.append(Segment(start, end, speaker, ref))
        return Recording(name, find_audio(folder), segments), skipped
    if cues:
        segments = [Segment(s, e, None, None if t.strip() == NA else t) for s, e, t in cues]
        return Recording(name, find_audio(folder), segments), 0
    return Recording(name, find_audio(folder), None, _json_reference(folder / f"{name}.json")), 0


def manifest_recordings(source: Path) -> list[Recording]:
    """Rows of a jsonl manifest (or a folder of them: one split per file) or of a save_to_disk dataset."""
    if source.is_dir() and ((source / "dataset_info.json").is_file() or (source / "dataset_dict.json").is_file()):
        return _dataset_recordings(source)
    files = sorted(source.glob("*.jsonl")) if source.is_dir() else [source]
    if not files or source.suffix in (
        ".parquet",
        ".csv",
    ):  # a Hub dataset's files (parquet), read by `datasets`
        return _dataset_recordings(source)
    out = []
    for file in files:
        for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                audio = row["audio"]
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                raise RecipeError(
                    'expected a JSON object with an "audio" path', source=str(file), line=lineno
                ) from None
            path = Path(audio if isinstance(audio, str) else audio.get("path", ""))
            out.append(_row_recording(row, file.parent / path, f"{file.stem}-{lineno}", file.stem))
    return out


def _row_recording(row: dict, audio: Path, default_id: str, split: str) -> Recording:
    reference = row.get("text") if isinstance(row.get("text"), str) else None
    return Recording(str(row.get("id", default_id)), audio, None, reference, split, row)


def _dataset_recordings(source: Path) -> list[Recording]:
    """A save_to_disk dataset, or any layout `datasets.load_dataset` reads (a Hub dataset's parquet files)."""
    import datasets

    try:
        if (source / "dataset_info.json").is_file() or (source / "dataset_dict.json").is_file():
            loaded = datasets.load_from_disk(str(source))
        else:
            loaded = datasets.load_dataset(str(source))
    except (OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise RecipeError(
            f"neither a call folder, a .jsonl manifest nor a dataset with an `audio` column ({exc})",
            source=str(source),
        ) from None
    splits = loaded if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    base = source if source.is_dir() else source.parent  # relative audio paths start there
    out = []
    for split, ds in splits.items():
        if "audio" not in ds.column_names:
            raise RecipeError(f"split {split!r} has no `audio` column", source=str(source))
        ds = ds.cast_column("audio", datasets.Audio(decode=False)) if "audio" in ds.features else ds
        for k, row in enumerate(ds):
            audio = row.pop("audio")
            path = Path(audio if isinstance(audio, str) else (audio or {}).get("path") or f"{split}-{k}")
            row["audio"] = audio if isinstance(audio, str) else (audio or {}).get("path")  # as the source has it
            recording = _row_recording(row, path if path.is_absolute() else base / path, f"{split}-{k}", split)
            if isinstance(audio, dict) and audio.get("bytes"):
                recording.audio_bytes = audio["bytes"]
            out.append(recording)
    return out


def is_call_layout(root: Path) -> bool:
    """A simsamu-layout folder: call folders at its root (`metadata.csv` or a `<name>/<name>.*` file)."""
    if not root.is_dir():
        return False
    if (root / "metadata.csv").is_file():
        return True
    return any(p.is_dir() and any(p.glob(f"{p.name}.*")) for p in root.iterdir())


def read_source(
    root: Path, *, skip_speakers: set[str], summaries: str | None, need_turns: str | None
) -> tuple[list[Recording], dict]:
    """(recordings, report) of a simsamu-layout folder or a manifest, with every problem of the layout found before
    any model loads: root tables and summaries are errors (they concern every call); a call's own files are counted
    failures. `need_turns` (what needs them, e.g. `task dialogue`): calls without speaker turns (RTTM) are counted
    and left out."""
    from collections import Counter

    from ..data import simsamu

    report = {"layout": "simsamu" if is_call_layout(root) else "manifest", "failed": {}, "skipped": Counter()}
    if report["layout"] == "manifest":
        recordings = manifest_recordings(root)
        seen = Counter(r.id for r in recordings)
        if dupes := [k for k, n in seen.items() if n > 1]:
            raise RecipeError(f"ids must be unique across files and splits; repeated: {dupes[:5]}", source=str(root))
        return recordings, report
    folders = simsamu.call_folders(root)
    simsamu.read_tables(root)
    summary_file = Path(summaries) if summaries else root / "summaries.jsonl"
    if summary_file.is_file():
        simsamu.read_summaries(summary_file, {f.name for f in folders})
    recordings = []
    for folder in folders:
        try:
            recording, skipped = call_recording(folder, skip_speakers)
        except RecipeError as err:
            report["failed"][folder.name] = str(err)
            continue
        if skipped:
            report["skipped"]["turns of skipped speakers"] += skipped
        if recording.audio is None:
            report["failed"][folder.name] = f"{folder}: no audio file ({folder.name}.m4a, .wav, .flac ...)"
            continue
        turns = recording.segments or []
        if need_turns and (not turns or any(t.speaker is None for t in turns)):
            report["skipped"][f"calls without speaker turns (RTTM), needed by {need_turns}"] += 1
            continue
        try:  # every speaker label maps to a role, before any model loads
            for t in turns:
                if t.speaker is not None:
                    simsamu._role(t.speaker, skip_speakers, "speaker column", folder / f"{folder.name}.rttm")
        except RecipeError as err:
            report["failed"][folder.name] = str(err)
            continue
        recordings.append(recording)
    report["situations"] = {f.name: simsamu.situation_of(f.name) for f in folders}
    return recordings, report
