"""Rank allocation measured on the model: how much each kind of matrix can lose, then the cheapest split.

1. Sensitivity: for each projection kind (q/k/v/o/gate/up/down), only that kind's matrices are compressed (whitening,
   uniform ranks) at each of `--levels`; the rise of the held-out loss (nats, validation windows) is its damage. A
   kind whose damage passes `--stop` is not measured further.
2. Allocation: `ranks.ratios_from_sensitivity` splits each `--ratios` budget among the kinds for the least summed
   damage (greedy on the curves' convex hulls) -> a recipe's `module_ratios`.
3. The check, on the test documents: whitening with uniform ranks (SVD-LLM) against whitening with those
   module_ratios, same calibration windows, same targets, same budget.
4. With `--per-layer`: each kind compressed at one level (`--layer-levels`) is put back into the dense model one
   layer at a time, the loss measured from that layer's dense input on (exact, and 15x cheaper than a whole
   forward): each layer's share of its kind's damage. Each matrix then gets its kind's curve scaled by its layer's
   share, the budget is split among the 210 matrices the same way, and checked the same way (arm `per_layer`).
   The loss when a whole layer is skipped is recorded beside (what depth pruning would cost).

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
LAYER_LEVELS = {
    "q_proj": 0.8,
    "k_proj": 0.6,
    "v_proj": 0.2,
    "o_proj": 0.6,
    "gate_proj": 0.4,
    "up_proj": 0.4,
    "down_proj": 0.4,
}


@torch.no_grad()
def layer_inputs(model, windows: torch.Tensor, batch_size: int = 8) -> list[list[torch.Tensor]]:
    """The dense model's input to each decoder layer on the windows: [layer][batch]."""
    states = [model(input_ids=w, output_hidden_states=True).hidden_states for w in windows.split(batch_size)]
    return [[h[i] for h in states] for i in range(model.config.num_hidden_layers)]


@torch.no_grad()
def loss_from(model, start: int, inputs, windows: torch.Tensor, batch_size: int = 8, skip: bool = False) -> float:
    """Mean loss when the layers from `start` (after it, with `skip`) run on layer `start`'s dense inputs: equal to
    the whole forward for a model that differs from the dense one only in layers >= start."""
    layers = model.model.layers
    model.model.layers = torch.nn.ModuleList(list(layers)[start + skip :])
    try:
        batches = zip(inputs[start], windows.split(batch_size))
        return float(torch.stack([model(inputs_embeds=h, labels=w).loss for h, w in batches]).mean())
    finally:
        model.model.layers = layers


