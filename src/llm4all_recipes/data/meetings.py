"""French meeting transcripts with summaries, for summarisation.

Two input layouts (a jsonl/parquet file, a local dataset folder, or a Hub dataset):

- **turns**: one row per meeting, `{"id", "turns": [{"speaker", "text"}], "summary"}`;
- **SUMM-RE** (`linagora/SUMM-RE`): one row per speaker track, `{"meeting_id", "speaker_id", "audio_id",
  "segments": [{"start", "end", "transcript"}], "transcript"}`; the tracks of a meeting are merged into one
  time-ordered multi-speaker transcript (segments sorted by start time, consecutive segments of one
  speaker joined into a turn). Summaries come from a `summary` column or a separate jsonl file
  (`{"meeting_id" or "id", "summary"}`).

Long transcripts are cut into token-bounded chunks that overlap (`chunk_lines`), at turn boundaries when
possible, for map-reduce summarisation at inference time (prompts in data/prompts/meeting_*.jinja).
"""

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import RecipeError
from .splits import grouped_splits
from .templates import render_prompt
from .text import read_jsonl

# The SUMM-RE columns a transcript is built from, streamed from the Hub: the corpus also embeds every track's audio
# (~120 GB), never read.
SUMMRE_COLUMNS = ("meeting_id", "speaker_id", "segments")


