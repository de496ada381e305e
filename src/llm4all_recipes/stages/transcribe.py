"""Transcribe recordings with Whisper into a dataset in build-dataset's layout, with WER/CER against references.

    llm4all transcribe --config recipes/tiny-whisper/transcribe/simsamu.yaml --source <simsamu-layout folder> \
        --output_dir <dir>

A simsamu-layout call is cut along its RTTM turns (speaker labels kept) and the text rows are built as
build-dataset builds them from the reference transcripts (same tasks, same situation-grouped splits), so `sft`,
`generate` and `eval` recipes take the ASR output unchanged. Recordings are processed in shards of
`shard_size`; each finished shard is saved in `<output_dir>.tmp/shards/`, so an interrupted run resumes at the
first unfinished one. A recording that cannot be used (unreadable audio, unsupported sample rate, a call folder
without audio, a malformed RTTM/SRT) is reported on one line naming the file and counted; the others go on.
"""

import json
import logging
import shutil
import time
from pathlib import Path

from tqdm.auto import tqdm

from ..configs import TranscribeRecipe
from ..data import simsamu
from ..errors import RecipeError
from ..hub import local_source
from ..models import is_speech_model, load_model, load_processor, resolve_device
from ..outputs import finish_dataset, staged_output
from ..paths import atomic_write
from ..speech.audio import SAMPLING_RATE, AudioError, cut, decode
from ..speech.sources import Recording, Segment, read_source
from ..speech.wer import error_rates

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- 2. transcription, shard by shard
def transcribe_shard(transcriber, recordings: list[Recording], batch_size: int, bar, timestamps: bool = True) -> dict:
    """{"ids": [...], "results": {id: {...}}} of one shard: decoded, cut, transcribed (failures recorded)."""
    results, clips, owners = {}, [], []
    for rec in recordings:
        try:
            audio = decode(rec.audio_source, name=str(rec.audio))
        except AudioError as err:
            results[rec.id] = {"error": str(err)}
            bar.update(1)
            continue
        seconds = round(len(audio) / SAMPLING_RATE, 2)
        turns = rec.segments
        if turns is None and (timestamps or len(audio) > transcriber.window):
            segments = transcriber.long_form(audio)
            results[rec.id] = {"seconds": seconds, "long_form": True, "segments": segments}
            bar.update(1)
            continue
        if turns is None:  # one window, no timestamps: the whole recording is one batched clip
            turns = [Segment(0.0, seconds, None, rec.reference)]
        results[rec.id] = {"seconds": seconds, "long_form": False, "segments": []}
        for seg in turns:
            clip = cut(audio, seg.start, seg.end)
            results[rec.id]["segments"].append(
                {
                    "start": seg.start,
                    "end": seg.end,
                    "speaker": seg.speaker,
                    "reference": seg.reference,
                    "text": "",
                }
            )
            if len(clip) >= SAMPLING_RATE // 100:  # under 10 ms: nothing to hear
                clips.append(clip)
                owners.append(results[rec.id]["segments"][-1])
    texts = transcriber.clips(clips, batch_size) if clips else []
    for seg, text in zip(owners, texts):
        seg["text"] = text
    bar.update(sum(1 for r in recordings if not results[r.id].get("long_form", True)))
    return {"ids": [r.id for r in recordings], "results": results}


def run_shards(recipe: TranscribeRecipe, tmp: Path, recordings: list[Recording], transcriber) -> dict:
    """{id: result} of every recording, reusing the shards an interrupted run of this recipe finished."""
    folder = tmp / "shards"
    folder.mkdir(exist_ok=True)
    shards = [recordings[i : i + recipe.shard_size] for i in range(0, len(recordings), recipe.shard_size)]
    results: dict = {}
    with tqdm(total=len(recordings), desc="transcribe", unit="recording") as bar:
        for k, shard in enumerate(shards):
            path = folder / f"shard-{k:05d}.json"
            ids = [r.id for r in shard]
            done = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
            if done is None or done.get("ids") != ids:  # a file is only there once complete (atomic write)
                done = transcribe_shard(transcriber, shard, recipe.batch_size, bar, recipe.timestamps)
                atomic_write(path, json.dumps(done, ensure_ascii=False))
            else:
                bar.update(len(shard))
            results.update(done["results"])
    return results


