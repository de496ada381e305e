"""Speech-text model ("LLM voix+texte") against the cascade, at equal training CPU, on synthetic French speech.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/whisper_french.py --steps 1300 --max-minutes 1000 \\
        --snapshot-steps 600 700 800 900 1000 1100 --out outputs/bench/whisper-fr
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speech_llm.py --write-docs

(run from the repository root, after benchmarks/french_speech.py and benchmarks/smollm2.py; the second command can
start once the first has written its 600-step snapshot: it trains, then stops until the Whisper is finished; run it
again). Both systems start from the same two models trained or converted here: the French Whisper
(`whisper_french.py`, trained from scratch on the espeak-ng sentences) and SmolLM2-135M-Instruct, frozen in both.
**Speech-text model**: the Whisper's encoder after `--encoder-steps` steps + a projector trained with
`llm4all speech-sft` (its recipes under benchmarks/recipes/speech-llm/): first on the sentences (transcription),
then on the synthetic SAMU calls (transcription + the regulator's next turn). **Cascade**: the Whisper checkpoint
(a snapshot or the final model) whose training CPU is the closest to the speech-text model's (the encoder's steps +
the projector's), transcribing for SmolLM2. Training CPU is counted the same way on both
sides: process CPU seconds (`time.process_time()`) of the training steps only — not loading, feature caching or the
held-out evaluations. Then `llm4all eval` scores both on the same held-out rows (the sentences' eval split; the
calls' test split). Results: benchmarks/results/speech-llm.json and the `speech-llm` section of docs/BENCHMARKS.md.
Finished stage outputs are kept and skipped on a rerun.
"""

import argparse
import json
import time
from pathlib import Path

import torch
import yaml
from report import add_docs_flag, command_line, machine, write_section
from transformers import TrainerCallback

from llm4all_recipes.cli import main as llm4all
from llm4all_recipes.cli import run_stage

RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = Path("benchmarks/recipes/speech-llm")


class StepCPU(TrainerCallback):
    """Process CPU seconds spent inside training steps (forward, backward, optimizer)."""

    def __init__(self):
        self.seconds, self._start = 0.0, None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds += time.process_time() - self._start


