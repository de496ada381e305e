"""Teacher-written targets for corpora without summaries: transcript datasets from SUMM-RE- and simsamu-layout
sources that have none, `llm4all generate` (tiny teacher) with provenance and filter counts, map-reduce for long
inputs, `sft` on the result, resume after kill -9 mid-generation, and bad input rejected before any model loads."""

import json
import shutil
import sys
from pathlib import Path

import datasets
import pytest
from test_runs import kill_9, start_paused

from llm4all_recipes.cli import main

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="module")
def transcripts(tmp_path_factory) -> dict[str, Path]:
    """Transcript datasets built from sources without any summary (SUMM-RE tracks; simsamu calls, summaries.jsonl
    removed)."""
    root = tmp_path_factory.mktemp("transcripts")
    calls = root / "simsamu-source"
    shutil.copytree(FIXTURES / "simsamu", calls)
    (calls / "summaries.jsonl").unlink()
    out = {"meetings": root / "summre-transcripts", "calls": root / "simsamu-transcripts"}
    assert (
        main(
            [
                "build-dataset",
                "--config",
                "recipes/datasets/summre-transcripts.yaml",
                "--output_dir",
                str(out["meetings"]),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "build-dataset",
                "--config",
                "recipes/datasets/simsamu-transcripts.yaml",
                "--source",
                str(calls),
                "--output_dir",
                str(out["calls"]),
            ]
        )
        == 0
    )
    return out


def test_transcript_datasets_need_no_summary(transcripts):
    meetings = datasets.load_from_disk(str(transcripts["meetings"]))
    assert sum(len(s) for s in meetings.values()) == 2  # both SUMM-RE meetings, though neither has a summary
    row = meetings["train"][0]
    assert row["summary"] is None and row["text"] == row["transcript"]
    lines = row["text"].splitlines()
    assert len(lines) > 1 and all(" : " in line for line in lines)  # `speaker : text`, merged in time order
    assert len({line.split(" : ")[0] for line in lines}) == row["num_speakers"] > 1
    calls = datasets.load_from_disk(str(transcripts["calls"]))
    assert sum(len(s) for s in calls.values()) == 6 and "messages" not in calls["train"].column_names
    assert calls["train"][0]["text"].startswith(("Régulateur : ", "Appelant : "))
    card = (transcripts["calls"] / "README.md").read_text()
    assert "transcript" in card and "without a summary" in card


def generate(teacher, dataset, out, recipe="recipes/tiny-llama/generate/samu-fiches.yaml", *extra):
    return [
        "generate",
        "--config",
        recipe,
        "--model_name_or_path",
        str(teacher),
        "--dataset",
        str(dataset),
        "--output_dir",
        str(out),
        *extra,
    ]


@pytest.fixture(scope="module")
def fiches(tiny_model, transcripts, tmp_path_factory):
    out = tmp_path_factory.mktemp("generate") / "fiches"
    assert main(generate(tiny_model, transcripts["calls"], out)) == 0
    return out


def test_generate_writes_targets_with_provenance_and_filter_counts(fiches, tiny_model):
    table = datasets.load_from_disk(str(fiches))
    metrics = json.loads((fiches / "metrics.json").read_text())
    assert metrics["rows"] == 6 and metrics["generated"] == 6 and metrics["from_source"] == 0
    assert metrics["kept"] + sum(metrics["dropped"].values()) == 6
    assert metrics["kept"] == sum(len(s) for s in table.values()) and metrics["new_tokens"] > 0
    row = next(iter(table.values()))[0]
    assert row["summary"] and row["messages"][-1] == {"role": "assistant", "content": row["summary"]}
    assert "Rédigez la fiche de régulation" in row["messages"][-2]["content"]  # samu_fiche.jinja, the transcript
    assert row["transcript"] in row["messages"][-2]["content"]
    origin = json.loads(row["provenance"])
    assert origin["teacher"] == str(tiny_model) and origin["machine_generated"] and len(origin["prompts_sha256"]) == 64
    assert origin["sampling"] == {"do_sample": False, "max_new_tokens": 48}
    card = (fiches / "README.md").read_text()
    assert "Machine-generated targets" in card and origin["prompts_sha256"] in card and "Removed:" in card
    assert not (fiches / "shards").exists()


