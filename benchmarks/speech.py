"""Speech benchmark: WER/CER of a Whisper, dense vs compressed (SVD-LLM whitening) at 20 % and 40 %, with and
without Lillama feature distillation, on held-out French speech.

    OMP_NUM_THREADS=1 python benchmarks/speech.py --model outputs/bench/whisper-fr \
        --data benchmarks/data/french-speech [--ratios 0.2 0.4] [--write-docs]

Through the `llm4all` CLI with the shipped tiny-whisper recipes (model, data and sizes overridden):
`compress` (recipes/tiny-whisper/compress/whitening-40.yaml, `--ratio` of the targeted linear parameters of the
encoder and decoder blocks, calibrated on `--calib` training recordings and their transcripts), `feature-distill`
(recipes/tiny-whisper/feature-distill/whitening-40.yaml), and `transcribe` (the eval manifest, greedy, one clip
per recording: `--timestamps false`) for the dense model and each compressed one. Outputs under
outputs/bench/speech/ are reused by a rerun. Results: benchmarks/results/speech.json; with --write-docs, the
`speech` section of docs/BENCHMARKS.md.

The model: benchmarks/whisper_french.py trains a small Whisper from scratch on benchmarks/data/french-speech
(espeak-ng speech of the project's French text, built by benchmarks/french_speech.py) — the Hub's Whisper
checkpoints are not reachable here.
"""

import argparse
import json
from pathlib import Path

import pruning
from report import add_docs_flag, command_line, machine, write_section

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "speech.json"
COMPRESS = "recipes/tiny-whisper/compress/whitening-40.yaml"
FD = "recipes/tiny-whisper/feature-distill/whitening-40.yaml"
TRANSCRIBE = "recipes/tiny-whisper/transcribe/simsamu.yaml"


def cli(stage: str, argv: list[str], out: Path) -> dict:
    """pruning.py's `llm4all <stage>` runner (a subprocess, reused outputs); its metrics + wall seconds."""
    metrics = pruning.cli(stage, argv, out)
    return {**metrics, "seconds": float((ROOT / out / "seconds.txt").read_text())}


def transcribe(model: str, data: Path, out: Path) -> dict:
    m = cli(
        "transcribe",
        [
            "--config",
            TRANSCRIBE,
            "--model_name_or_path",
            model,
            "--source",
            str(data / "eval.jsonl"),
            "--timestamps",
            "false",
            "--batch_size",
            "16",
            "--max_new_tokens",
            "96",
            "--shard_size",
            "64",
        ],
        out,
    )
    return {**m["asr"]["overall"], "real_time_factor": m["real_time_factor"], "recordings": m["transcribed"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/bench/whisper-fr", help="the dense Whisper (a folder)")
    parser.add_argument("--data", default="benchmarks/data/french-speech", help="train.jsonl / eval.jsonl manifests")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.4], help="compress ratios")
    parser.add_argument("--calib", type=int, default=128, help="calibration recordings (compress)")
    parser.add_argument("--fd-calib", type=int, default=256, help="training recordings of feature-distill")
    parser.add_argument("--fd-tokens", type=int, default=32768, help="feature-distill transcript tokens per block")
    parser.add_argument("--out", default="outputs/bench/speech", help="stage outputs (reused by a rerun)")
    parser.add_argument(
        "--fd-lrs",
        type=float,
        nargs="+",
        default=[1e-3, 1e-4],
        help="feature-distill peak learning rates (the recipe's 1e-3 was tuned on french-bench)",
    )
    add_docs_flag(parser)
    args = parser.parse_args()
    data, OUT = Path(args.data), Path(args.out)
    # calibration from the training split; the held-out metric of compress / feature-distill from the eval split
    sources = [
        "--datasets",
        json.dumps([str(data / "train.jsonl")]),
        "--eval_datasets",
        json.dumps([str(data / "eval.jsonl")]),
    ]
    rows = [{"arm": "dense", "ratio": 0.0, "wer": transcribe(args.model, data, OUT / "dense")}]
    for ratio in args.ratios:
        tag = f"w{round(ratio * 100)}"
        c = cli(
            "compress",
            [
                "--config",
                COMPRESS,
                "--model_name_or_path",
                args.model,
                "--ratio",
                str(ratio),
                "--num_calibration_samples",
                str(args.calib),
                "--calibration_batch_size",
                "8",
                *sources,
            ],
            OUT / tag,
        )
        base = {
            "ratio": ratio,
            "removed": c["compression"]["model_fraction_removed"],
            "parameters": c["parameters"],
            "dense_parameters": c["compression"]["model_params_before"],
        }
        rows.append(
            {
                **base,
                "arm": "compress",
                "wer": transcribe(str(OUT / tag), data, OUT / f"{tag}-asr"),
                "transcript_ppl": c["eval"],
                "dense_transcript_ppl": c["eval_before"],
                "seconds": c["seconds"],
            }
        )
        for lr in args.fd_lrs:
            out = OUT / f"{tag}-fd-lr{lr:g}"
            fd = cli(
                "feature-distill",
                [
                    "--config",
                    FD,
                    "--model_name_or_path",
                    str(OUT / tag),
                    *sources,
                    "--num_calibration_samples",
                    str(args.fd_calib),
                    "--num_holdout_samples",
                    "32",
                    "--calibration_batch_size",
                    "8",
                    "--tokens_per_block",
                    str(args.fd_tokens),
                    "--eval_every",
                    "16",
                    "--learning_rate",
                    str(lr),
                ],
                out,
            )
            rows.append(
                {
                    **base,
                    "arm": "compress+fd",
                    "learning_rate": lr,
                    "wer": transcribe(str(out), data, out.with_name(out.name + "-asr")),
                    "transcript_ppl": fd["eval"],
                    "fd_text_tokens": fd["text_tokens"],
                    "fd_blocks_improved": sum(b["best_step"] > 0 for b in fd["blocks"]),
                    "blocks": len(fd["blocks"]),
                    "seconds": fd["seconds"],
                }
            )
        print(json.dumps(rows[-3:])[:400], flush=True)
    trained = (
        json.loads((ROOT / args.model / "metrics.json").read_text())
        if (ROOT / args.model / "metrics.json").is_file()
        else {}
    )
    results = {
        "command": command_line(),
        "machine": machine(),
        "model": args.model,
        "data": args.data,
        "model_metrics": trained,
        "rows": rows,
    }
    RESULTS.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    if args.write_docs:
        write_section("speech", report(results))


