"""Speech: audio decoding, French WER/CER, the simsamu-layout reader, `llm4all transcribe` (end to end, bad
input, resume), and Whisper through compress / feature-distill / export-dense (both stacks, reloads)."""

import json
import logging
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from llm4all_recipes.cli import main, run_stage
from llm4all_recipes.speech.audio import AudioError, decode, write_m4a, write_wav
from llm4all_recipes.speech.sources import call_recording, read_rttm, read_srt, turn_references
from llm4all_recipes.speech.wer import error_rates, normalize_fr

CALLS = Path("tests/fixtures/simsamu-audio")
SPEECH = Path("tests/fixtures/speech")
TRANSCRIBE = "recipes/tiny-whisper/transcribe/simsamu.yaml"


# --------------------------------------------------------------------------- WER / CER
@pytest.mark.parametrize(
    ("text", "normal"),
    [
        ("Samu bonjour, je vous écoute.", "samu bonjour je vous écoute"),
        (
            "L’appel du 1er mai : 15 personnes, 3,5 km",
            "l appel du premier mai quinze personnes trois virgule cinq km",
        ),
        ("Peut-être <NA> [rire] À demain !", "peut être à demain"),
        ("Il a 1 000 ans", "il a mille ans"),
        ("3,05 mg, la 1re fois", "trois virgule zéro cinq mg la première fois"),
    ],
)
def test_french_normalisation(text, normal):
    assert normalize_fr(text) == normal


def test_error_rates_against_hand_counts():
    # "le chat dort" vs "le chien dort": 1 substitution / 3 words; chars: chat->chien = 3 edits / 12 chars;
    # "il est là" vs "il est là bas": 1 insertion / 3 words; the <NA> pair has no reference and is left out
    r = error_rates(["Le chat dort.", "Il est là", "<NA>"], ["le chien dort", "il est là-bas", "bruit"])
    assert (r["substitutions"], r["deletions"], r["insertions"]) == (1, 0, 1)
    assert r["reference_words"] == 6 and r["wer"] == pytest.approx(2 / 6, abs=1e-4)
    assert r["reference_chars"] == 12 + 9 and r["cer"] == pytest.approx((3 + 4) / 21, abs=1e-4)
    assert r["segments"] == 2 and r["empty_references"] == 1