def test_seq_kd_sft_trains_on_the_generated_targets(fiches, tiny_model, tmp_path):
    out = tmp_path / "sft"
    # the toy teacher's answers decide which splits survive the filters (validation and test hold one call each)
    held_out = [{"path": str(fiches), "split": s} for s in datasets.load_from_disk(str(fiches)) if s != "train"]
    assert (
        main(
            [
                "sft",
                "--config",
                "recipes/tiny-llama/sft/seq-kd.yaml",
                "--model_name_or_path",
                str(tiny_model),
                "--datasets",
                json.dumps([{"path": str(fiches), "split": "train"}]),
                "--eval_datasets",
                json.dumps(held_out[:1]),
                "--output_dir",
                str(out),
                "--max_steps",
                "2",
            ]
        )
        == 0
    )
    assert json.loads((out / "metrics.json").read_text())["train"]["global_step"] == 2


def test_long_inputs_are_summarised_map_reduce(tiny_model, transcripts, tmp_path):
    out = tmp_path / "meetings"
    argv = generate(
        tiny_model,
        transcripts["meetings"],
        out,
        "recipes/tiny-llama/generate/meeting-summaries.yaml",
        "--context_length",
        "600",
        "--chunk_tokens",
        "256",
        "--max_new_tokens",
        "16",
        "--min_words",
        "1",
    )
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["map_reduce"] == 2 and metrics["kept"] + sum(metrics["dropped"].values()) == 2
    # without map-reduce prompts, inputs that do not fit are counted and left out: nothing is left here
    argv = generate(
        tiny_model,
        transcripts["meetings"],
        tmp_path / "none",
        "recipes/tiny-llama/generate/meeting-summaries.yaml",
        "--context_length",
        "600",
        "--chunk_prompt",
        "",
        "--merge_prompt",
        "",
    )
    assert main(argv) == 2


@pytest.mark.parametrize("phase", ["part", "written"])
def test_kill_9_mid_generation_loses_no_shard_and_duplicates_no_row(
    fiches, tiny_model, transcripts, tmp_path, phase, caplog
):
    """Killed while shard 1 is half written (`part`) or just after it (`written`): the rerun of the same command
    keeps every finished shard and gives the dataset of an uninterrupted run, row for row."""
    out = tmp_path / "fiches"
    argv = generate(tiny_model, transcripts["calls"], out)
    proc, _, _ = start_paused(argv, f"generate:1:{phase}", tmp_path)
    shards = Path(str(out) + ".tmp") / "shards"
    finished = sorted(p.name for p in shards.glob("*.jsonl"))
    assert finished == (["shard-00000.jsonl"] if phase == "part" else ["shard-00000.jsonl", "shard-00001.jsonl"])
    kill_9(proc)
    with caplog.at_level("INFO", logger="llm4all_recipes.stages.generate"):
        assert main(argv) == 0
    assert f"generate: {len(finished)} of 2 shards already written, resuming" in caplog.text
    assert (
        json.loads((out / "metrics.json").read_text())["kept"]
        == json.loads((fiches / "metrics.json").read_text())["kept"]
    )
    resumed, reference = datasets.load_from_disk(str(out)), datasets.load_from_disk(str(fiches))
    for split in reference:
        assert resumed[split]["id"] == reference[split]["id"]  # same rows, none twice
        assert resumed[split]["summary"] == reference[split]["summary"]  # greedy: the same answers


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt", "meeting_system"], "key 'prompt': the template does not use the input column"),
        (["--input_column", "nope", "--prompt", "TEMPLATE"], "key 'input_column': "),
        (["--max_new_tokens", "0"], "key 'max_new_tokens': must be > 0"),
        (["--chunk_prompt", "meeting_chunk_summary"], "key 'chunk_prompt': map-reduce needs both"),
    ],
)
def test_bad_input_is_one_line_before_any_model_loads(tiny_model, transcripts, tmp_path, capsys, extra, message):
    out, template = tmp_path / "out", tmp_path / "prompt.jinja"
    template.write_text("Résumez cet appel : {{ nope }}")  # a prompt on a column the dataset does not have
    extra = [str(template) if a == "TEMPLATE" else a for a in extra]
    argv = generate(tiny_model, transcripts["calls"], out, "recipes/tiny-llama/generate/samu-fiches.yaml", *extra)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not out.exists() and not Path(str(out) + ".tmp").exists()