# --------------------------------------------------------------------------- 3. error rates
def asr_metrics(recordings: list[Recording], results: dict) -> dict:
    """WER/CER overall, per recording and per speaker (diarised calls), over segments that have a reference."""
    pairs, per_call, per_speaker = [], {}, {}
    for rec in recordings:
        res = results.get(rec.id, {})
        if "segments" not in res:
            continue
        if res["long_form"]:
            call_pairs = [(rec.reference, " ".join(s["text"] for s in res["segments"]))] if rec.reference else []
        else:
            call_pairs = [(s["reference"], s["text"]) for s in res["segments"] if s["reference"]]
            for s in res["segments"]:
                if s["reference"] and s["speaker"]:
                    per_speaker.setdefault(s["speaker"], []).append((s["reference"], s["text"]))
        if call_pairs:
            per_call[rec.id] = error_rates(*zip(*call_pairs))
            pairs += call_pairs
    scored = lambda groups: {k: r for k, r in groups.items() if r["segments"]}  # noqa: E731
    overall = error_rates(*zip(*pairs)) if pairs else {"segments": 0}
    if not overall["segments"]:  # no reference with a word left after normalisation (e.g. only <NA> tags)
        return {}
    return {
        "overall": overall,
        "per_recording": scored(per_call),
        "per_speaker": scored({k: error_rates(*zip(*v)) for k, v in sorted(per_speaker.items())}),
    }


# --------------------------------------------------------------------------- 4. rows in build-dataset's layout
def call_rows(recipe: TranscribeRecipe, root: Path, recordings, results, report) -> tuple[dict, dict]:
    """({split: rows}, report) of a simsamu-layout source, as build-dataset makes them from the references."""
    calls, segments_of = [], {}
    for rec in recordings:
        res = results.get(rec.id, {})
        if "segments" not in res:
            continue
        segs = [s for s in res["segments"] if s["text"].strip()]
        if not segs:
            report["skipped"]["calls with no transcribed word"] += 1
            continue
        turns = []
        for s in segs:  # speaker labels were checked by read_source
            role = simsamu._role(s["speaker"], set(), "", root) if s.get("speaker") else None
            if turns and role is not None and turns[-1]["role"] == role:
                turns[-1]["content"] += " " + s["text"]
            else:
                turns.append({"role": role, "content": s["text"]})
        calls.append(simsamu.Call(rec.id, turns, res["seconds"]))
        segments_of[rec.id] = res["segments"]
    if not calls:
        raise RecipeError(f"no call has a transcribed word ({len(recordings)} transcribed, all empty)", key="source")
    summaries = Path(recipe.summaries) if recipe.summaries else root / "summaries.jsonl"
    rows, built = simsamu.build_rows(
        root,
        task=recipe.task,
        per_turn=recipe.per_turn,
        calls=calls,
        summaries=summaries if summaries.is_file() else None,
    )
    for row in rows:
        if not recipe.per_turn:
            row["segments"] = segments_of[row["id"]]
    report["without_summary"] = built["without_summary"]
    return simsamu.split_calls(recipe, rows, report)


def manifest_rows(recordings, results, report) -> tuple[dict, dict]:
    """({split: rows}, report) of a manifest: the source's rows, `text` = the transcription, `reference` = theirs."""
    splits: dict[str, list] = {}
    for rec in recordings:
        res = results.get(rec.id, {})
        if "segments" not in res:
            continue
        text = " ".join(s["text"] for s in res["segments"]).strip()
        row = {**rec.row, "id": rec.id, "text": text, "reference": rec.reference, "segments": res["segments"]}
        splits.setdefault(rec.split or "train", []).append(row)
    report["group"], report["splits_from"] = None, "source"
    return splits, report


