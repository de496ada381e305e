"""The loop at a real model's size, sized for a 15-minute GPU lease: a random-init model built from a published
config.json (bf16), through the shipped recipes of its folder and the `llm4all` CLI:

    python benchmarks/real_config.py --folder qwen2.5-1.5b-instruct [--write-docs]

compress 40 % (the folder's compress/whitening-40.yaml, 64 calibration windows), feature-distill one block's
budget (its feature-distill/whitening-40.yaml, 262,144 tokens per block), 50 kd
steps (its kd recipe with an online teacher: the random base) and 50 sft steps (its sft/simsamu.yaml on the fixture
calls). Reports per stage: seconds, training tokens/s, MFU (6 N FLOPs per token against the GPU's dense bf16 peak;
8 N with activation checkpointing) and the peak device memory, next to what `llm4all estimate` computes for the
same recipe. Random weights say nothing about quality: time and memory depend on the shapes only. The tokenizer is
the tiny default's (token ids < 2,048 of the model's full vocabulary; the logits keep the real vocabulary size).
Text: the fixture corpora (tests/fixtures/text). Outputs under outputs/bench/real-<folder>/.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from report import add_docs_flag, command_line, machine, write_section
from scale import peak_device_gib, reset_peak
from transformers import AutoModelForCausalLM, AutoTokenizer

from llm4all_recipes.cli import run_stage
from llm4all_recipes.estimate import GPUS, estimate
from llm4all_recipes.tiny import shrink_config

REPO = Path(__file__).resolve().parents[1]
TEXT = REPO / "tests" / "fixtures" / "text"
GIB = 2**30
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build(folder: str, tokenizer_from: Path, out: Path, layers: int | None, tiny: bool) -> int:
    """The published config at full size (or `layers` decoder layers; `tiny`: the test suite's tiny sizes with the
    real vocabulary, a smoke test of this script), random weights, bf16."""
    config = json.loads((REPO / "tests" / "fixtures" / "configs" / folder / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    sizes = {k: config[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads") if k in config}
    sizes["num_hidden_layers"] = layers or config["num_hidden_layers"]
    sizes["head_dim"] = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    sizes["num_key_value_heads"] = config.get("num_key_value_heads") or config["num_attention_heads"]
    shrunk = shrink_config(config, tokenizer, None if tiny else sizes)
    shrunk.vocab_size = config["vocab_size"]  # the real embedding and logits size
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(shrunk, dtype=torch.bfloat16)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return sum(p.numel() for p in model.parameters())


def run(stage: str, argv: list[str], out: Path) -> tuple[dict, float, float | None]:
    reset_peak(DEVICE)
    start = time.perf_counter()
    if not (out / "metrics.json").is_file():
        run_stage(stage, [*argv, "--output_dir", str(out), "--push_to_hub", "false"])
    return (
        json.loads((out / "metrics.json").read_text()),
        time.perf_counter() - start,
        peak_device_gib(DEVICE),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", default="qwen2.5-1.5b-instruct", help="recipes/<folder>, with a config fixture")
    parser.add_argument("--tokenizer", default="outputs/tiny-llama/tiny-model/base", help="a tiny-model output")
    parser.add_argument("--layers", type=int, help="fewer decoder layers")
    parser.add_argument(
        "--tiny", action="store_true", help="tiny sizes, real vocabulary: a CPU smoke test of this script"
    )
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--kd-steps", type=int, default=50)
    parser.add_argument("--sft-steps", type=int, default=50)
    parser.add_argument("--fd-tokens", type=int, default=262144)
    parser.add_argument("--gpu", choices=list(GPUS), default="h100", help="peak FLOP/s used for the MFU")
    add_docs_flag(parser)
    args = parser.parse_args()
    name = f"real-{args.folder}" + ("-tiny" if args.tiny else f"-{args.layers}layers" if args.layers else "")
    recipes, root = REPO / "recipes" / args.folder, Path("outputs/bench") / name
    base = root / "base"
    if not (base / "config.json").is_file():
        build(args.folder, Path(args.tokenizer), base, args.layers, args.tiny)
    n_base = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16).parameters())
    text = [
        "--datasets",
        json.dumps([{"path": str(TEXT / "new_train.jsonl")}]),
        "--eval_datasets",
        json.dumps([{"path": str(TEXT / "new_eval.jsonl"), "max_rows": 4}]),
    ]
    seq = ["--perplexity_max_length", str(args.seq_len)]
    rows, peak_flops = [], GPUS[args.gpu][0] * 1e12

    def row(stage, recipe, metrics, seconds, peak, tokens=None, n=None, checkpointing=False):
        e = estimate(recipe, gpu=args.gpu, base_config=str(base))
        tokens_s = tokens / seconds if tokens else None
        mfu = (8 if checkpointing else 6) * n * tokens_s / peak_flops if tokens_s and n else None
        rows.append(
            {
                "stage": stage,
                "recipe": str(recipe.relative_to(REPO)),
                "seconds": round(seconds, 1),
                "tokens_per_s": tokens_s,
                "mfu": mfu,
                "peak_gib": peak,
                "estimate_gib": e.device_bytes / GIB if e else None,
            }
        )
        print(json.dumps(rows[-1]))

    recipe = recipes / "compress" / "whitening-40.yaml"
    m, s, p = run(
        "compress",
        [
            "--config",
            str(recipe),
            "--model_name_or_path",
            str(base),
            *text,
            *seq,
            "--num_calibration_samples",
            "64",
            "--calibration_seq_len",
            str(args.seq_len),
            *(["--rank_multiple", "4"] if args.tiny else []),
        ],
        root / "c40",
    )
    row("compress", recipe, m, s, p)
    recipe = recipes / "feature-distill" / "whitening-40.yaml"
    m, s, p = run(
        "feature-distill",
        [
            "--config",
            str(recipe),
            "--model_name_or_path",
            str(root / "c40"),
            *text,
            *seq,
            "--num_calibration_samples",
            "64",
            "--calibration_seq_len",
            str(args.seq_len),
            "--calibration_batch_size",
            "4",
            "--tokens_per_block",
            str(args.fd_tokens),
        ],
        root / "fd40",
    )
    row("feature-distill", recipe, m, s, p)
    student = sum(
        p.numel() for p in AutoModelForCausalLM.from_pretrained(root / "fd40", trust_remote_code=True).parameters()
    )
    recipe = next((recipes / "kd").glob("*.yaml"))
    m, s, p = run(
        "kd",
        [
            "--config",
            str(recipe),
            "--model_name_or_path",
            str(root / "fd40"),
            "--teacher_cache",
            "",
            "--teacher_model_name_or_path",
            str(base),
            *text,
            "--max_steps",
            str(args.kd_steps),
            "--max_length",
            str(args.seq_len),
            "--keep_best",
            "false",
            *seq,
        ],
        root / "kd",
    )
    tokens = m["train"]["global_step"] * 16 * args.seq_len
    row("kd (online teacher)", recipe, m, s, p, tokens, student + n_base / 3, True)  # teacher forward: 2N of 6N
    recipe = recipes / "sft" / "simsamu.yaml"
    run_stage(
        "build-dataset",
        ["--config", "recipes/datasets/simsamu.yaml", "--output_dir", str(root / "simsamu"), "--push_to_hub", "false"],
    ) if not (root / "simsamu").is_dir() else None
    m, s, p = run(
        "sft",
        [
            "--config",
            str(recipe),
            "--model_name_or_path",
            str(root / "kd"),
            "--max_steps",
            str(args.sft_steps),
            "--datasets",
            json.dumps([{"path": str(root / "simsamu"), "split": "train"}]),
            "--eval_datasets",
            json.dumps([{"path": str(root / "simsamu"), "split": "validation"}]),
        ],
        root / "sft",
    )
    row("sft", recipe, m, s, p, m["train"].get("num_tokens"), student, True)
    (REPO / "benchmarks" / "results").mkdir(exist_ok=True)
    (REPO / "benchmarks" / "results" / f"{name}.json").write_text(json.dumps(rows, indent=1))
    if args.write_docs:
        write_section(name, report(rows, args, n_base))


def report(rows: list[dict], args, n: int) -> str:
    def f(v, fmt):
        return "" if v is None else format(v, fmt)

    lines = [
        f"## A real config on a GPU: {args.folder} (random weights, bf16)",
        "",
        f"Command: `{command_line()}`  ",
        f"Machine: {machine()}. {n / 1e9:.2f} B parameters.",
        "",
        "| stage | recipe | seconds | tokens/s | MFU | peak memory | `llm4all estimate` |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['stage']} | `{r['recipe']}` | {r['seconds']} | {f(r['tokens_per_s'], ',.0f')} | "
            f"{f(r['mfu'], '.0%')} | {f(r['peak_gib'], '.1f')} GiB | {f(r['estimate_gib'], '.1f')} GiB |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