# --------------------------------------------------------------------------- audio
def _tone(rate: int, seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.mark.parametrize(
    ("fmt", "rate"), [("wav", 8000), ("wav", 22050), ("wav", 48000), ("m4a", 8000), ("m4a", 16000)]
)
def test_decode_resamples_to_16k_mono(tmp_path, fmt, rate):
    path = tmp_path / f"tone.{fmt}"
    (write_wav if fmt == "wav" else write_m4a)(path, _tone(rate, 2.0), rate)
    audio = decode(path)
    assert audio.dtype == np.float32
    assert abs(len(audio) - 32000) <= (2048 if fmt == "m4a" else 16)  # AAC pads to whole frames
    spectrum = np.abs(np.fft.rfft(audio[4000:28000]))
    assert np.fft.rfftfreq(24000, 1 / 16000)[spectrum.argmax()] == pytest.approx(440, abs=2)


def test_decode_errors_name_the_file(tmp_path):
    low = tmp_path / "low.wav"
    with wave.open(str(low), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(4000)
        f.writeframes(b"\0\0" * 4000)
    text = tmp_path / "notes.m4a"
    text.write_text("not audio")
    for path, why in (
        (low, "sample rate 4000 Hz is not supported"),
        (text, "not a readable audio file"),
        (tmp_path / "missing.wav", "no such file"),
    ):
        with pytest.raises(AudioError) as err:
            decode(path)
        assert str(err.value).startswith(str(path)) and why in str(err.value)


# --------------------------------------------------------------------------- the simsamu layout
def test_call_segments_follow_rttm_turns_with_srt_references():
    folder = CALLS / "dj_2022_feu"
    turns = read_rttm(folder / "dj_2022_feu.rttm")
    cues = read_srt(folder / "dj_2022_feu.srt")
    recording, skipped = call_recording(folder, {"inintelligible"})
    assert skipped == 0 and recording.audio == folder / "dj_2022_feu.m4a"
    assert [(s.start, s.end, s.speaker) for s in recording.segments] == [(a, b, c) for a, b, c in turns]
    assert [s.reference for s in recording.segments] == [c[2] for c in cues]
    assert recording.segments[0].speaker == "medecin" and recording.segments[1].speaker == "patient_1"


def test_turn_references_pick_the_most_overlapping_turn_and_drop_na():
    turns = [(0.0, 2.0, "medecin"), (2.0, 5.0, "patient"), (5.0, 6.0, "medecin")]
    cues = [(0.1, 1.9, "bonjour"), (1.8, 4.0, "au secours"), (4.5, 5.2, "vite"), (5.1, 5.9, "<NA>")]
    assert turn_references(turns, cues) == ["bonjour", "au secours vite", None]


# --------------------------------------------------------------------------- transcribe
def _source_with_bad_calls(tmp_path: Path) -> Path:
    """The two audio fixture calls, plus: a placeholder (text) .m4a, a call folder without audio, a 4 kHz WAV, and
    a malformed RTTM."""
    root = tmp_path / "calls"
    shutil.copytree(CALLS, root)
    for name, make in (("dj_2022_chute", "text"), ("dj_mai_chute", None), ("dj_mai_brulures", "low")):
        shutil.copytree(Path("tests/fixtures/simsamu") / name, root / name)
        audio = root / name / f"{name}.m4a"
        audio.unlink()
        if make == "text":
            audio.write_text("placeholder, not audio")
        elif make == "low":
            write_wav(root / name / f"{name}.wav", _tone(4000, 1.0), 4000)
    bad = root / "dj_2022_douleur_thoracique"  # good audio, a malformed RTTM line
    shutil.copytree(Path("tests/fixtures/simsamu") / bad.name, bad)
    shutil.copyfile(CALLS / "dj_2022_feu" / "dj_2022_feu.m4a", bad / f"{bad.name}.m4a")
    lines = (bad / f"{bad.name}.rttm").read_text().splitlines()
    (bad / f"{bad.name}.rttm").write_text("\n".join([lines[0], "SPEAKER x 1 soon", *lines[2:]]) + "\n")
    return root


@pytest.fixture(scope="module")
def transcribed(tiny_whisper, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("transcribe")
    source = _source_with_bad_calls(tmp)
    out = tmp / "out"
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("llm4all_recipes").addHandler(handler)
    try:
        report = run_stage(
            "transcribe",
            [
                "--config",
                TRANSCRIBE,
                "--model_name_or_path",
                str(tiny_whisper),
                "--source",
                str(source),
                "--output_dir",
                str(out),
            ],
        )
    finally:
        logging.getLogger("llm4all_recipes").removeHandler(handler)
    errors = [r.getMessage() for r in records if r.levelno >= logging.ERROR]
    return source, out, report, errors


def test_transcribe_end_to_end(transcribed):
    import datasets

    _, out, report, _ = transcribed
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["transcribed"] == 2 and metrics["failed_count"] == 4 and metrics["recordings"] == 4
    assert report["asr"] == metrics["asr"]
    ds = datasets.load_from_disk(str(out))
    rows = [r for split in ds.values() for r in split]
    assert sorted(r["id"] for r in rows) == ["dj_2022_feu", "dj_2023_avc"]
    for row in rows:  # build-dataset's dialogue rows, from the ASR text of the RTTM turns
        assert row["messages"][0]["role"] == "system"
        turns = [s for s in row["segments"] if s["text"]]
        assert [m["content"] for m in row["messages"][1:]] == _merged(turns)
        assert {m["role"] for m in row["messages"][1:]} == {"assistant", "user"}
    # the WER in metrics.json is the error rate of the dataset's own (reference, transcription) pairs
    pairs = [(s["reference"], s["text"]) for r in rows for s in r["segments"] if s["reference"]]
    assert metrics["asr"]["overall"] == error_rates(*zip(*pairs))
    assert set(metrics["asr"]["per_speaker"]) == {"medecin", "patient", "patient_1"}
    assert set(metrics["asr"]["per_recording"]) == {"dj_2022_feu", "dj_2023_avc"}
    card = (out / "README.md").read_text()
    assert "## Evaluation" in card and "| **all** |" in card and "automatic-speech-recognition" in card
    assert str(Path.cwd()) not in card + json.dumps(metrics)


def _merged(segments):
    roles = {"medecin": "assistant"}
    out, last = [], None
    for s in segments:
        role = roles.get(s["speaker"], "user")
        if role == last:
            out[-1] += " " + s["text"]
        else:
            out.append(s["text"])
        last = role
    return out


def test_transcribe_splits_are_build_datasets(transcribed, tmp_path):
    """A call lands in the same split whether built from its reference transcript or from its recording."""
    import datasets

    source, out, _, _ = transcribed
    calls = tmp_path / "calls"  # the same calls, the malformed RTTM mended (build-dataset stops on it)
    shutil.copytree(source, calls)
    name = "dj_2022_douleur_thoracique"
    shutil.copyfile(Path("tests/fixtures/simsamu") / name / f"{name}.rttm", calls / name / f"{name}.rttm")
    built = tmp_path / "built"
    assert (
        main(
            [
                "build-dataset",
                "--config",
                "recipes/datasets/simsamu.yaml",
                "--source",
                str(calls),
                "--output_dir",
                str(built),
                "--splits",
                '{"train": 0.5, "test": 0.5}',
                "--push_to_hub",
                "false",
            ]
        )
        == 0
    )
    split_of = lambda folder: {r["id"]: s for s, d in datasets.load_from_disk(str(folder)).items() for r in d}  # noqa: E731
    asr, ref = split_of(out), split_of(built)
    assert asr and all(ref[k] == v for k, v in asr.items())


def test_bad_recordings_are_one_line_each_and_counted(transcribed):
    source, out, _, errors = transcribed
    metrics = json.loads((out / "metrics.json").read_text())
    expected = {
        "dj_2022_chute": (source / "dj_2022_chute" / "dj_2022_chute.m4a", "not a readable audio file"),
        "dj_mai_chute": (source / "dj_mai_chute", "no audio file"),
        "dj_mai_brulures": (source / "dj_mai_brulures" / "dj_mai_brulures.wav", "sample rate 4000 Hz"),
        "dj_2022_douleur_thoracique": (
            source / "dj_2022_douleur_thoracique" / "dj_2022_douleur_thoracique.rttm:2",
            "malformed RTTM line",
        ),
    }
    assert set(metrics["failed"]) == set(expected)
    for call, (path, why) in expected.items():
        lines = [e for e in errors if str(path) in e]
        assert len(lines) == 1 and why in lines[0] and "\n" not in lines[0], (call, errors)


def test_transcribe_resumes_at_the_first_unfinished_shard(tiny_whisper, tmp_path, monkeypatch):
    from llm4all_recipes.speech import asr

    args = [
        "--config",
        TRANSCRIBE,
        "--model_name_or_path",
        str(tiny_whisper),
        "--output_dir",
        str(tmp_path / "o"),
    ]
    calls = []
    real = asr.Transcriber.clips

    def failing(self, clips, batch_size, progress=None):
        calls.append(len(clips))
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed while transcribing the second call
        return real(self, clips, batch_size, progress)

    monkeypatch.setattr(asr.Transcriber, "clips", failing)
    with pytest.raises(KeyboardInterrupt):
        run_stage("transcribe", args)
    shard = tmp_path / "o.tmp" / "shards" / "shard-00000.json"
    assert shard.is_file() and not (tmp_path / "o.tmp" / "shards" / "shard-00001.json").exists()
    first = json.loads(shard.read_text())
    calls.clear()
    monkeypatch.setattr(asr.Transcriber, "clips", lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1])
    run_stage("transcribe", args)
    assert len(calls) == 1  # only the unfinished call was transcribed again
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    seg = first["results"][first["ids"][0]]["segments"]
    assert metrics["asr"]["per_recording"][first["ids"][0]] == error_rates(
        [s["reference"] for s in seg if s["reference"]], [s["text"] for s in seg if s["reference"]]
    )
    assert not (tmp_path / "o" / "shards").exists() and not (tmp_path / "o.tmp").exists()


def test_transcribe_manifest_long_form_with_timestamps(tiny_whisper, tmp_path):
    import datasets

    out = tmp_path / "manifest"
    run_stage(
        "transcribe",
        [
            "--config",
            TRANSCRIBE,
            "--model_name_or_path",
            str(tiny_whisper),
            "--source",
            str(SPEECH / "eval.jsonl"),
            "--output_dir",
            str(out),
            "--max_new_tokens",
            "8",
        ],
    )
    ds = datasets.load_from_disk(str(out))
    rows = list(ds["eval"])
    manifest = [json.loads(line) for line in (SPEECH / "eval.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [m["id"] for m in manifest]
    assert [r["reference"] for r in rows] == [m["text"] for m in manifest]
    assert [r["audio"] for r in rows] == [m["audio"] for m in manifest]  # as the manifest writes it
    for row, m in zip(rows, manifest):
        assert row["text"] == " ".join(s["text"] for s in row["segments"])
        assert all(0 <= s["start"] <= s["end"] <= m["seconds"] + 0.2 for s in row["segments"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["asr"]["overall"] == error_rates([r["reference"] for r in rows], [r["text"] for r in rows])


@pytest.mark.parametrize(
    ("override", "key"),
    [(["--language", "klingon"], "language"), (["--max_new_tokens", "500"], "max_new_tokens")],
)
def test_transcribe_recipe_errors(tiny_whisper, override, key, capsys):
    assert main(["transcribe", "--config", TRANSCRIBE, "--model_name_or_path", str(tiny_whisper), *override]) == 2
    assert f"key '{key}'" in capsys.readouterr().err


def test_transcribe_refuses_a_text_model(tiny_model, tmp_path, capsys):
    assert (
        main(
            [
                "transcribe",
                "--config",
                TRANSCRIBE,
                "--model_name_or_path",
                str(tiny_model),
                "--output_dir",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "not a speech-to-text model" in capsys.readouterr().err
    assert not (tmp_path / "x").exists() and not (tmp_path / "x.tmp").exists()


# --------------------------------------------------------------------------- compressing Whisper
def test_layer_stream_runs_both_stacks_as_the_model(tiny_whisper):
    from llm4all_recipes.compression.calibration import LayerStream, layer_stacks
    from llm4all_recipes.models import load_model

    model = load_model(str(tiny_whisper)).eval()
    torch.manual_seed(0)
    inputs = {"input_features": torch.randn(3, 80, 3000), "decoder_input_ids": torch.randint(0, 1000, (3, 7))}
    with torch.no_grad():
        ref = model(**inputs, output_hidden_states=True)
    stacks = layer_stacks(model)
    assert [p for p, _ in stacks] == ["model.encoder.layers", "model.decoder.layers"]
    for (prefix, layers), states in zip(stacks, (ref.encoder_hidden_states, ref.decoder_hidden_states)):
        stream = LayerStream(model, inputs, device="cpu", batch_size=2, stack=(prefix, layers))
        assert torch.allclose(torch.cat(stream.inputs), states[0], atol=1e-5)
        for i, layer in enumerate(layers[:-1]):  # the last state is after the final layer norm
            stream.inputs = stream.forward(layer)
            assert torch.allclose(torch.cat(stream.inputs), states[i + 1], atol=1e-4), (prefix, i)
    # the decoder blocks see the encoder's output through their cross-attention
    dec = LayerStream(model, inputs, device="cpu", batch_size=3, stack=stacks[1])
    assert torch.allclose(dec.kwargs[0]["encoder_hidden_states"], ref.encoder_last_hidden_state, atol=1e-5)


@pytest.fixture(scope="module")
def whisper_chain(tiny_whisper, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("whisper-chain")
    compressed, distilled, dense = tmp / "compress", tmp / "fd", tmp / "dense"
    assert (
        main(
            [
                "compress",
                "--config",
                "recipes/tiny-whisper/compress/whitening-40.yaml",
                "--model_name_or_path",
                str(tiny_whisper),
                "--output_dir",
                str(compressed),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "feature-distill",
                "--config",
                "recipes/tiny-whisper/feature-distill/whitening-40.yaml",
                "--model_name_or_path",
                str(compressed),
                "--output_dir",
                str(distilled),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "export-dense",
                "--config",
                "recipes/tiny-whisper/export-dense/whitening-40.yaml",
                "--model_name_or_path",
                str(distilled),
                "--output_dir",
                str(dense),
            ]
        )
        == 0
    )
    return compressed, distilled, dense


def _logits(model, seed=0):
    torch.manual_seed(seed)
    x, d = torch.randn(2, 80, 3000), torch.randint(0, 1000, (2, 9))
    with torch.no_grad():
        return model(input_features=x, decoder_input_ids=d).logits


def test_compressed_whisper_targets_both_stacks_and_reloads_both_ways(whisper_chain):
    from transformers import AutoModelForSpeechSeq2Seq

    from llm4all_recipes.compression import LowRankLinear
    from llm4all_recipes.models import load_model

    compressed, _, _ = whisper_chain
    config = json.loads((compressed / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSpeechSeq2Seq"].endswith("LowRankForSpeechSeq2Seq")
    ranks = config["compression_config"]["ranks"]
    for name in (
        "model.encoder.layers.0.self_attn.q_proj",
        "model.encoder.layers.1.fc2",
        "model.decoder.layers.0.encoder_attn.k_proj",
        "model.decoder.layers.1.fc1",
    ):
        assert name in ranks
    ours = load_model(str(compressed))
    remote = AutoModelForSpeechSeq2Seq.from_pretrained(str(compressed), trust_remote_code=True)
    assert isinstance(ours.get_submodule("model.decoder.layers.0.encoder_attn.k_proj"), LowRankLinear)
    assert torch.equal(_logits(ours), _logits(remote))
    metrics = json.loads((compressed / "metrics.json").read_text())
    assert set(metrics["eval"]) == {"eval"} and metrics["eval"]["eval"]["tokens"] > 0  # transcripts' perplexity


def test_distilled_whisper_blocks_and_dense_export(whisper_chain):
    from transformers import AutoModelForSpeechSeq2Seq

    from llm4all_recipes.models import load_model

    _, distilled, dense = whisper_chain
    metrics = json.loads((distilled / "metrics.json").read_text())
    assert [b["layer"] for b in metrics["blocks"]] == [0, 1, 2, 3]  # 2 encoder + 2 decoder blocks
    plain = AutoModelForSpeechSeq2Seq.from_pretrained(str(dense))
    assert type(plain).__name__ == "WhisperForConditionalGeneration"
    assert torch.allclose(_logits(plain), _logits(load_model(str(distilled))), atol=1e-4)
    assert (dense / "processor_config.json").is_file()


def test_whisper_card_snippet_runs_verbatim_without_the_package(whisper_chain, tmp_path):
    """The low-rank Whisper's card: its Python block, as written, transcribes in a process without the package."""
    import os
    import subprocess
    import sys

    from test_cards import SNIPPET_CHILD

    compressed, _, _ = whisper_chain
    card = (compressed / "README.md").read_text()
    assert "AutoModelForSpeechSeq2Seq" in card and "pipeline_tag: automatic-speech-recognition" in card
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run(
        [sys.executable, "-c", SNIPPET_CHILD, str(compressed / "README.md")],
        env=env,
        cwd=Path.cwd(),
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, run.stderr[-3000:]


def test_transcribe_manifest_without_timestamps_is_one_batched_clip_per_recording(tiny_whisper, tmp_path):
    import datasets

    from llm4all_recipes.speech import asr

    out = tmp_path / "clips"
    run_stage(
        "transcribe",
        [
            "--config",
            TRANSCRIBE,
            "--model_name_or_path",
            str(tiny_whisper),
            "--source",
            str(SPEECH / "eval.jsonl"),
            "--output_dir",
            str(out),
            "--timestamps",
            "false",
            "--batch_size",
            "4",
        ],
    )
    rows = list(datasets.load_from_disk(str(out))["eval"])
    assert [len(r["segments"]) for r in rows] == [1] * 4
    assert all(r["segments"][0]["start"] == 0 and r["segments"][0]["text"] == r["text"] for r in rows)
    # the same texts as the model's own batched generate() on those recordings
    from llm4all_recipes.models import load_model, load_processor

    t = asr.Transcriber(
        load_model(str(tiny_whisper)), load_processor(str(tiny_whisper)), language="fr", device="cpu", max_new_tokens=32
    )
    audio = [decode(SPEECH / json.loads(line)["audio"]) for line in (SPEECH / "eval.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == t.clips(audio, batch_size=4)


def test_sft_takes_the_transcribed_dataset_unchanged(transcribed, tiny_model, tmp_path):
    """The ASR dataset is build-dataset's layout: the SAMU SFT recipe trains on it with only its path changed."""
    import datasets

    _, out, _, _ = transcribed
    splits = list(datasets.load_from_disk(str(out)))
    evals = [{"path": str(out), "split": s} for s in splits[1:]]
    assert (
        main(
            [
                "sft",
                "--config",
                "recipes/tiny-llama/sft/simsamu.yaml",
                "--model_name_or_path",
                str(tiny_model),
                "--datasets",
                json.dumps([{"path": str(out), "split": splits[0]}]),
                "--eval_datasets",
                json.dumps(evals),
                "--max_steps",
                "2",
                "--output_dir",
                str(tmp_path / "sft"),
                "--push_to_hub",
                "false",
            ]
        )
        == 0
    )
    metrics = json.loads((tmp_path / "sft" / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 2 and metrics["train"]["train_loss"] > 0


def test_metrics_skip_groups_without_a_reference_word():
    """References that normalise to nothing (only <NA> / tags) give no rate, and no crash (the card renders)."""
    from llm4all_recipes.speech.sources import Recording, Segment
    from llm4all_recipes.stages.transcribe import asr_metrics, evaluation_md

    recs = [
        Recording("a", Path("a.m4a"), [Segment(0, 1, "medecin", "<NA>")]),
        Recording("b", Path("b.m4a"), [Segment(0, 1, "patient", "bonjour"), Segment(1, 2, "medecin", "[rire]")]),
    ]
    results = {
        "a": {"long_form": False, "segments": [{"speaker": "medecin", "reference": "<NA>", "text": "x"}]},
        "b": {
            "long_form": False,
            "segments": [
                {"speaker": "patient", "reference": "bonjour", "text": "bonjour"},
                {"speaker": "medecin", "reference": "[rire]", "text": "ha"},
            ],
        },
    }
    m = asr_metrics(recs, results)
    assert set(m["per_recording"]) == {"b"} and set(m["per_speaker"]) == {"patient"} and m["overall"]["wer"] == 0
    assert asr_metrics(recs[:1], results) == {}
    assert "| **all** | 0.0% |" in evaluation_md({"asr": m}) and "No reference" in evaluation_md({"asr": {}})


def test_a_hub_parquet_dataset_with_embedded_audio_is_a_source(tmp_path):
    import datasets

    from llm4all_recipes.speech.sources import manifest_recordings

    rows = [json.loads(line) for line in (SPEECH / "eval.jsonl").read_text().splitlines()[:2]]
    ds = datasets.Dataset.from_dict(
        {
            "audio": [{"bytes": (SPEECH / r["audio"]).read_bytes(), "path": Path(r["audio"]).name} for r in rows],
            "text": [r["text"] for r in rows],
        }
    )
    (tmp_path / "data").mkdir()
    ds.cast_column("audio", datasets.Audio(decode=False)).to_parquet(
        str(tmp_path / "data" / "test-00000-of-00001.parquet")
    )
    recs = manifest_recordings(tmp_path)
    assert [r.reference for r in recs] == [r["text"] for r in rows] and [r.split for r in recs] == ["test"] * 2
    for rec, row in zip(recs, rows):
        assert np.array_equal(decode(rec.audio_source, name=str(rec.audio)), decode(SPEECH / row["audio"]))


def test_repeated_manifest_ids_are_refused_before_loading(tiny_whisper, tmp_path, capsys):
    line = (SPEECH / "eval.jsonl").read_text().splitlines()[0]
    (tmp_path / "a.jsonl").write_text(line.replace('"audio/', f'"{SPEECH.resolve()}/audio/') + "\n")
    (tmp_path / "b.jsonl").write_text(line.replace('"audio/', f'"{SPEECH.resolve()}/audio/') + "\n")
    assert (
        main(
            [
                "transcribe",
                "--config",
                TRANSCRIBE,
                "--model_name_or_path",
                str(tiny_whisper),
                "--source",
                str(tmp_path),
                "--output_dir",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "ids must be unique" in capsys.readouterr().err and not (tmp_path / "out.tmp").exists()