def report(results: dict) -> str:
    rows = results["rows"]
    dense = rows[0]
    params = next((r["dense_parameters"] for r in rows if "dense_parameters" in r), None)
    lines = [
        "## Speech: WER of a compressed Whisper (SVD-LLM whitening, both stacks) with and without Lillama",
        "",
        "```bash",
        results["command"],
        "```",
        "",
        f"{results['machine']}. Model `{results['model']}`"
        + (f" ({params:,} parameters)" if params else "")
        + f": a small Whisper trained from scratch here by benchmarks/whisper_french.py on `{results['data']}` "
        "(espeak-ng French speech of the project's own text, built by benchmarks/french_speech.py; robotic "
        "synthetic speech, not telephone calls — the Hub's Whisper checkpoints are not reachable here). WER and CER "
        f"on its {dense['wer']['recordings']} held-out recordings (eval.jsonl, sentences never seen in training), "
        "greedy, French normalisation (docs/SPEECH.md); transcript perplexity = perplexity of the reference "
        "transcripts given the audio (teacher forcing).",
        "",
        "| model | ratio (targeted) | model removed | parameters | WER | CER | transcript perplexity |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    dense_ppl = next((r["dense_transcript_ppl"] for r in rows if "dense_transcript_ppl" in r), {})
    ppl = lambda d: f"{next(iter(d.values()))['perplexity']:.2f}" if d else "-"  # noqa: E731
    lines.append(
        f"| dense | - | - | {params:,} | {dense['wer']['wer']:.1%} | {dense['wer']['cer']:.1%} | {ppl(dense_ppl)} |"
        if params
        else f"| dense | - | - | - | {dense['wer']['wer']:.1%} | {dense['wer']['cer']:.1%} | - |"
    )
    for r in rows[1:]:
        name = "whitening" if r["arm"] == "compress" else f"whitening + Lillama FD (lr {r['learning_rate']:g})"
        lines.append(
            f"| {name} | {r['ratio']:.0%} | {r['removed']:.1%} | {r['parameters']:,} | {r['wer']['wer']:.1%} | "
            f"{r['wer']['cer']:.1%} | {ppl(r['transcript_ppl'])} |"
        )
    fd = [r for r in rows if r["arm"] == "compress+fd"]
    if fd:
        lines += [
            "",
            f"Feature distillation: {fd[0]['fd_text_tokens']:,} transcript tokens per block (every encoder and "
            "decoder block the same number of steps), each block keeping its best held-out state; blocks improved: "
            + ", ".join(
                f"{r['fd_blocks_improved']}/{r['blocks']} at {r['ratio']:.0%} (lr {r['learning_rate']:g})" for r in fd
            )
            + " (a block that no step improves keeps its compressed state).",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