# --------------------------------------------------------------------------- the stage
def run(recipe: TranscribeRecipe, callbacks=None):
    import datasets

    # 1. The recordings, their turns and references; the checkpoint's kind: all before any model loads.
    root = local_source(recipe.source)
    recordings, report = read_source(
        root,
        skip_speakers=set(recipe.skip_speakers),
        summaries=recipe.summaries,
        need_turns=None if recipe.task == "transcript" else f"task {recipe.task}",
    )
    plan = check_recordings(recipe, recordings, report)
    if recipe.dry_run:
        print(json.dumps(plan, indent=2))
        return plan

    with staged_output(recipe, "transcribe", resume=True) as tmp:
        # 2. Model, then shard by shard (resumable).
        started = time.perf_counter()
        results = run_shards(recipe, tmp, recordings, load_transcriber(recipe))
        elapsed = time.perf_counter() - started
        for rid, res in results.items():
            if "error" in res:
                report["failed"][rid] = res["error"]
                logger.error("%s", res["error"])
        # written files name the source as the recipe does (a Hub dataset's local cache path is this machine's)
        report["failed"] = {k: v.replace(str(root), recipe.source) for k, v in report["failed"].items()}

        # 3. Error rates; 4. rows, splits, dataset.
        asr = asr_metrics(recordings, results)
        if report["layout"] == "simsamu":
            splits, report = call_rows(recipe, root, recordings, results, report)
        else:
            splits, report = manifest_rows(recordings, results, report)
        report.update(plan, **run_facts(recipe, results, elapsed, splits, report), asr=asr)
        if report["failed"]:
            logger.warning("%d recording(s) failed and were left out (metrics.json lists them)", len(report["failed"]))
        if not any(splits.values()):
            raise RecipeError(
                f"no row was built (skipped: {dict(report['skipped'])}, task {recipe.task!r})", key="task"
            )
        dataset = datasets.DatasetDict(
            {name: datasets.Dataset.from_list(rows) for name, rows in splits.items() if rows}
        )
        dataset.save_to_disk(str(tmp))
        finish_dataset(
            tmp,
            stage="transcribe",
            recipe=recipe,
            dataset=dataset,
            report=report,
            facts=card_facts(recipe, report),
            parent=recipe.model_name_or_path,
            source=recipe.source,
        )
        shutil.rmtree(tmp / "shards", ignore_errors=True)  # resume-only
    return report


def check_recordings(recipe: TranscribeRecipe, recordings: list[Recording], report: dict) -> dict:
    """The model is a speech model and some recording is usable; the plan (what --dry_run prints)."""
    if not is_speech_model(recipe.model_name_or_path, recipe.model_revision):
        raise RecipeError("not a speech-to-text model (Whisper)", key="model_name_or_path")
    for why in report["failed"].values():
        logger.error("%s", why)
    if not recordings:
        raise RecipeError(f"no usable recording ({len(report['failed'])} failed, see above)", key="source")
    return {
        "recordings": len(recordings),
        "segments": sum(len(r.segments) for r in recordings if r.segments is not None),
        "long_form": sum(r.segments is None for r in recordings),
        "failed_before_decoding": len(report["failed"]),
    }


def load_transcriber(recipe: TranscribeRecipe):
    from ..speech.asr import Transcriber

    model = load_model(
        recipe.model_name_or_path,
        dtype=recipe.dtype,
        revision=recipe.model_revision,
        attn_implementation=recipe.attn_implementation,
    )
    processor = load_processor(recipe.model_name_or_path, recipe.model_revision)
    return Transcriber(
        model,
        processor,
        language=recipe.language,
        device=resolve_device(recipe.device),
        num_beams=recipe.num_beams,
        max_new_tokens=recipe.max_new_tokens,
    )


