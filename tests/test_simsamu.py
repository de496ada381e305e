"""The simsamu builder on calls written in the exact medkit/simsamu layout: dialogues, labels, splits
grouped by situation, per-turn rows, summaries, bad input (clear error, exit 2, nothing left behind)."""

import itertools
import json
import shutil
from pathlib import Path

import datasets
import pytest

from llm4all_recipes.cli import main
from llm4all_recipes.data.simsamu import build_rows, situation_of
from llm4all_recipes.data.splits import grouped_splits

FIXTURE = Path("tests/fixtures/simsamu")
CALLS = sorted(p.name for p in FIXTURE.iterdir() if p.is_dir())


@pytest.fixture
def source(tmp_path):
    """A writable copy of the fixture calls."""
    dest = tmp_path / "simsamu"
    shutil.copytree(FIXTURE, dest)
    return dest


def recipe(recipe_file, source, out, extra=""):
    return recipe_file(
        f"builder: simsamu\nsource: {source}\noutput_dir: {out}\nseed: 0\n" + extra,
        stage="datasets",
        name="simsamu.yaml",
    )


def test_situation_labels():
    assert situation_of("dj_2022_douleur_thoracique") == "douleur_thoracique"
    assert situation_of("dj_mai_da_dt") == "da_dt"
    assert situation_of("dj_2022_feu") == "feu"
    assert situation_of("dj_mai_chute") == situation_of("dj_2022_chute") == "chute"


def test_dialogues_from_the_json():
    rows, report = build_rows(FIXTURE, summaries=FIXTURE / "summaries.jsonl")
    assert [r["id"] for r in rows] == CALLS
    assert report["calls"] == 6 and report["rttm_mismatches"] == []
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert roles[0] == "system" and set(roles[1:]) <= {"user", "assistant"}
        assert all(a != b for a, b in itertools.pairwise(roles[1:])), "consecutive turns of one role are merged"
        assert row["num_turns"] == len(roles) - 1
    feu = rows[CALLS.index("dj_2022_feu")]
    assert feu["messages"][1] == {"role": "assistant", "content": "samu bonjour, je vous écoute."}
    assert feu["communication_mode"] == "Frightened"
    assert feu["caller_actor"] == "speaker_5-speaker_6" and feu["regulator_actor"] == "speaker_2"
    assert feu["summary"].startswith("Motif d'appel : feu de cuisine")
    assert rows[CALLS.index("dj_2023_avc")]["summary"] is None
    # the three <NA> monologues (empty WORD terms) are left out and counted, like the SRT's <NA> items
    assert report["skipped"] == {"untranscribed (<NA>) segment": 3, "SRT <NA> items": 3}
    assert not any(m["content"] == "" for r in rows for m in r["messages"])


def test_words_only_without_punctuation():
    rows, _ = build_rows(FIXTURE, punctuation=False)
    text = " ".join(m["content"] for r in rows for m in r["messages"][1:])
    assert "," not in text and "?" not in text
    assert rows[CALLS.index("dj_2022_feu")]["messages"][1]["content"] == "samu bonjour je vous écoute"


def test_per_turn_rows_end_with_one_regulator_turn():
    calls, _ = build_rows(FIXTURE)
    turns, _ = build_rows(FIXTURE, per_turn=True)
    assert len(turns) == sum(1 for c in calls for m in c["messages"] if m["role"] == "assistant")
    for row in turns:
        assert row["messages"][-1]["role"] == "assistant"
        assert row["prompt"] + row["completion"] == row["messages"]
        assert row["id"].split("#")[0] in CALLS


def test_summary_task_counts_calls_without_summary():
    rows, report = build_rows(FIXTURE, task="summary", summaries=FIXTURE / "summaries.jsonl")
    assert len(rows) == 5 and report["without_summary"] == ["dj_2023_avc"]
    assert rows[0]["messages"][0]["content"].startswith("Voici la transcription d'un appel au SAMU")
    assert "Régulateur : " in rows[0]["messages"][0]["content"]
    assert rows[0]["messages"][1]["content"] == rows[0]["summary"]


@pytest.mark.parametrize("seed", range(5))
def test_splits_never_share_a_situation(seed):
    groups = ["a", "a", "b", "c", "c", "c", "d", "e", "f", "f"]
    parts = grouped_splits(groups, {"train": 0.6, "validation": 0.2, "test": 0.2}, seed)
    assert sorted(i for idx in parts.values() for i in idx) == list(range(len(groups)))
    seen = [{groups[i] for i in idx} for idx in parts.values()]
    assert all(not (x & y) for k, x in enumerate(seen) for y in seen[k + 1 :])
    assert parts == grouped_splits(groups, {"train": 0.6, "validation": 0.2, "test": 0.2}, seed)


def test_k_fold_covers_every_group_once_in_test():
    groups = ["a", "a", "b", "c", "c", "c", "d", "e", "f", "f"]
    tests = [grouped_splits(groups, {}, 0, folds=3, fold=k)["test"] for k in range(3)]
    assert sorted(i for t in tests for i in t) == list(range(len(groups)))
    for k in range(3):
        parts = grouped_splits(groups, {}, 0, folds=3, fold=k)
        assert not {groups[i] for i in parts["train"]} & {groups[i] for i in parts["test"]}


