"""Speech-text model ("LLM voix+texte") against the cascade, at equal training CPU, on synthetic French speech.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/whisper_french.py --steps 1400 --max-minutes 1000 \\
        --snapshot-steps 1000 1100 1200 1300 --out outputs/bench/whisper-fr
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/speech_llm.py --write-docs

(run from the repository root, after benchmarks/french_speech.py and benchmarks/smollm2.py). Both systems start
from the same two models trained or converted here: the French Whisper (`whisper_french.py`, trained from scratch on
the espeak-ng sentences) and SmolLM2-135M-Instruct. The cascade is the Whisper after all its steps, whose output
SmolLM2 reads as text. The speech-text model is the Whisper's encoder as it was some steps *earlier* (a snapshot)
+ a projector + SmolLM2 (both frozen), the projector trained with `llm4all speech-sft` on the rest of the budget:
first on the sentences (transcription), then on the synthetic SAMU calls (transcription + next turn). The snapshot
is the latest one that leaves the projector the training CPU the cascade's Whisper spent after it, measured with a
short probe of stage 1 (CPU seconds of the training steps: `time.process_time()` in whisper_french.py, the stage
processes' user + system time here). Then `llm4all eval` scores both systems on the same held-out rows (the
sentences' eval split; the calls' test split). Results: benchmarks/results/speech-llm.json and the `speech-llm`
section of docs/BENCHMARKS.md. Each finished stage output is kept and skipped on a rerun.
"""

import argparse
import json
import resource
import shutil
import tempfile
from pathlib import Path

import torch
import yaml
from report import add_docs_flag, command_line, machine, write_section

from llm4all_recipes.cli import main as llm4all

RESULTS = Path(__file__).resolve().parent / "results"
RECIPES = Path("benchmarks/recipes/speech-llm")
OUT = Path("outputs/bench/speech-llm")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(argv: list[str]) -> float:
    """Run one llm4all command in this process; its CPU seconds."""
    start = cpu_seconds()
    if llm4all(argv) != 0:
        raise SystemExit(f"failed: llm4all {' '.join(argv)}")
    return cpu_seconds() - start