def checkpoints(whisper: Path) -> dict[int, dict]:
    """{steps: metrics} of the Whisper's snapshots (<whisper>-step<N>) and of its final model when finished."""
    out = {}
    for folder in [*whisper.parent.glob(f"{whisper.name}-step*"), whisper]:
        path = folder / "metrics.json"
        if path.is_file() and (folder != whisper or json.loads(path.read_text())["status"] == "final"):
            metrics = json.loads(path.read_text())
            out[metrics["steps"]] = {"path": str(folder), "cpu": metrics["train_cpu_seconds"]}
    return dict(sorted(out.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--whisper", type=Path, default=Path("outputs/bench/whisper-fr"))
    parser.add_argument("--encoder-steps", type=int, default=600, help="the snapshot the speech-text model starts from")
    parser.add_argument(
        "--without-final",
        action="store_true",
        help="choose the cascade's Whisper among the snapshots only (when the final model is missing)",
    )
    add_docs_flag(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result_path = RESULTS / "speech-llm.json"
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    encoder = f"{args.whisper}-step{args.encoder_steps}"
    found = checkpoints(args.whisper)
    if args.encoder_steps not in found:
        raise SystemExit(f"no {encoder} yet: see this file's docstring")

    # 1. The speech-text model: stage 1 on the sentences, stage 2 on the calls (each kept once finished).
    cpu = result.setdefault("cpu", {})
    stages = {
        "stage1": ["--config", str(RECIPES / "speech-sft/french-speech.yaml"), "--audio_encoder", encoder],
        "stage2": ["--config", str(RECIPES / "speech-sft/simsamu-tts.yaml")],
    }
    for name, argv in stages.items():
        recipe = yaml.safe_load(Path(argv[1]).read_text())
        if name not in cpu or not (Path(recipe["output_dir"]) / "metrics.json").is_file():
            counter = StepCPU()
            run_stage("speech-sft", argv, callbacks=[counter])
            cpu[name] = counter.seconds
            result.setdefault("steps", {})[name] = recipe["max_steps"]
            result_path.write_text(json.dumps(result, indent=1))
    cpu["encoder"] = found[args.encoder_steps]["cpu"]
    cpu["speech_llm_total"] = cpu["encoder"] + cpu["stage1"] + cpu["stage2"]
    if not any(c["path"] == str(args.whisper) for c in found.values()) and not args.without_final:
        raise SystemExit(f"trained; {args.whisper} is not finished yet: run again once it is (or --without-final)")

    # 2. The cascade's Whisper: the checkpoint whose training CPU is the closest to the speech-text model's.
    cascade_steps = min(found, key=lambda k: abs(found[k]["cpu"] - cpu["speech_llm_total"]))
    cpu["cascade_total"] = found[cascade_steps]["cpu"]
    cascade = found[cascade_steps]["path"]

    # 3. Both systems on the same held-out rows.
    scores = {}
    for name in ("french-speech", "simsamu-tts"):
        recipe = RECIPES / "eval" / f"{name}.yaml"
        out = Path(yaml.safe_load(recipe.read_text())["output_dir"])
        argv = ["eval", "--config", str(recipe), "--cascade_asr", cascade]
        if not (out / "metrics.json").is_file() and llm4all(argv):
            raise SystemExit(f"failed: eval {recipe}")
        metrics = json.loads((out / "metrics.json").read_text())
        scores[name] = {"speech": metrics["speech"], "comparison": metrics["comparison"]}
    cascade_metrics = json.loads((Path(cascade) / "metrics.json").read_text())
    result.update(
        command=command_line(),
        machine=machine(),
        whisper={
            "encoder_steps": args.encoder_steps,
            "cascade_steps": cascade_steps,
            "cascade": cascade,
            "checkpoints": found,
            "parameters": cascade_metrics["parameters"],
        },
        scores=scores,
    )
    result_path.write_text(json.dumps(result, indent=1))
    print(json.dumps({"cpu": cpu, "comparison": {k: v["comparison"] for k, v in scores.items()}}, indent=1))
    if args.write_docs:
        write_section("speech-llm", markdown(result))


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if isinstance(value, float) and value < 1.5 else f"{value:,.2f}"


def markdown(result: dict) -> str:
    cpu, whisper, steps = result["cpu"], result["whisper"], result["steps"]
    lines = [
        "## Speech-text model against the cascade, at equal training CPU (synthetic French speech)",
        "",
        "```bash",
        "OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/whisper_french.py --steps 1300 --max-minutes 1000 "
        "--snapshot-steps 600 700 800 900 1000 1100 --out outputs/bench/whisper-fr",
        result["command"],
        "```",
        "",
        f"{result['machine']}. Both systems from the same two models: a French Whisper trained here from scratch on "
        f"espeak-ng sentences ({whisper['parameters']:,} parameters) and SmolLM2-135M-Instruct, frozen in "
        f"both. **Speech-text model**: the Whisper's encoder after {whisper['encoder_steps']} steps "
        f"({cpu['encoder'] / 60:.1f} CPU-min) + a projector trained by `llm4all speech-sft`, {steps['stage1']} "
        f"steps on the sentences ({cpu['stage1'] / 60:.1f} CPU-min) then {steps['stage2']} on the synthetic SAMU "
        f"calls ({cpu['stage2'] / 60:.1f} CPU-min): **{cpu['speech_llm_total'] / 60:.1f} CPU-min** of training. "
        f"**Cascade**: the Whisper after {whisper['cascade_steps']} steps (**{cpu['cascade_total'] / 60:.1f} "
        "CPU-min**, the checkpoint closest to that budget) transcribes, SmolLM2 reads the transcript. "
        "Scored by `llm4all eval` on the same held-out rows: the sentences' eval split (transcription), the calls' "
        "test split (each turn's transcription; the regulator's next turn after each caller turn: teacher-forced "
        "perplexity, ROUGE-L of a generated one). CPU is process time of training steps only, 1 thread.",
        "",
        "| held-out set | task | metric | speech-text model | cascade | better |",
        "|---|---|---|---:|---:|---|",
    ]
    for name, score in result["scores"].items():
        for row in score["comparison"]:
            lines.append(
                f"| {name} | {row['task']} | {row['metric']} | {_fmt(row['speech-llm'])} | {_fmt(row['cascade'])} | "
                f"{row['better']} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