def test_build_dataset_stage(recipe_file, source, tmp_path):
    out = tmp_path / "out"
    assert main(["build-dataset", "--config", recipe(recipe_file, source, out)]) == 0
    ds = datasets.load_from_disk(str(out))
    assert sum(len(ds[s]) for s in ds) == 6
    situations = {s: set(ds[s]["situation"]) for s in ds}
    names = list(situations)
    assert all(not (situations[a] & situations[b]) for i, a in enumerate(names) for b in names[i + 1 :])
    report = json.loads((out / "metrics.json").read_text())
    assert {s: n for s, n in report["splits"].items() if n} == {s: len(ds[s]) for s in ds}
    assert report["empty_splits"] == [s for s, n in report["splits"].items() if not n]
    assert {"README.md", "recipe.yaml", "lineage.json"} <= {p.name for p in out.iterdir()}


def test_three_calls_build_and_empty_splits_are_reported(recipe_file, source, tmp_path, caplog):
    for name in CALLS[3:]:
        shutil.rmtree(source / name)
    (source / "summaries.jsonl").unlink()
    out = tmp_path / "three"
    assert (
        main(
            [
                "build-dataset",
                "--config",
                recipe(recipe_file, source, out, "splits: {train: 0.8, validation: 0.1, test: 0.1}\n"),
            ]
        )
        == 0
    )
    report = json.loads((out / "metrics.json").read_text())
    assert sum(report["splits"].values()) == 3
    assert report["empty_splits"], report
    card = (out / "README.md").read_text()
    assert "(empty: fewer situations than splits)" in card


def corrupt_json(src):
    (src / "dj_2022_feu" / "dj_2022_feu.json").write_text('{"monologues": [')


def unknown_speaker(src):
    path = src / "dj_2022_chute" / "dj_2022_chute.json"
    data = json.loads(path.read_text())
    data["monologues"][3]["speaker"]["id"] = "pompier"
    path.write_text(json.dumps(data))


def empty_call(src):
    path = src / "dj_mai_chute" / "dj_mai_chute.json"
    path.write_text(json.dumps({"schemaVersion": "2.0", "monologues": []}))


def missing_rttm(src):
    (src / "dj_2023_avc" / "dj_2023_avc.rttm").unlink()


def unknown_summary(src):
    with open(src / "summaries.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "dj_2024_inconnu", "summary": "?"}) + "\n")


def bad_mode(src):
    path = src / "simsamu_communication_modes.csv"
    path.write_text(path.read_text().replace("Angry", "Furious"))


def bad_rttm_line(src):
    path = src / "dj_2022_feu" / "dj_2022_feu.rttm"
    path.write_text(path.read_text() + "SPEAKER <NA>\n")


def missing_metadata(src):
    (src / "metadata.csv").unlink()


BAD = [
    (corrupt_json, "dj_2022_feu/dj_2022_feu.json", "corrupt JSON"),
    (unknown_speaker, "dj_2022_chute/dj_2022_chute.json", "monologues[3]: unknown speaker id 'pompier'"),
    (empty_call, "dj_mai_chute/dj_mai_chute.json", "empty call"),
    (missing_rttm, "dj_2023_avc/dj_2023_avc.rttm", "missing file"),
    (unknown_summary, "summaries.jsonl:6", "summary for an unknown call 'dj_2024_inconnu'"),
    (bad_mode, "simsamu_communication_modes.csv:6", "unknown communication mode 'Furious'"),
    (bad_rttm_line, "dj_2022_feu/dj_2022_feu.rttm:", "malformed RTTM line"),
    (missing_metadata, "metadata.csv", "missing file"),
]


@pytest.mark.parametrize(("damage", "where", "words"), BAD, ids=[b[0].__name__ for b in BAD])
def test_bad_input_fails_cleanly(damage, where, words, recipe_file, source, tmp_path, capsys):
    damage(source)
    out = tmp_path / "out"
    assert main(["build-dataset", "--config", recipe(recipe_file, source, out)]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{source}/{where}" in err and words in err, err
    assert len(err.splitlines()) == 1
    assert not out.exists() and not Path(f"{out}.tmp").exists()


def test_builds_from_the_hub_id_through_snapshot_download(hub, recipe_file, tmp_path):
    hub.add_repo("medkit/simsamu", FIXTURE, repo_type="dataset")
    out = tmp_path / "from-hub"
    path = recipe_file(
        f"builder: simsamu\nsource: medkit/simsamu\noutput_dir: {out}\n", stage="datasets", name="hub.yaml"
    )
    assert main(["build-dataset", "--config", path]) == 0
    assert sum(json.loads((out / "metrics.json").read_text())["splits"].values()) == 6
    downloads = [r["path"] for r in hub.requests if "/resolve/" in r["path"] and r["method"] == "GET"]
    assert any(p.endswith(".json") for p in downloads)
    assert not any(p.endswith(".m4a") for p in downloads)  # audio is not fetched unless asked
    card = (out / "README.md").read_text()
    assert "source_datasets:\n- medkit/simsamu" in card


def test_every_task_variant_puts_a_call_in_the_same_split(recipe_file, tmp_path):
    """Per call, per turn and summaries: the same calls in the same splits (no train/test leak across variants)."""
    splits = {}
    for variant, extra in {"calls": "", "turns": "per_turn: true\n", "summary": "task: summary\n"}.items():
        out = tmp_path / variant
        path = recipe_file(
            f"builder: simsamu\nsource: tests/fixtures/simsamu\noutput_dir: {out}\nseed: 3\n"
            "splits: {train: 0.5, validation: 0.25, test: 0.25}\n" + extra,
            stage="datasets",
            name=f"{variant}.yaml",
        )
        assert main(["build-dataset", "--config", path]) == 0
        ds = datasets.load_from_disk(str(out))
        splits[variant] = {s: sorted({i.split("#")[0] for i in ds[s]["id"]}) for s in ds}
    assert splits["calls"] == splits["turns"]
    assert all(set(splits["summary"][s]) <= set(splits["calls"][s]) for s in splits["summary"])