def per_layer(args, result, ids, held, kinds, save) -> None:
    """Step 4's measurements: result["layers"][kind] = {"level", "damage": [per layer]}, result["skip"]."""
    dense = load_model(args.model, dtype="float32")
    inputs = layer_inputs(dense, held)
    for start in (0, len(inputs) // 2):  # the shortcut is exact (up to float noise) or this benchmark is wrong
        assert abs(loss_from(dense, start, inputs, held) - result["dense_loss"]) < 1e-4, start
    if "skip" not in result:
        result["skip"] = [
            loss_from(dense, i, inputs, held, skip=True) - result["dense_loss"] for i in range(len(inputs))
        ]
        print("skip one layer:", [round(d, 3) for d in result["skip"]], flush=True)
        save()
    levels = dict(item.split("=") for item in args.layer_levels)
    for kind in kinds:
        level = float(levels[kind])
        done = result.setdefault("layers", {}).get(kind)
        if done and done["level"] == level:
            continue
        model, _ = compressed(args, ids, lambda ts, level=level: R.uniform(ts, level), [kind])
        damage = []
        for t in sorted(R.find_targets(dense, [kind]), key=lambda t: t.layer):
            parent, attr = t.name.rsplit(".", 1)
            original = dense.get_submodule(t.name)
            setattr(dense.get_submodule(parent), attr, model.get_submodule(t.name))
            damage.append(loss_from(dense, t.layer, inputs, held) - result["dense_loss"])
            setattr(dense.get_submodule(parent), attr, original)
        result["layers"][kind] = {"level": level, "damage": damage}
        print(f"{kind} at {level:.0%} per layer:", [round(d, 3) for d in damage], flush=True)
        save()


def layer_curves(result, targets, kinds, layer_kinds, shrink: float) -> tuple[dict, dict]:
    """(sizes, curves) of the allocation units: each matrix of `layer_kinds` alone, with its kind's curve scaled by its
    layer's share of the kind's measured damage (shrunk towards the even share 1/layers by `shrink`: one level's
    per-layer damages are noisy), and every other kind as one unit with its own curve."""
    sizes, curves = {}, {}
    for kind in kinds:
        kind_curve = {float(r): d for r, d in result["curves"][kind].items()}
        mine = [t for t in targets if t.name.endswith("." + kind)]
        if kind not in layer_kinds:
            sizes[kind], curves[kind] = sum(t.params for t in mine), kind_curve
            continue
        damage = [max(d, 0.0) for d in result["layers"][kind]["damage"]]
        for t in mine:
            share = (1 - shrink) * damage[int(t.block.rsplit(".", 1)[-1])] / sum(damage) + shrink / len(damage)
            sizes[t.name], curves[t.name] = t.params, {r: d * share for r, d in kind_curve.items()}
    return sizes, curves


def choose_shrink(args, result, check, ids, held, targets, kinds, budget, ratio, save) -> float:
    """The `--shrink` value whose allocation compresses to the lowest held-out loss (the damage windows, never the
    test documents); a single value is taken as given."""
    if len(args.shrink) == 1:
        return args.shrink[0]
    search = check.setdefault("shrink_search", {})
    for shrink in args.shrink:
        if f"{shrink}" not in search:
            units, unit_curves = layer_curves(result, targets, kinds, args.layer_kinds or kinds, shrink)
            m = R.ratios_from_sensitivity(units, unit_curves, budget)
            model, _ = compressed(args, ids, lambda ts, m=m: R.by_module_ratio(ts, ratio, m), R.DEFAULT_TARGETS)
            search[f"{shrink}"] = window_loss(model, held) - result["dense_loss"]
            print(f"{ratio:.0%} shrink {shrink}: held-out damage {search[f'{shrink}']:.4f}", flush=True)
            save()
    best = min(args.shrink, key=lambda x: search[f"{x}"])
    check["shrink"] = best
    save()
    return best


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
    parser.add_argument(
        "--test",
        required=True,
        help="jsonl of the final check (perplexity); the --held-out file itself: its second half (the first half "
        "measures the damage)",
    )
    parser.add_argument("--method", default="whitening")
    parser.add_argument("--ratios", type=float, nargs="+", default=[0.2, 0.4])
    parser.add_argument("--levels", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8])
    parser.add_argument("--stop", type=float, default=0.5, help="damage (nats) after which a kind is not pushed")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--held-out-windows", type=int, default=24)
    parser.add_argument("--test-docs", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--per-layer", action="store_true", help="step 4: per-layer shares and the per_layer arm")
    parser.add_argument(
        "--layer-levels",
        nargs="+",
        default=[f"{k}={v}" for k, v in LAYER_LEVELS.items()],
        help="kind=level at which each kind's per-layer shares are measured",
    )
    parser.add_argument("--layer-kinds", nargs="+", default=None, help="kinds split per layer (default: all)")
    parser.add_argument(
        "--shrink",
        type=float,
        nargs="+",
        default=[0.0],
        help="per-layer shares pulled this far towards the even share (0-1); several: the one whose allocation gives "
        "the lowest held-out loss",
    )
    add_docs_flag(parser)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    tokenizer = load_tokenizer(args.model)
    stream = corpus_ids(tokenizer, read_texts(args.text))
    ids = calibration_ids(stream[: int(len(stream) * 0.9)], args.samples, args.seq_len, 0)  # compression.py's
    held_docs, tests = read_texts(args.held_out), read_texts(args.test)
    if args.held_out == args.test:  # one held-out file: its first half measures the damage, the second half tests
        held_docs, tests = held_docs[: len(held_docs) // 2], tests[len(tests) // 2 :]
    held = calibration_ids(corpus_ids(tokenizer, held_docs), args.held_out_windows, args.seq_len, 0)
    tests = tests[: args.test_docs]
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
    if args.per_layer:
        per_layer(args, result, ids, held, kinds, save)
    for ratio in args.ratios:  # 2. allocation, 3. check
        check = result["checks"].setdefault(f"{ratio}", {})
        budget = math.ceil(ratio * sum(sizes.values()))
        module_ratios = R.ratios_from_sensitivity(sizes, curves, budget)
        check["allocation"] = module_ratios
        arms = {
            "uniform": lambda ts, ratio=ratio: R.uniform(ts, ratio),
            "module_ratios": lambda ts, ratio=ratio, m=module_ratios: R.by_module_ratio(ts, ratio, m),
        }
        if args.per_layer:
            shrink = choose_shrink(args, result, check, ids, held, targets, kinds, budget, ratio, save)
            units, unit_curves = layer_curves(result, targets, kinds, args.layer_kinds or kinds, shrink)
            matrix_ratios = R.ratios_from_sensitivity(units, unit_curves, budget)
            arms["per_layer"] = lambda ts, ratio=ratio, m=matrix_ratios: R.by_module_ratio(ts, ratio, m)
        for arm, ranks_of in arms.items():
            wanted = matrix_ratios if arm == "per_layer" else module_ratios
            if arm in check and check[arm].get("module_ratios", wanted) == wanted:
                continue  # measured (the allocation arms: with these very ratios)
            model, seconds = compressed(args, ids, ranks_of, R.DEFAULT_TARGETS)
            ranks = ranks_of(targets)
            check[arm] = {
                "perplexity": perplexity(model, tokenizer, tests, max_length=args.seq_len)["perplexity"],
                "achieved_ratio": R.achieved_ratio(targets, ranks),
                "compress_seconds": seconds,
                **({"module_ratios": wanted} if arm != "uniform" else {}),
            }
            print(f"{ratio:.0%} {arm}: {check[arm]}", flush=True)
            save()
    if args.write_docs:
        write_section(f"sensitivity-{args.name}", markdown(args, result, kinds, sizes))


def markdown(args, result: dict, kinds: list[str], sizes: dict[str, int]) -> str:
    levels = sorted({float(r) for c in result["curves"].values() for r in c})
    half = " (its first half)" if args.test == args.held_out else ""
    lines = [
        f"## Rank allocation measured on the model: {args.name}",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}. Model `{args.model}`; method `{args.method}`; calibration {args.samples} × "
        f"{args.seq_len} tokens of `{args.text}` (compression.py's windows); damage = rise of the loss (nats) on "
        f"{args.held_out_windows} windows of `{args.held_out}`{half} when only that kind of matrix is compressed "
        f"(dense loss {result['dense_loss']:.4f}); a kind is not pushed past a damage of {args.stop}.",
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
        f"Perplexity on the first {args.test_docs} documents of `{args.test}`"
        + (" (of its second half)" if args.test == args.held_out else "")
        + f" (window {args.seq_len}; dense "
        f"**{result['dense_test']:.2f}**), same calibration, same targets, same budget:",
        "",
        "| removed | uniform (SVD-LLM) | module_ratios (per kind) | rise vs uniform's | per_layer (per matrix) | "
        "rise vs uniform's | module_ratios (from the curves) | compress s (uniform / kinds / matrices) |",
        "|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    rise = lambda arm: (arm["perplexity"] - result["dense_test"]) / (u["perplexity"] - result["dense_test"])  # noqa: E731
    for ratio, check in sorted(result["checks"].items(), key=lambda kv: float(kv[0])):
        if "uniform" not in check or "module_ratios" not in check:
            continue
        u, m, p = check["uniform"], check["module_ratios"], check.get("per_layer")
        spec = ", ".join(f"{k} {v:.2f}" for k, v in m["module_ratios"].items())
        chosen = f" (shrink {check['shrink']})" if "shrink" in check else ""
        layer_cells = f"**{p['perplexity']:.2f}**{chosen} | {rise(p):.2f} ×" if p else "- | -"
        seconds = "/".join(f"{a['compress_seconds']:.0f}" for a in (u, m, p) if a)
        lines.append(
            f"| {float(ratio):.0%} (achieved {u['achieved_ratio']:.3f}) | {u['perplexity']:.2f} | "
            f"**{m['perplexity']:.2f}** | {rise(m):.2f} × | {layer_cells} | {spec} | {seconds} |"
        )
    if "layers" in result:
        kinds_measured = [k for k in kinds if k in result["layers"]]
        lines += [
            "",
            "Per layer (step 4): the loss rise (nats) when only that layer's matrices of one kind are compressed, "
            "at the level in the header, and when the whole layer is skipped (what depth pruning would cost):",
            "",
            "| layer | skip | " + " | ".join(f"{k} {result['layers'][k]['level']:.0%}" for k in kinds_measured) + " |",
            "|---:|---:|" + "---:|" * len(kinds_measured),
        ]
        for i, skip in enumerate(result.get("skip", [])):
            cells = " | ".join(f"{result['layers'][k]['damage'][i]:.3f}" for k in kinds_measured)
            lines.append(f"| {i} | {skip:.3f} | {cells} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