def test_a_teacher_without_chat_template_is_refused(tiny_model, transcripts, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_model, teacher)
    (teacher / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((teacher / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (teacher / "tokenizer_config.json").write_text(json.dumps(config))
    assert main(generate(teacher, transcripts["calls"], tmp_path / "out")) == 2
    assert "has no chat template" in capsys.readouterr().err


def test_the_vllm_engine_gets_the_same_prompts_and_gives_the_same_greedy_answers(
    fiches, tiny_model, transcripts, tmp_path, monkeypatch, request
):
    """`engine: vllm` through a stand-in of vLLM's documented offline API (tests/stubs/vllm: transformers behind
    it): the same prompt token ids, truncation read from finish_reason, the same greedy answers as the
    transformers engine. Real vLLM needs a GPU; without it installed, `engine: vllm` is a one-line error."""
    out = tmp_path / "vllm"
    monkeypatch.syspath_prepend(str(REPO / "tests" / "stubs"))
    request.addfinalizer(lambda: sys.modules.pop("vllm", None))  # find_spec looks in sys.modules first
    import vllm

    assert (
        main(
            generate(
                tiny_model,
                transcripts["calls"],
                out,
                "recipes/tiny-llama/generate/samu-fiches.yaml",
                "--engine",
                "vllm",
            )
        )
        == 0
    )
    assert vllm.CALLS[-1]["model"] == str(tiny_model) and vllm.CALLS[-1]["seed"] == 0
    ours, reference = datasets.load_from_disk(str(out)), datasets.load_from_disk(str(fiches))
    for split in reference:
        assert ours[split]["summary"] == reference[split]["summary"]
    m, r = json.loads((out / "metrics.json").read_text()), json.loads((fiches / "metrics.json").read_text())
    assert (m["new_tokens"], m["truncated"]) == (r["new_tokens"], r["truncated"])


def test_the_vllm_engine_without_vllm_is_one_line(tiny_model, transcripts, tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    assert (
        main(
            generate(
                tiny_model,
                transcripts["calls"],
                tmp_path / "o",
                "recipes/tiny-llama/generate/samu-fiches.yaml",
                "--engine",
                "vllm",
            )
        )
        == 2
    )
    assert "engine: vllm needs vLLM installed" in capsys.readouterr().err


def test_next_turn_mode_writes_the_assistant_turn_after_each_history(tiny_model, tmp_path):
    turns = tmp_path / "turns"
    assert (
        main(
            [
                "build-dataset",
                "--config",
                "recipes/datasets/simsamu-turns.yaml",
                "--output_dir",
                str(turns),
                "--push_to_hub",
                "false",
            ]
        )
        == 0
    )
    out = tmp_path / "next"
    assert main(generate(tiny_model, turns, out, "recipes/tiny-llama/generate/samu-next-turns.yaml")) == 0
    table = datasets.load_from_disk(str(out))["train"]
    source = datasets.load_from_disk(str(turns))["train"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rows"] == len(source) and metrics["kept"] == len(table) > 0
    row = table[0]
    history = next(r["prompt"] for r in source if r["id"] == row["id"])
    assert row["messages"] == [*history, {"role": "assistant", "content": row["answer"]}]
    # a column that is not a chat history cannot be continued
    assert (
        main(
            generate(
                tiny_model,
                turns,
                tmp_path / "bad",
                "recipes/tiny-llama/generate/samu-next-turns.yaml",
                "--input_column",
                "id",
            )
        )
        == 2
    )
