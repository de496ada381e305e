"""The speech-text model ("LLM voix+texte"): assembled from the tiny Whisper and the tiny Llama, trained by
`speech-sft` (projector only, then projector + LoRA), saved as one checkpoint that plain transformers loads
(trust_remote_code); resume after kill -9; bad starting models refused in one line before any model loads."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_runs import history, kill_9, start_paused

from llm4all_recipes.cli import main
from llm4all_recipes.models import load_model, load_processor
from llm4all_recipes.speech.speech_llm import AUDIO_TOKEN, audio_token_count

ASSEMBLE = "recipes/tiny-speech-llm/tiny-model/base.yaml"
STAGE1 = "recipes/tiny-speech-llm/speech-sft/simsamu.yaml"
STAGE2 = "recipes/tiny-speech-llm/speech-sft/simsamu-lora.yaml"
STEPS = ["--max_steps", "6", "--save_steps", "2", "--logging_steps", "1", "--per_device_train_batch_size", "2"]


@pytest.fixture(scope="session")
def speech_llm(tiny_whisper, tiny_model, session_tmp) -> Path:
    out = session_tmp / "speech-llm"
    argv = ["tiny-model", "--config", ASSEMBLE, "--audio_encoder", str(tiny_whisper), "--language_model"]
    assert main([*argv, str(tiny_model), "--output_dir", str(out)]) == 0
    return out


def stage1_argv(model, out, *extra):
    return [
        "speech-sft",
        "--config",
        STAGE1,
        "--model_name_or_path",
        str(model),
        "--output_dir",
        str(out),
        *STEPS,
        *extra,
    ]


@pytest.fixture(scope="session")
def projector_run(speech_llm, session_tmp) -> Path:
    """Stage 1, uninterrupted (keep_best off: every step's weights are the run's)."""
    out = session_tmp / "speech-sft"
    assert main(stage1_argv(speech_llm, out, "--keep_best", "false")) == 0
    return out


def _inputs(processor, seconds=(1.5, 41.0)):
    """A batch of two prompts, one short clip and one longer than Whisper's 30 s window."""
    rng = np.random.RandomState(0)
    audio = [rng.randn(int(s * 16000)).astype(np.float32) * 0.1 for s in seconds]
    chat = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "\nTranscris."}]}]
    prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
    return processor(text=[prompt] * len(audio), audio=audio, return_tensors="pt")


def test_processor_expands_one_placeholder_per_audio_into_its_frames(speech_llm):
    processor = load_processor(str(speech_llm))
    inputs = _inputs(processor)
    assert inputs["input_features"].shape[0] == 3  # 1.5 s -> one window; 41 s -> two (30 s + 11 s)
    frames = inputs["feature_attention_mask"].sum(-1).tolist()
    assert frames == [150, 3000, 1100]  # mel frames: 100 a second
    expected = [audio_token_count(150, 4), audio_token_count(3000, 4) + audio_token_count(1100, 4)]
    placeholder = processor.tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    assert (inputs["input_ids"] == placeholder).sum(-1).tolist() == expected == [19, 513]


def test_audio_is_cut_into_the_encoders_own_windows(speech_llm):
    """An encoder trained on shorter windows (the benchmark's French Whisper: 10 s) gets 10 s windows, not 30 s ones
    its feature extractor would truncate."""
    processor = load_processor(str(speech_llm))
    rate = processor.feature_extractor.sampling_rate
    assert [len(w) for w in processor.windows(np.zeros(65 * rate))] == [30 * rate, 30 * rate, 5 * rate]
    processor.feature_extractor.chunk_length = 10
    assert [len(w) for w in processor.windows(np.zeros(25 * rate))] == [10 * rate, 10 * rate, 5 * rate]


def test_text_only_input_gives_the_language_models_own_logits(speech_llm, tiny_model):
    """The assembled model leaves the LM as it was: without audio it is the tiny Llama (plus one token row)."""
    model, lm = load_model(str(speech_llm)), load_model(str(tiny_model))
    ids = torch.randint(0, lm.config.vocab_size, (2, 12))
    with torch.no_grad():
        ours, theirs = model(input_ids=ids).logits, lm(input_ids=ids).logits
    assert torch.equal(ours[..., : lm.config.vocab_size], theirs)
    language_model = model.language_model
    assert language_model.lm_head.weight.data_ptr() == language_model.get_input_embeddings().weight.data_ptr()