def load_table(
    source: str, key: str = "source", what: str = "meetings", columns: Sequence[str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Rows of each split of a jsonl/json/parquet file, a saved folder, or a Hub dataset / Hub-layout folder (errors
    name the recipe `key`). A Hub dataset (or Hub-layout folder) is streamed, and with `columns` only those are read
    (a parquet dataset's other columns, audio included, are never downloaded)."""
    import datasets

    path = Path(source)
    try:
        if path.is_file() and path.suffix in (".jsonl", ".json"):
            return {"train": read_jsonl(path)}
        if path.is_file() and path.suffix == ".parquet":
            loaded = datasets.load_dataset("parquet", data_files=str(path))
        elif path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            loaded = datasets.load_from_disk(str(path))
        else:
            return _stream(source, columns)
    except RecipeError:
        raise
    except Exception as exc:
        raise RecipeError(f"cannot load {what} from {source}: {exc}", key=key) from None
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    return {split: ds.to_list() for split, ds in loaded.items()}


def _stream(source: str, columns: Sequence[str] | None) -> dict[str, list[dict[str, Any]]]:
    import datasets

    if columns:
        try:  # parquet builders read only these columns
            loaded = datasets.load_dataset(source, streaming=True, columns=list(columns))
        except (TypeError, ValueError):  # a builder without column selection: drop them as rows stream by
            loaded = datasets.load_dataset(source, streaming=True).select_columns(list(columns))
    else:
        loaded = datasets.load_dataset(source, streaming=True)
    if isinstance(loaded, datasets.IterableDataset):
        loaded = {"train": loaded}
    return {split: list(ds) for split, ds in loaded.items()}


def detect_layout(rows: list[dict[str, Any]], source: str) -> str:
    keys = set(rows[0]) if rows else set()
    if {"meeting_id", "speaker_id", "segments"} <= keys:
        return "summre"
    if {"id", "turns"} <= keys:
        return "turns"
    raise RecipeError(
        f"{source}: unknown layout (columns {sorted(keys)}); expected id/turns/summary or the SUMM-RE "
        "columns meeting_id/speaker_id/segments",
        key="layout",
    )


def merge_tracks(rows: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    """SUMM-RE speaker tracks -> one meeting per meeting_id with time-ordered turns."""
    segments: dict[str, list[tuple[float, float, str, str]]] = {}
    summaries: dict[str, str] = {}
    for i, row in enumerate(rows):
        try:
            meeting, speaker = str(row["meeting_id"]), str(row["speaker_id"])
            for seg in row["segments"]:
                text = str(seg["transcript"]).strip()
                if text:
                    segments.setdefault(meeting, []).append((float(seg["start"]), float(seg["end"]), speaker, text))
        except (KeyError, TypeError, ValueError):
            raise RecipeError(
                f"row {i}: expected meeting_id, speaker_id and segments[{{start, end, transcript}}]",
                source=source,
            ) from None
        if row.get("summary"):
            summaries[meeting] = row["summary"]
    meetings = []
    for meeting, segs in segments.items():
        turns: list[dict[str, str]] = []
        for _, _, speaker, text in sorted(segs):
            if turns and turns[-1]["speaker"] == speaker:
                turns[-1]["text"] += " " + text
            else:
                turns.append({"speaker": speaker, "text": text})
        meetings.append({"id": meeting, "turns": turns, "summary": summaries.get(meeting)})
    return meetings


def read_summaries(path: Path, ids: set[str]) -> dict[str, str]:
    out = {}
    for lineno, row in enumerate(read_jsonl(path), 1):
        meeting = row.get("meeting_id", row.get("id"))
        if meeting is None or "summary" not in row:
            raise RecipeError('expected {"meeting_id" (or "id"), "summary"}', source=str(path), line=lineno)
        if meeting not in ids:
            raise RecipeError(f"summary for an unknown meeting {meeting!r}", source=str(path), line=lineno)
        out[meeting] = row["summary"]
    return out


def transcript_lines(turns: list[dict[str, str]]) -> list[str]:
    return [f"{t['speaker']} : {t['text']}" for t in turns]


def chunk_lines(lines: list[str], count: Callable[[str], int], max_tokens: int, overlap: int) -> list[str]:
    """Greedy chunks of whole lines, each at most `max_tokens` tokens (a line costs count(line) + 1 for its
    newline). Each chunk starts with the end of the previous one, up to `overlap` tokens: its last lines when
    they fit, else the last words of its last line (prefixed with "… "). Lines longer than
    `max_tokens - overlap` are first split between words, so that an overlap always fits with the next line."""
    if not 0 <= overlap < max_tokens:
        raise ValueError("need 0 <= overlap < max_tokens")
    limit = max_tokens - overlap
    pieces: list[tuple[str, int]] = []
    for line in lines:
        n = count(line) + 1
        if n <= limit:
            pieces.append((line, n))
            continue
        part: list[str] = []
        for word in line.split(" "):
            if part and count(" ".join([*part, word])) + 1 > limit:
                pieces.append((" ".join(part), count(" ".join(part)) + 1))
                part = []
            part.append(word)
        if part:
            pieces.append((" ".join(part), count(" ".join(part)) + 1))
    chunks: list[str] = []
    carry: list[tuple[str, int]] = []
    start = 0
    while start < len(pieces):
        current, size, end = list(carry), sum(n for _, n in carry), start
        while end < len(pieces) and size + pieces[end][1] <= max_tokens:
            current.append(pieces[end])
            size += pieces[end][1]
            end += 1
        chunks.append("\n".join(text for text, _ in current))
        start = end
        carry, size = [], 0
        for text, n in reversed(current):
            if size + n > overlap:
                break
            carry.insert(0, (text, n))
            size += n
        if not carry and overlap > 0:
            words = current[-1][0].split(" ")
            tail: list[str] = []
            while words and count("… " + " ".join([words[-1], *tail])) + 1 <= overlap:
                tail.insert(0, words.pop())
            if tail:
                text = "… " + " ".join(tail)
                carry = [(text, count(text) + 1)]
    return chunks


def build_rows(
    source: str,
    *,
    layout: str = "auto",
    task: str = "summary",
    summaries: Path | None = None,
    count_tokens: Callable[[str], int] | None = None,
    chunk_tokens: int = 1024,
    chunk_overlap: int = 128,
) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """({split: rows}, report). `summary`: meetings without a summary are counted and left out; `transcript`:
    every meeting, its transcript also as `text` (no `messages`)."""
    tables = load_table(source, columns=SUMMRE_COLUMNS if layout == "summre" else None)
    report: dict[str, Any] = {"meetings": 0, "without_summary": [], "source_splits": list(tables)}
    out: dict[str, list[dict[str, Any]]] = {}
    for split, rows in tables.items():
        kind = detect_layout(rows, source) if layout == "auto" else layout
        meetings = merge_tracks(rows, source) if kind == "summre" else rows
        report["layout"] = kind
        out[split] = meetings
    ids = {str(m["id"]) for rows in out.values() for m in rows}
    extra = read_summaries(summaries, ids) if summaries else {}
    system, built = render_prompt("meeting_system"), {}
    for split, meetings in out.items():
        built[split] = []
        for m in meetings:
            report["meetings"] += 1
            summary = extra.get(str(m["id"])) or m.get("summary")
            if not m.get("turns"):
                raise RecipeError(f"meeting {m.get('id')!r} has no turns", source=source)
            if not summary:
                report["without_summary"].append(str(m["id"]))
                if task == "summary":
                    continue
            lines = transcript_lines(m["turns"])
            transcript = "\n".join(lines)
            row = {
                "id": str(m["id"]),
                "turns": m["turns"],
                "transcript": transcript,
                "summary": summary,
                "num_speakers": len({t["speaker"] for t in m["turns"]}),
                "num_words": len(transcript.split()),
            }
            if task == "transcript":
                row["text"] = transcript
            else:
                row["messages"] = [
                    {"role": "system", "content": system},
                    {"role": "user", "content": render_prompt("meeting_summary", transcript=transcript)},
                    {"role": "assistant", "content": summary},
                ]
            if count_tokens is not None:
                row["chunks"] = chunk_lines(lines, count_tokens, chunk_tokens, chunk_overlap)
            built[split].append(row)
    return built, report


def build(recipe, source: str) -> tuple[dict[str, list[dict]], dict]:
    """The `meetings` dataset builder (build-dataset): ({split: rows}, report); a source's own splits are kept,
    else meetings are split by id."""
    count = None
    if recipe.tokenizer_name_or_path:
        from ..models import load_tokenizer

        tokenizer = load_tokenizer(recipe.tokenizer_name_or_path, key="tokenizer_name_or_path")
        count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    by_split, report = build_rows(
        source,
        layout=recipe.layout,
        task=recipe.task,
        summaries=Path(recipe.summaries) if recipe.summaries else None,
        count_tokens=count,
        chunk_tokens=recipe.chunk_tokens,
        chunk_overlap=recipe.chunk_overlap,
    )
    report["group"] = "meeting"
    if len(by_split) > 1:  # official splits are kept as they are
        report["splits_from"] = "source"
        return by_split, report
    rows = next(iter(by_split.values()))
    groups = [r["id"] for r in rows]
    parts = grouped_splits(groups, recipe.splits, recipe.seed, recipe.folds, recipe.fold)
    report["splits_from"] = f"{recipe.folds}-fold, fold {recipe.fold}" if recipe.folds else "shares"
    return {name: [rows[i] for i in idx] for name, idx in parts.items()}, report


def card_facts(recipe, report: dict[str, Any]) -> dict[str, Any]:
    """What the dataset card says of these rows: summary, processing steps, columns."""
    steps = [
        f"Input layout: {report.get('layout')}"
        + (
            " (one row per speaker track, merged into one time-ordered transcript per meeting)"
            if report.get("layout") == "summre"
            else ""
        )
        + ".",
        "Transcript lines `speaker : text`; "
        + (
            "every meeting is kept (those without a summary are counted); the transcript is also the `text` column."
            if recipe.task == "transcript"
            else "meetings without a summary are counted and left out."
        ),
    ]
    if recipe.task != "transcript":
        steps.append("Chat rows: French system prompt and instruction (`data/prompts/meeting_*.jinja`) → summary.")
    if recipe.tokenizer_name_or_path:
        steps.append(
            f"`chunks`: the transcript cut at turn boundaries into pieces of at most {recipe.chunk_tokens} tokens "
            f"of `{recipe.tokenizer_name_or_path}`, overlapping by up to {recipe.chunk_overlap} tokens (map-reduce)."
        )
    columns = {
        "id": "meeting id",
        "turns": "[{speaker, text}] in time order",
        "transcript": "`speaker : text` lines",
        "summary": "reference summary" + (" (when the source has one)" if recipe.task == "transcript" else ""),
        "num_speakers / num_words": "sizes",
    }
    if recipe.task == "transcript":
        columns["text"] = "the transcript (for text stages: continued pretraining, `generate`)"
    else:
        columns["messages"] = "chat: system, instruction + transcript, summary (assistant)"
    if recipe.tokenizer_name_or_path:
        columns["chunks"] = "token-bounded overlapping transcript pieces"
    return {
        "summary": "French meeting transcripts"
        + (
            " (continued-pretraining text, input of `generate`)."
            if recipe.task == "transcript"
            else " with reference summaries, for summarisation."
        ),
        "steps": steps,
        "columns": columns,
        "license": recipe.license,
        "task_categories": ["summarization", "text-generation"],
        "note": "",
    }
