"""Rank allocation measured on the model: how much each kind of matrix can lose, then the cheapest split.

1. Sensitivity: for each projection kind (q/k/v/o/gate/up/down), only that kind's matrices are compressed (whitening,
   uniform ranks) at each of `--levels`; the rise of the held-out loss (nats, validation windows) is its damage. A
   kind whose damage passes `--stop` is not measured further.
2. Allocation: `ranks.ratios_from_sensitivity` splits each `--ratios` budget among the kinds for the least summed
   damage (greedy on the curves' convex hulls) -> a recipe's `module_ratios`.
3. The check, on the test documents: whitening with uniform ranks (SVD-LLM) against whitening with those
   module_ratios, same calibration windows, same targets, same budget.

    python benchmarks/sensitivity.py --model outputs/bench/smollm2-135m --name smollm2-135m \\
        --text benchmarks/data/smollm2/en/train.jsonl --held-out benchmarks/data/smollm2/en/validation.jsonl \\
        --test benchmarks/data/smollm2/en/test.jsonl --write-docs

Results go to benchmarks/results/sensitivity-<name>.json (resumed: measured points are not measured again) and to
the `sensitivity-<name>` section of docs/BENCHMARKS.md.
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch
from compression import read_texts
from report import add_docs_flag, command_line, machine, write_section

from llm4all_recipes.compression import ranks as R
from llm4all_recipes.compression.calibration import calibration_ids
from llm4all_recipes.compression.compressor import compress_model
from llm4all_recipes.data.packing import corpus_ids
from llm4all_recipes.evaluation.perplexity import perplexity
from llm4all_recipes.models import load_model, load_tokenizer

RESULTS = Path(__file__).resolve().parent / "results"


@torch.no_grad()
def window_loss(model, windows: torch.Tensor, batch_size: int = 8) -> float:
    """Mean next-token loss (nats) over fixed windows."""
    losses = [model(input_ids=w, labels=w).loss for w in windows.split(batch_size)]
    return float(torch.stack(losses).mean())


def compressed(args, ids, ranks_of, patterns):
    """A fresh copy of the model with `patterns`' matrices compressed at `ranks_of(targets)`; seconds taken."""
    model = load_model(args.model, dtype="float32")
    targets = R.find_targets(model, patterns)
    start = time.perf_counter()
    compress_model(model, ids, targets, ranks_of(targets), method=args.method, batch_size=8)
    return model, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--text", required=True, help="calibration jsonl (`text`)")
    parser.add_argument("--held-out", required=True, help="jsonl whose windows measure the damage")
    parser.add_argument("--test", required=True, help="jsonl of the final check (perplexity)")
    parser.add_argument("--method", default="whitening")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.4])
    parser.add_argument("--levels", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8])
    parser.add_argument("--stop", type=float, default=0.5, help="damage (nats) after which a kind is not pushed")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--held-out-windows", type=int, default=24)
    parser.add_argument("--test-docs", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    add_docs_flag(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = load_tokenizer(args.model)
    stream = corpus_ids(tokenizer, read_texts(args.text))
    ids = calibration_ids(stream[: int(len(stream) * 0.9)], args.samples, args.seq_len, 0)  # compression.py's
    held = calibration_ids(corpus_ids(tokenizer, read_texts(args.held_out)), args.held_out_windows, args.seq_len, 0)
    tests = read_texts(args.test, args.test_docs)
    out = RESULTS / f"sensitivity-{args.name}.json"
    result = json.loads(out.read_text()) if out.is_file() else {"curves": {}, "checks": {}}
    result.update(command=command_line(), machine=machine(), model=args.model)

    def save():
        RESULTS.mkdir(exist_ok=True)
        out.write_text(json.dumps(result, indent=1))

    dense = load_model(args.model, dtype="float32")
    targets = R.find_targets(dense, R.DEFAULT_TARGETS)
    kinds = [p for p in R.PROJECTIONS if any(t.name.endswith("." + p) for t in targets)]
    sizes = {k: sum(t.params for t in targets if t.name.endswith("." + k)) for k in kinds}
    if "dense_loss" not in result:
        result["dense_loss"] = window_loss(dense, held)
        result["dense_test"] = perplexity(dense, tokenizer, tests, max_length=args.seq_len)["perplexity"]
        save()
    del dense
    for kind in kinds:  # 1. sensitivity
        curve = result["curves"].setdefault(kind, {})
        for level in args.levels:
            if f"{level}" not in curve:
                model, seconds = compressed(args, ids, lambda ts, level=level: R.uniform(ts, level), [kind])
                curve[f"{level}"] = window_loss(model, held) - result["dense_loss"]
                print(f"{kind} at {level:.0%}: damage {curve[f'{level}']:.4f} nats ({seconds:.0f} s)", flush=True)
                save()
            if curve[f"{level}"] > args.stop:
                break
    curves = {k: {float(r): d for r, d in c.items()} for k, c in result["curves"].items()}
    for ratio in args.ratios:  # 2. allocation, 3. check
        check = result["checks"].setdefault(f"{ratio}", {})
        module_ratios = R.ratios_from_sensitivity(sizes, curves, math.ceil(ratio * sum(sizes.values())))
        check["allocation"] = module_ratios
        arms = {
            "uniform": lambda ts, ratio=ratio: R.uniform(ts, ratio),
            "module_ratios": lambda ts, ratio=ratio, m=module_ratios: R.by_module_ratio(ts, ratio, m),
        }
        for arm, ranks_of in arms.items():
            if arm in check and check[arm].get("module_ratios", module_ratios) == module_ratios:
                continue  # measured (the module_ratios arm: with these very ratios)
            model, seconds = compressed(args, ids, ranks_of, R.DEFAULT_TARGETS)
            ranks = ranks_of(targets)
            check[arm] = {
                "perplexity": perplexity(model, tokenizer, tests, max_length=args.seq_len)["perplexity"],
                "achieved_ratio": R.achieved_ratio(targets, ranks),
                "compress_seconds": seconds,
                **({"module_ratios": module_ratios} if arm == "module_ratios" else {}),
            }
            print(f"{ratio:.0%} {arm}: {check[arm]}", flush=True)
            save()
    if args.write_docs:
        write_section(f"sensitivity-{args.name}", markdown(args, result, kinds, sizes))


def markdown(args, result: dict, kinds: list[str], sizes: dict[str, int]) -> str:
    levels = sorted({float(r) for c in result["curves"].values() for r in c})
    lines = [
        f"## Rank allocation measured on the model: {args.name}",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}. Model `{args.model}`; method `{args.method}`; calibration {args.samples} × "
        f"{args.seq_len} tokens of `{args.text}` (compression.py's windows); damage = rise of the loss (nats) on "
        f"{args.held_out_windows} windows of `{args.held_out}` when only that kind of matrix is compressed (dense "
        f"loss {result['dense_loss']:.4f}); a kind is not pushed past a damage of {args.stop}.",
        "",
        "| kind | parameters | " + " | ".join(f"{level:.0%}" for level in levels) + " |",
        "|---|---:|" + "---:|" * len(levels),
    ]
    for kind in kinds:
        curve = {float(r): d for r, d in result["curves"].get(kind, {}).items()}
        cells = " | ".join(f"{curve[level]:.3f}" if level in curve else "-" for level in levels)
        lines.append(f"| {kind} | {sizes[kind]:,} | {cells} |")
    lines += [
        "",
        f"Perplexity on the first {args.test_docs} documents of `{args.test}` (window {args.seq_len}; dense "
        f"**{result['dense_test']:.2f}**), same calibration, same targets, same budget:",
        "",
        "| removed | uniform (SVD-LLM) | module_ratios | rise vs uniform's | module_ratios (from the curves) | "
        "compress s (uniform / ratios) |",
        "|---:|---:|---:|---:|---|---:|",
    ]
    for ratio, check in sorted(result["checks"].items(), key=lambda kv: float(kv[0])):
        if "uniform" not in check or "module_ratios" not in check:
            continue
        u, m = check["uniform"], check["module_ratios"]
        rise = (m["perplexity"] - result["dense_test"]) / (u["perplexity"] - result["dense_test"])
        spec = ", ".join(f"{k} {v:.2f}" for k, v in m["module_ratios"].items())
        lines.append(
            f"| {float(ratio):.0%} (achieved {u['achieved_ratio']:.3f} / {m['achieved_ratio']:.3f}) | "
            f"{u['perplexity']:.2f} | **{m['perplexity']:.2f}** | {rise:.2f} × | {spec} | "
            f"{u['compress_seconds']:.0f} / {m['compress_seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
