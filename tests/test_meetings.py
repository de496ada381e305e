"""The meetings builder: turns layout, SUMM-RE speaker tracks merged in time order, summaries, prompts
from templates, token-aware overlapping chunks, official splits kept."""

import itertools
import json

import datasets
import pytest
from transformers import AutoTokenizer

from llm4all_recipes.cli import main
from llm4all_recipes.data.meetings import build_rows, chunk_lines, merge_tracks, transcript_lines
from llm4all_recipes.errors import RecipeError

MEETINGS = "tests/fixtures/meetings/meetings.jsonl"
SUMMRE = "tests/fixtures/meetings/summre/transcripts.jsonl"
SUMMRE_SUMMARIES = "tests/fixtures/meetings/summre/summaries.jsonl"


def read(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_turns_layout_rows():
    built, report = build_rows(MEETINGS)
    rows = built["train"]
    assert report["layout"] == "turns" and report["meetings"] == 5 and len(rows) == 5
    source = {m["id"]: m for m in read(MEETINGS)}
    for row in rows:
        assert row["turns"] == source[row["id"]]["turns"]
        assert row["summary"] == source[row["id"]]["summary"]
        _, user, assistant = row["messages"]
        assert user["content"].startswith("Voici la transcription d'une réunion.")  # data/prompts/meeting_summary.jinja
        assert row["transcript"] in user["content"]
        assert assistant == {"role": "assistant", "content": row["summary"]}


def test_summre_tracks_are_merged_in_time_order():
    tracks = read(SUMMRE)
    meetings = merge_tracks(tracks, SUMMRE)
    assert len(meetings) == len({t["meeting_id"] for t in tracks}) == 2
    for meeting in meetings:
        mine = [t for t in tracks if t["meeting_id"] == meeting["id"]]
        segments = sorted((s["start"], t["speaker_id"], s["transcript"]) for t in mine for s in t["segments"])
        # every word kept, in time order
        assert " ".join(t["text"] for t in meeting["turns"]).split() == " ".join(s[2] for s in segments).split()
        speakers = [t["speaker"] for t in meeting["turns"]]
        assert all(a != b for a, b in itertools.pairwise(speakers))
        assert len(set(speakers)) == len(mine) >= 2


def test_summre_with_separate_summaries(tmp_path):
    from pathlib import Path

    built, report = build_rows(SUMMRE, summaries=Path(SUMMRE_SUMMARIES))
    assert report["layout"] == "summre" and len(built["train"]) == 2
    bad = tmp_path / "summaries.jsonl"
    bad.write_text(Path(SUMMRE_SUMMARIES).read_text() + json.dumps({"meeting_id": "nope", "summary": "x"}) + "\n")
    with pytest.raises(RecipeError, match="unknown meeting 'nope'") as exc:
        build_rows(SUMMRE, summaries=bad)
    assert exc.value.source == str(bad) and exc.value.line == 3


def test_chunks_are_token_bounded_and_overlap(tiny_model):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)

    def count(text):
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    long = max(read(MEETINGS), key=lambda m: sum(len(t["text"]) for t in m["turns"]))
    lines = transcript_lines(long["turns"])
    lines.append("Paul : " + " ".join(["très"] * 400))  # a line longer than a chunk is split between words
    chunks = chunk_lines(lines, count, 256, 48)
    assert len(chunks) > 4
    assert all(count(c) <= 256 for c in chunks)
    for a, b in itertools.pairwise(chunks):
        head = b.split("\n")[0].removeprefix("… ")
        assert head in a and a.rstrip().endswith(head)  # each chunk starts with the end of the previous one
        assert 0 < count(head) <= 48
    seen = [line for c in chunks for line in c.split("\n")]
    short = [line for line in lines[:-1] if count(line) + 1 <= 256 - 48]
    firsts = [seen.index(line) for line in short]  # every line that fits is whole in some chunk, in order
    assert firsts == sorted(firsts) and len(short) > 10
    assert sum(line.count("très") for line in seen) >= 400 + sum(line.count("très") for line in lines[:-1])


def test_meetings_recipe_with_chunks_and_official_splits(tiny_model, recipe_file, tmp_path):
    # a source that already has splits keeps them (never re-carved)
    rows = read(MEETINGS)
    src = tmp_path / "src"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:3]), "test": datasets.Dataset.from_list(rows[3:])}
    ).save_to_disk(str(src))
    out = tmp_path / "out"
    path = recipe_file(
        f"builder: meetings\nsource: {src}\noutput_dir: {out}\ntokenizer_name_or_path: {tiny_model}\n"
        "chunk_tokens: 300\nchunk_overlap: 40\n",
        stage="datasets",
        name="m.yaml",
    )
    assert main(["build-dataset", "--config", path]) == 0
    ds = datasets.load_from_disk(str(out))
    assert {s: len(ds[s]) for s in ds} == {"train": 3, "test": 2}
    assert json.loads((out / "metrics.json").read_text())["splits_from"] == "source"
    assert all(len(c) >= 1 for c in ds["train"]["chunks"])


def test_simsamu_keys_are_refused_for_meetings(recipe_file, capsys):
    path = recipe_file(f"builder: meetings\nsource: {MEETINGS}\nper_turn: true\n", stage="datasets", name="m.yaml")
    assert main(["build-dataset", "--config", path]) == 2
    assert "key 'per_turn': does not apply to the meetings builder" in capsys.readouterr().err


def test_corrupt_meetings_file_names_the_line(recipe_file, tmp_path, capsys):
    bad = tmp_path / "m.jsonl"
    bad.write_text('{"id": "a", "turns": []}\n{oops\n')
    path = recipe_file(
        f"builder: meetings\nsource: {bad}\noutput_dir: {tmp_path / 'o'}\n", stage="datasets", name="m.yaml"
    )
    assert main(["build-dataset", "--config", path]) == 2
    assert f"{bad}:2: corrupt JSON" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def summre_with_audio(folder):
    """The SUMM-RE layout as the Hub serves it (data/<split>-*.parquet), each track with its audio bytes."""
    rows = [
        dict(r, audio={"bytes": bytes([i]) * 100_000, "path": f"{r['speaker_id']}.wav"}, audio_id=str(i))
        for i, r in enumerate(read(SUMMRE))
    ]
    (folder / "data").mkdir(parents=True)
    datasets.Dataset.from_list(rows).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    return folder


def test_summre_from_the_hub_is_streamed_without_its_audio(tmp_path, monkeypatch):
    """The Hub recipe used to load every column of linagora/SUMM-RE (~120 GB of audio) and convert it with
    .to_list(): now the dataset is streamed and only the transcript columns are asked of the parquet reader."""
    source = str(summre_with_audio(tmp_path / "summre-hub"))
    calls = []
    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or real(*a, **k))
    built, report = build_rows(source, layout="summre", task="transcript")
    assert calls == [((source,), {"streaming": True, "columns": ["meeting_id", "speaker_id", "segments"]})]
    assert report["layout"] == "summre" and len(built["train"]) == 2
    expected, _ = build_rows(SUMMRE, layout="summre", task="transcript")  # the same tracks from a jsonl file
    assert built == expected