LOGITS_CHILD = r"""
import sys
sys.modules["llm4all_recipes"] = None  # a stranger's machine: plain transformers, no llm4all package
import numpy as np, torch
from transformers import AutoModel, AutoProcessor
path, out = sys.argv[1], sys.argv[2]
model = AutoModel.from_pretrained(path, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
rng = np.random.RandomState(0)
audio = [rng.randn(int(s * 16000)).astype(np.float32) * 0.1 for s in (1.5, 41.0)]
chat = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "\nTranscris."}]}]
prompt = processor.apply_chat_template(chat, add_generation_prompt=True)
inputs = processor(text=[prompt] * 2, audio=audio, return_tensors="pt")
with torch.no_grad():
    logits = model(**inputs).logits
torch.save({"logits": logits, "input_ids": inputs["input_ids"], "class": type(model).__module__}, out)
"""


def _plain(path: Path, tmp_path: Path) -> dict:
    out = tmp_path / "plain.pt"
    run = subprocess.run(
        [sys.executable, "-c", LOGITS_CHILD, str(path), str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return torch.load(out)


def test_trained_model_logits_equal_through_package_and_plain_transformers(projector_run, tmp_path):
    plain = _plain(projector_run, tmp_path)
    assert plain["class"].startswith("transformers_modules")  # the checkpoint's own code, not the package
    model, processor = load_model(str(projector_run)), load_processor(str(projector_run))
    inputs = _inputs(processor)
    assert torch.equal(inputs["input_ids"], plain["input_ids"])
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, plain["logits"])


def test_projector_only_stage_changes_no_encoder_or_language_model_weight(speech_llm, projector_run):
    before, after = load_file(speech_llm / "model.safetensors"), load_file(projector_run / "model.safetensors")
    assert before.keys() == after.keys()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("projector.") for k in changed)
    assert {k for k in before if k.startswith("projector.")} == changed  # every projector tensor moved
    metrics = json.loads((projector_run / "metrics.json").read_text())
    assert metrics["train"]["trainable"] == "projector" and metrics["train"]["global_step"] == 6
    assert set(metrics["data"]["rows"]["train"]) == {"transcription", "next_turn"}


def test_kill_9_while_saving_resumes_to_the_uninterrupted_losses(speech_llm, projector_run, tmp_path):
    out = tmp_path / "s1"
    argv = stage1_argv(speech_llm, out, "--keep_best", "false")
    proc, _, _ = start_paused(argv, "4:optimizer", tmp_path)  # checkpoint-4: weights + optimizer, no trainer state
    assert (tmp_path / "s1.tmp" / "checkpoint-4" / "optimizer.pt").is_file()
    kill_9(proc)
    assert not out.exists()
    assert main(argv) == 0
    assert history(out) == history(projector_run)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"] == "checkpoint-2"
    reference = load_file(projector_run / "model.safetensors")
    assert all(torch.equal(t, reference[k]) for k, t in load_file(out / "model.safetensors").items())


def test_lora_stage_trains_the_language_model_merged_and_never_the_encoder(projector_run, tmp_path):
    out = tmp_path / "s2"
    argv = ["speech-sft", "--config", STAGE2, "--model_name_or_path", str(projector_run), "--output_dir", str(out)]
    assert main([*argv, *STEPS, "--keep_best", "false", "--learning_rate", "1e-2"]) == 0
    before, after = load_file(projector_run / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()  # merged: the same plain checkpoint, no lora_ tensor
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("language_model.") and k.endswith("q_proj.weight") for k in changed)
    assert any(k.startswith("projector.") for k in changed)
    assert not any(k.startswith("audio_encoder.") for k in changed)
    assert (out / "adapter" / "adapter_config.json").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["trainable"] == "lora"
    assert metrics["parameters"] == sum(t.numel() for t in after.values())  # the merged model, no adapter


