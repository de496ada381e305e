"""Compression benchmark: perplexity of the dense model vs svd / asvd / whitening × uniform / loss-based ranks
at 20 / 40 / 60 / 80 %, each without and with Lillama feature distillation, over calibration seeds; the
compression wall time; forward latency (on `--device`) and weight bytes of compressed vs dense models.

    python benchmarks/compression.py --model outputs/tiny-llama/tiny-model/base \\
        --text tests/fixtures/text/old_train.jsonl --eval tests/fixtures/text/old_eval.jsonl --name tiny-llama

Results go to benchmarks/results/compression-<name>.json and to the `compression-<name>` section of
docs/BENCHMARKS.md (replaced on rerun).
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from report import add_docs_flag, command_line, machine, write_section

from llm4all_recipes.compression import ranks as R
from llm4all_recipes.compression.calibration import calibration_ids
from llm4all_recipes.compression.compressor import compress_model
from llm4all_recipes.compression.feature_distill import DistillConfig, distill
from llm4all_recipes.data.packing import corpus_ids
from llm4all_recipes.evaluation.perplexity import perplexity
from llm4all_recipes.models import load_model, load_tokenizer

RESULTS = Path(__file__).resolve().parent / "results"
ALLOCATIONS = {"loss": R.loss_based, "svd_llm_v2": R.by_truncation_loss}  # and uniform: from the spectra


def read_texts(path: str, limit: int | None = None) -> list[str]:
    with open(path, encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f if line.strip()]
    return texts[:limit] if limit else texts


@torch.no_grad()
def latency_ms(model, seq_len: int, device: str, repeats: int = 20) -> float:
    model.to(device).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, seq_len), device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    for _ in range(3):
        model(input_ids=ids)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        model(input_ids=ids)
        sync()
        times.append(time.perf_counter() - start)
    model.to("cpu")
    return 1000 * statistics.median(times)


def device_perplexity(model, tokenizer, texts, max_length: int, device: str) -> float:
    """Perplexity with the model on `device`; the model goes back to the CPU (the compression drivers stream
    layers from there)."""
    model.to(device)
    try:
        return perplexity(model, tokenizer, texts, max_length=max_length)["perplexity"]
    finally:
        model.to("cpu")


def weight_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--text", required=True, help="calibration jsonl (`text`)")
    parser.add_argument("--eval", required=True, help="held-out jsonl (`text`) for perplexity")
    parser.add_argument("--name", required=True)
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8])
    parser.add_argument("--methods", nargs="+", default=["svd", "asvd", "whitening"])
    parser.add_argument("--allocations", nargs="+", default=["uniform", "loss"], choices=["uniform", *ALLOCATIONS])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--fd-tokens", type=int, default=131072, help="feature-distillation tokens per block")
    parser.add_argument("--fd-lr", type=float, default=1e-4)
    parser.add_argument("--eval-docs", type=int, default=None)
    parser.add_argument(
        "--latency-seq-len",
        type=int,
        default=256,
        help="0: no latency measured or reported (when other jobs share the machine)",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="where layers are compressed / distilled and perplexity and latency are measured",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the rows already in benchmarks/results/compression-<name>.json (same ratio, method, "
        "ranks and seed are not measured again)",
    )
    add_docs_flag(parser)
    args = parser.parse_args()

    tokenizer = load_tokenizer(args.model)
    stream = corpus_ids(tokenizer, read_texts(args.text))
    evals = read_texts(args.eval, args.eval_docs)
    cut = int(len(stream) * 0.9)
    dense = load_model(args.model, dtype="float32")
    base_ppl = device_perplexity(dense, tokenizer, evals, args.seq_len, args.device)
    base_bytes = weight_bytes(dense)
    base_latency = latency_ms(dense, args.latency_seq_len, args.device) if args.latency_seq_len else None
    print(f"dense: perplexity {base_ppl:.3f}, {base_latency} ms, {base_bytes} bytes")
    out = RESULTS / f"compression-{args.name}.json"
    previous = json.loads(out.read_text()) if args.resume and out.is_file() else {}
    rows = previous.get("rows", [])
    done = {(r["ratio"], r["method"], r["allocation"], r["seed"]) for r in rows}
    RESULTS.mkdir(exist_ok=True)
    result = {
        "model": args.model,
        "device": args.device,
        "dense_perplexity": base_ppl,
        "dense_latency_ms": base_latency,
        "dense_bytes": base_bytes,
        "rows": rows,
        "command": previous.get("command", command_line()),  # the run before per-row commands
        "commands": [],  # every run that added rows, in order; a row's "command" indexes it
        "machine": machine(),
    }
    result["commands"] = previous.get("commands", [])
    this_run = f"{command_line()}  (threads: {torch.get_num_threads()})"  # listed once it adds a row
    for ratio in args.ratios:
        for method in args.methods:
            for allocation in args.allocations:
                for seed in args.seeds:
                    if (ratio, method, allocation, seed) in done:
                        continue
                    ids = calibration_ids(stream[:cut], args.samples, args.seq_len, seed)
                    hold = calibration_ids(stream[cut:], max(4, args.samples // 8), args.seq_len, seed + 100)
                    model = load_model(args.model, dtype="float32")
                    targets = R.find_targets(model, R.DEFAULT_TARGETS)
                    plan = (
                        R.uniform(targets, ratio)
                        if allocation == "uniform"
                        else (lambda s, t=targets, r=ratio, a=ALLOCATIONS[allocation]: a(t, r, s))
                    )
                    start = time.perf_counter()
                    ranks, _ = compress_model(model, ids, targets, plan, method=method, device=args.device)
                    seconds = time.perf_counter() - start
                    ppl = device_perplexity(model, tokenizer, evals, args.seq_len, args.device)
                    row = {
                        "ratio": ratio,
                        "method": method,
                        "allocation": allocation,
                        "seed": seed,
                        "command": _command_index(result["commands"], this_run),
                        "achieved_ratio": R.achieved_ratio(targets, ranks),
                        "compress_seconds": seconds,
                        "perplexity": ppl,
                        "bytes": weight_bytes(model),
                    }
                    if args.fd_tokens:
                        cfg = DistillConfig(
                            learning_rate=args.fd_lr,
                            tokens_per_block=args.fd_tokens,
                            batch_size=8,
                            eval_every=16,
                            device=args.device,
                        )
                        start = time.perf_counter()
                        distill(dense, model, ids, hold, cfg)
                        row["distill_seconds"] = time.perf_counter() - start
                        row["perplexity_distilled"] = device_perplexity(
                            model, tokenizer, evals, args.seq_len, args.device
                        )
                    if (
                        args.latency_seq_len
                        and seed == args.seeds[0]
                        and allocation == "uniform"
                        and method == "whitening"
                    ):
                        row["latency_ms"] = latency_ms(model, args.latency_seq_len, args.device)
                    rows.append(row)
                    print(json.dumps(row))
                    # after every row: partial results survive an interruption
                    out.write_text(json.dumps(result, indent=1))
                    if args.write_docs:
                        write_section(f"compression-{args.name}", markdown(args, result))
    if args.write_docs:  # every row resumed: the section from the results file
        write_section(f"compression-{args.name}", markdown(args, result))


def _command_index(commands: list[str], command: str) -> int:
    if not commands or commands[-1] != command:
        commands.append(command)
    return len(commands) - 1


def _commands(result: dict) -> list[str]:
    """The numbered commands the `command` column refers to (0: rows from before commands were kept per row)."""
    lines = ["Commands (the table's `command` column; rows are resumed across runs):", ""]
    if any("command" not in r for r in result["rows"]):
        lines.append(f"0. earlier runs, last of them: `{result['command']}`")
    lines += [f"{i}. `{c}`" for i, c in enumerate(result.get("commands", []), 1)]
    return [*lines, ""]


def markdown(args, result: dict) -> str:
    rows = result["rows"]
    lines = [
        f"## Compression: {args.name}",
        "",
        *_commands(result),
        f"Machine: {result['machine']}. Model `{args.model}`; calibration {args.samples} windows × {args.seq_len} "
        f"tokens of `{args.text}` (seeds {args.seeds}); perplexity on `{args.eval}` (window {args.seq_len}); "
        f"feature distillation: {args.fd_tokens} tokens per block, lr {args.fd_lr}.",
        "",
        f"Dense perplexity: **{result['dense_perplexity']:.2f}**. Cells: mean perplexity over seeds (± half the "
        "spread between seeds); `+FD` after Lillama feature distillation.",
        "",
        "| ratio | method | ranks | perplexity | +FD | achieved ratio | compress s | command |",
        "|---:|---|---|---:|---:|---:|---:|---|",
    ]
    keys = sorted(
        {(r["ratio"], r["method"], r["allocation"]) for r in rows},
        key=lambda k: (
            k[0],
            args.methods.index(k[1]) if k[1] in args.methods else len(args.methods),
            k[1],
            k[2],
        ),
    )
    for ratio, method, allocation in keys:
        group = [r for r in rows if (r["ratio"], r["method"], r["allocation"]) == (ratio, method, allocation)]

        def cell(key: str, group=group) -> str:
            values = [r[key] for r in group if key in r]
            if not values:
                return "-"
            spread = (max(values) - min(values)) / 2
            return f"{statistics.mean(values):.2f} ± {spread:.2f}"

        lines.append(
            f"| {ratio:.0%} | {method} | {allocation} | {cell('perplexity')} | {cell('perplexity_distilled')} | "
            f"{statistics.mean(r['achieved_ratio'] for r in group):.3f} | "
            f"{statistics.mean(r['compress_seconds'] for r in group):.1f} | "
            f"{', '.join(sorted({str(r['command'] + 1) if 'command' in r else '0' for r in group}))} |"
        )
    if not args.latency_seq_len:
        return "\n".join(lines) + "\n"
    lines += [
        "",
        f"Size and forward latency on {result.get('device', 'cpu')} (batch 1 × "
        f"{args.latency_seq_len} tokens, median of 20; whitening, uniform ranks):",
        "",
        "| model | weight bytes | latency ms |",
        "|---|---:|---:|",
        f"| dense | {result['dense_bytes']:,} | {result['dense_latency_ms']:.2f} |",
    ]
    for r in rows:
        if "latency_ms" in r:
            lines.append(f"| {r['ratio']:.0%} removed | {r['bytes']:,} | {r['latency_ms']:.2f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