def run_facts(recipe: TranscribeRecipe, results: dict, elapsed: float, splits: dict, report: dict) -> dict:
    """The report's counts and speed: recordings transcribed and failed, audio seconds, real-time factor, rows."""
    audio_seconds = sum(r.get("seconds", 0) for r in results.values())
    return {
        "transcribed": sum("segments" in r for r in results.values()),
        "failed_count": len(report["failed"]),
        "audio_seconds": round(audio_seconds, 1),
        "real_time_factor": round(elapsed / audio_seconds, 4) if audio_seconds else None,
        "model": recipe.model_name_or_path,
        "splits": {name: len(rows) for name, rows in splits.items()},
        "skipped": dict(report["skipped"]),
    }


# --------------------------------------------------------------------------- the card
def _rates_row(name: str, r: dict) -> str:
    return f"| {name} | {r['wer']:.1%} | {r['cer']:.1%} | {r['reference_words']} | {r['segments']} |"


def evaluation_md(report: dict) -> str:
    asr = report.get("asr") or {}
    if not asr:
        return "No reference transcript: no error rate."
    lines = [
        "Word and character error rates against the reference transcripts (French normalisation: case, "
        "punctuation, apostrophes and hyphens, numbers spelt out; `llm4all_recipes.speech.wer`), corpus-level.",
        "",
        "| | WER | CER | reference words | segments |",
        "|---|---:|---:|---:|---:|",
        _rates_row("**all**", asr["overall"]),
        *(_rates_row(f"speaker `{k}`", v) for k, v in asr["per_speaker"].items()),
        *(_rates_row(f"`{k}`", v) for k, v in asr["per_recording"].items()),
    ]
    return "\n".join(lines)


def card_facts(recipe: TranscribeRecipe, report: dict) -> dict:
    from ..cards import model_ref

    asr = (
        f"Transcribed by {model_ref(recipe.model_name_or_path)} (language `{recipe.language}`, "
        f"{'greedy' if recipe.num_beams == 1 else f'beam {recipe.num_beams}'}), audio decoded and resampled to "
        f"16 kHz mono by PyAV: {report['transcribed']} recording(s), {report['audio_seconds']:.0f} s of audio "
        f"(real-time factor {report['real_time_factor']}); {report['failed_count']} failed."
    )
    if report["layout"] == "simsamu":
        facts = {
            "columns": simsamu.row_columns(recipe.task, recipe.per_turn),
            "license": recipe.license or "mit",
            "task_categories": ["automatic-speech-recognition", "text-generation"],
            "note": "the source calls were played by actors; no real patient data",
        }
        facts["steps"] = [
            asr,
            "Each call is cut along its RTTM turns (speaker labels kept; turns of "
            f"{', '.join(recipe.skip_speakers) or 'no'} speakers skipped); a turn's reference is the text of the SRT "
            "cues it overlaps most; a call without RTTM is transcribed along its SRT cues, without either long-form "
            "with timestamps.",
            "Speakers: `medecin` → regulator (`assistant`), `patient`, `patient_<n>`, `appelant` → caller "
            "(`user`); consecutive turns of one role are merged.",
            f"Rows as build-dataset's simsamu builder makes them from reference transcripts (task `{recipe.task}`), "
            "splits by situation over all calls (the same split as build-dataset's for the same shares and seed).",
        ]
        facts["summary"] = "ASR transcripts of French emergency calls (simsamu layout), in build-dataset's layout."
        if not recipe.per_turn:
            facts["columns"]["segments"] = "[{start, end, speaker, reference, text}] turns and their transcription"
    else:
        facts = {
            "summary": "ASR transcripts of French recordings, one row per recording of the source manifest.",
            "steps": [
                asr,
                "Each recording is transcribed long-form with timestamps."
                if recipe.timestamps
                else "Each recording that fits one window is transcribed as one clip (no timestamps); longer ones "
                "long-form with timestamps.",
            ],
            "columns": {
                "id": "recording id",
                "audio": "its path in the source",
                "text": "the transcription",
                "reference": "the source's `text` (reference), when it has one",
                "segments": "[{start, end, text}] timestamped segments",
            },
            "license": recipe.license,
            "task_categories": ["automatic-speech-recognition"],
            "note": "",
        }
    facts["evaluation"] = evaluation_md(report)
    facts["tags"] = ["automatic-speech-recognition"]
    return facts