@pytest.mark.parametrize("which", ["text-only", "audio-only"])
def test_a_text_only_or_audio_only_model_fails_in_one_line_before_loading(
    which, tiny_model, tiny_whisper, tmp_path, capsys, monkeypatch
):
    for where in ("llm4all_recipes.stages.speech_sft", "llm4all_recipes.speech.assembly"):
        monkeypatch.setattr(f"{where}.load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    model = tiny_model if which == "text-only" else tiny_whisper
    out = tmp_path / "out"
    assert main(["speech-sft", "--config", STAGE1, "--model_name_or_path", str(model), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    article = "an" if which == "audio-only" else "a"
    assert len(err) == 1 and "model_name_or_path" in err[0] and f"is {article} {which} model" in err[0]
    assert not out.exists() and not Path(f"{out}.tmp").exists()


def test_assembly_refuses_swapped_parts_in_one_line(tiny_model, tiny_whisper, tmp_path, capsys):
    argv = ["tiny-model", "--config", ASSEMBLE, "--audio_encoder", str(tiny_model), "--language_model"]
    assert main([*argv, str(tiny_whisper), "--output_dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "audio_encoder" in err[0] and "not a speech encoder-decoder" in err[0]


def test_rows_follow_the_turns_and_split_by_situation(speech_llm):
    from llm4all_recipes.parsing import parse_recipe
    from llm4all_recipes.stages.speech_sft import build_rows

    recipe = parse_recipe("speech-sft", ["--config", STAGE1, "--model_name_or_path", str(speech_llm)])
    splits, _ = build_rows(recipe)
    calls = {name: {r["id"].split("#")[0] for r in rows} for name, rows in splits.items()}
    assert calls["train"].isdisjoint(calls["validation"]) and len(calls["train"] | calls["validation"]) == 2
    from llm4all_recipes.speech.sources import call_recording

    for name, rows in splits.items():
        for call in calls[name]:
            rec, _ = call_recording(Path(recipe.source) / call, set(recipe.skip_speakers))
            refs = [t.reference for t in rec.segments if t.reference and t.reference.strip()]
            mine = [r for r in rows if r["id"].startswith(call + "#")]
            assert [r["completion"] for r in mine if r["task"] == "transcription"] == [x.strip() for x in refs]
            answers = [
                b.reference.strip()
                for a, b in zip(rec.segments, rec.segments[1:])
                if a.speaker != "medecin" and b.speaker == "medecin" and b.reference and b.reference.strip()
            ]
            assert [r["completion"] for r in mine if r["task"] == "next_turn"] == answers


def test_collator_trains_on_the_answer_and_its_end_of_turn_only(speech_llm):
    from llm4all_recipes.speech.sft_data import SpeechCollator

    processor = load_processor(str(speech_llm))
    collator = SpeechCollator(processor, 4096, "<|im_end|>")
    collator.audio.decode = lambda path: np.zeros(16000 * 3, np.float32)
    rows = [
        {"audio": "a", "start": 0.5, "end": 2.0, "prompt": "Transcris.", "completion": "Bonjour, le SAMU."},
        {"audio": "a", "start": None, "end": None, "prompt": "Transcris.", "completion": "Oui."},
    ]
    batch = collator(rows)
    tok = processor.tokenizer
    for i, row in enumerate(rows):
        labels = batch["labels"][i][batch["labels"][i] != -100].tolist()
        assert tok.decode(labels) == row["completion"] + "<|im_end|>"
        ids = batch["input_ids"][i][batch["attention_mask"][i] == 1].tolist()
        assert ids[-len(labels) :] == labels  # the answer closes the sequence, the prompt before it is masked
    placeholder = tok.convert_tokens_to_ids(AUDIO_TOKEN)
    assert (batch["input_ids"] == placeholder).sum(-1).tolist() == [
        audio_token_count(150, 4),
        audio_token_count(300, 4),
    ]


def test_card_snippet_runs_verbatim_without_the_package(projector_run):
    from test_cards import SNIPPET_CHILD

    card = (projector_run / "README.md").read_text()
    assert "pipeline_tag: audio-text-to-text" in card and "AutoProcessor" in card
    run = subprocess.run(
        [sys.executable, "-c", SNIPPET_CHILD, str(projector_run / "README.md")],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stderr[-3000:]


def test_eval_scores_the_held_out_calls_beside_the_cascade(projector_run, tiny_whisper, tiny_model, tmp_path):
    """eval on the speech-sft recipe's validation call: the speech-text model's next-turn perplexity is the model's
    own loss on those rows (recomputed here), the cascade is scored on the same rows, and the card says which wins."""
    import math

    from llm4all_recipes.models import chat_markers
    from llm4all_recipes.parsing import parse_recipe
    from llm4all_recipes.speech.sft_data import SpeechCollator
    from llm4all_recipes.stages.speech_sft import build_rows

    out = tmp_path / "eval"
    argv = ["eval", "--config", "recipes/tiny-speech-llm/eval/simsamu.yaml", "--model_name_or_path", str(projector_run)]
    argv += ["--speech_recipe", STAGE1, "--cascade_asr", str(tiny_whisper), "--cascade_lm", str(tiny_model)]
    assert main([*argv, "--output_dir", str(out), "--update_model_card", "false"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    recipe = parse_recipe("speech-sft", ["--config", STAGE1, "--model_name_or_path", str(projector_run)])
    rows = [r for r in build_rows(recipe)[0]["validation"] if r["task"] == "next_turn"]
    model, processor = load_model(str(projector_run)), load_processor(str(projector_run))
    collator = SpeechCollator(processor, None, chat_markers(processor.tokenizer)[1])
    nll = tokens = 0
    with torch.no_grad():
        for row in rows:
            batch = collator([row])
            n = int((batch["labels"][:, 1:] != -100).sum())
            nll, tokens = nll + float(model(**batch).loss) * n, tokens + n
    ours, cascade = metrics["speech"]["speech-llm"]["next_turn"], metrics["speech"]["cascade"]["next_turn"]
    assert ours["rows"] == cascade["rows"] == len(rows) > 0
    assert math.isclose(ours["perplexity"], math.exp(nll / tokens), rel_tol=1e-4)
    assert ours["generations"] == cascade["generations"] == min(2, len(rows))
    for row in metrics["comparison"]:
        lower = row["metric"] in ("wer", "cer", "perplexity")
        if row["speech-llm"] != row["cascade"]:
            assert row["better"] == ("speech-llm" if (row["speech-llm"] < row["cascade"]) == lower else "cascade")
    assert {(r["task"], r["metric"]) for r in metrics["comparison"]} >= {
        ("next_turn", "perplexity"),
        ("transcription", "wer"),
    }
    assert "Against the cascade" in (out / "README.md").read_text()


def test_fiche_rows_are_whole_calls_with_their_summary(speech_llm):
    from llm4all_recipes.parsing import parse_recipe
    from llm4all_recipes.stages.speech_sft import build_rows

    argv = ["--config", STAGE1, "--model_name_or_path", str(speech_llm), "--tasks", '["transcription", "fiche"]']
    splits, report = build_rows(parse_recipe("speech-sft", [*argv, "--max_audio_seconds", "600"]))
    summaries = {}
    for line in Path("tests/fixtures/simsamu-audio/summaries.jsonl").read_text().splitlines():
        row = json.loads(line)
        summaries[row["id"]] = row["summary"]
    rows = [r for split in splits.values() for r in split if r["task"] == "fiche"]
    assert {r["id"].split("#")[0] for r in rows} == set(summaries) and len(rows) == len(summaries) == 1
    for r in rows:  # the whole call (no span) with its summary
        assert r["start"] is None and r["completion"] == summaries[r["id"].split("#")[0]].strip()
        assert r["audio"].endswith(".m4a")
    assert sum(counts.get("fiche", 0) for counts in report["rows"].values()) == 1


def test_speech_sft_assembles_a_whisper_and_a_causal_lm(tiny_whisper, tiny_model, tmp_path):
    """audio_encoder + a causal LM in model_name_or_path: assembled, then trained; the encoder is Whisper's own."""
    out = tmp_path / "assembled"
    argv = ["speech-sft", "--config", STAGE1, "--model_name_or_path", str(tiny_model)]
    argv += ["--audio_encoder", str(tiny_whisper), "--output_dir", str(out), "--max_steps", "1", "--keep_best", "false"]
    assert main(argv) == 0
    whisper, trained = load_file(tiny_whisper / "model.safetensors"), load_file(out / "model.safetensors")
    encoder = {k.removeprefix("audio_encoder."): t for k, t in trained.items() if k.startswith("audio_encoder.")}
    assert encoder and all(torch.equal(t, whisper[f"model.encoder.{k}"]) for k, t in encoder.items())
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llm4all_speech_llm" and config["stack_factor"] == 4