def snapshots(whisper: Path) -> dict[int, float]:
    """{steps: training CPU seconds} of the Whisper's snapshots (<whisper>-step<N>)."""
    out = {}
    for folder in whisper.parent.glob(f"{whisper.name}-step*"):
        metrics = json.loads((folder / "metrics.json").read_text())
        out[metrics["steps"]] = metrics["train_cpu_seconds"]
    return dict(sorted(out.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--whisper", type=Path, default=Path("outputs/bench/whisper-fr"))
    parser.add_argument("--probe-steps", type=int, default=4, help="stage-1 steps timed to choose the snapshot")
    add_docs_flag(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    final = json.loads((args.whisper / "metrics.json").read_text())
    cascade_cpu = final["train_cpu_seconds"]
    points = snapshots(args.whisper)
    if not points:
        raise SystemExit(f"no snapshot of {args.whisper}: train it with --snapshot-steps (see this file's docstring)")
    stage1, stage2 = RECIPES / "speech-sft/french-speech.yaml", RECIPES / "speech-sft/simsamu-tts.yaml"
    steps1 = yaml.safe_load(stage1.read_text())["max_steps"]
    steps2 = yaml.safe_load(stage2.read_text())["max_steps"]
    result_path = RESULTS / "speech-llm.json"
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}

    # 1. The projector's CPU per step, measured on the first snapshot (a throwaway run), to choose the snapshot.
    if "probe" not in result:
        probe_dir = Path(tempfile.mkdtemp(prefix="speech-llm-probe-"))
        try:
            first = next(iter(points))
            argv = ["speech-sft", "--config", str(stage1), "--audio_encoder", f"{args.whisper}-step{first}"]
            argv += ["--output_dir", str(probe_dir / "run"), "--max_steps", "1", "--keep_best", "false"]
            warm = run(argv)  # loading, assembly, the first step
            shutil.rmtree(probe_dir / "run")
            argv[argv.index("--max_steps") + 1] = str(1 + args.probe_steps)
            per_step = (run(argv) - warm) / args.probe_steps
        finally:
            shutil.rmtree(probe_dir, ignore_errors=True)
        # stage 2's rows are longer (whole turns, answers): counted at stage 1's cost per position
        projector_cpu = per_step * (steps1 + steps2 * 4 * 384 / (8 * 256))
        fitting = [k for k, c in points.items() if c + projector_cpu <= cascade_cpu]
        chosen = max(fitting) if fitting else min(points)
        result.update(probe={"cpu_per_step": per_step, "projector_cpu_planned": projector_cpu, "snapshot": chosen})
        result_path.write_text(json.dumps(result, indent=1))
    chosen = result["probe"]["snapshot"]

    # 2. The speech-text model: stage 1 on the sentences, stage 2 on the calls (kept when already done).
    budget = result.setdefault("cpu", {})
    for name, argv in (
        ("stage1", ["speech-sft", "--config", str(stage1), "--audio_encoder", f"{args.whisper}-step{chosen}"]),
        ("stage2", ["speech-sft", "--config", str(stage2)]),
    ):
        out = Path(yaml.safe_load(Path(argv[2]).read_text())["output_dir"])
        if name not in budget or not (out / "metrics.json").is_file():
            budget[name] = run(argv)
            result_path.write_text(json.dumps(result, indent=1))
    budget["speech_llm_total"] = points[chosen] + budget["stage1"] + budget["stage2"]
    budget["cascade_total"] = cascade_cpu

    # 3. Both systems on the same held-out rows.
    scores = {}
    for name in ("french-speech", "simsamu-tts"):
        recipe = RECIPES / "eval" / f"{name}.yaml"
        out = Path(yaml.safe_load(recipe.read_text())["output_dir"])
        if not (out / "metrics.json").is_file():
            run(["eval", "--config", str(recipe), "--cascade_asr", str(args.whisper)])
        metrics = json.loads((out / "metrics.json").read_text())
        scores[name] = {"speech": metrics["speech"], "comparison": metrics["comparison"]}
    result.update(
        command=command_line(),
        machine=machine(),
        whisper={
            "final_steps": final["steps"],
            "snapshot_steps": chosen,
            "snapshots": points,
            "final_wer": final["eval"].get("wer"),
            "parameters": final["parameters"],
        },
        steps={"stage1": steps1, "stage2": steps2},
        scores=scores,
    )
    result_path.write_text(json.dumps(result, indent=1))
    print(json.dumps({"cpu": budget, "comparison": {k: v["comparison"] for k, v in scores.items()}}, indent=1))
    if args.write_docs:
        write_section("speech-llm", markdown(result))


def _fmt(value) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if isinstance(value, float) and value < 1.5 else f"{value:,.2f}"


def markdown(result: dict) -> str:
    cpu, whisper = result["cpu"], result["whisper"]
    lines = [
        "## Speech-text model against the cascade, at equal training CPU (synthetic French speech)",
        "",
        "```bash",
        "OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python benchmarks/whisper_french.py --steps 1400 --max-minutes 1000 "
        "--snapshot-steps 1000 1100 1200 1300 --out outputs/bench/whisper-fr",
        result["command"],
        "```",
        "",
        f"{result['machine']}. Both systems from the same two models: the French Whisper trained here from scratch "
        f"on espeak-ng sentences ({whisper['parameters']:,} parameters; WER {_fmt(whisper['final_wer'])} on its "
        f"held-out sentences after {whisper['final_steps']} steps) and SmolLM2-135M-Instruct (frozen in both). "
        f"**Cascade**: that Whisper after {whisper['final_steps']} steps transcribes, SmolLM2 reads the transcript "
        f"({cpu['cascade_total'] / 60:.1f} CPU-min of training). **Speech-text model**: the Whisper's encoder after "
        f"{whisper['snapshot_steps']} steps + a projector trained by `llm4all speech-sft` "
        f"({result['steps']['stage1']} steps on the sentences, then {result['steps']['stage2']} on the synthetic "
        f"SAMU calls) ({cpu['speech_llm_total'] / 60:.1f} CPU-min in all: "
        f"{(cpu['speech_llm_total'] - cpu['stage1'] - cpu['stage2']) / 60:.1f} of Whisper, "
        f"{cpu['stage1'] / 60:.1f} + {cpu['stage2'] / 60:.1f} of projector). Scored by `llm4all eval` on the same "
        "held-out rows: WER/CER of generated transcriptions, teacher-forced perplexity of the regulator's next turn, "
        "ROUGE-L of a generated one.",
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
