"""Pruning benchmark: structured pruning + KD against SVD-whitening + Lillama + KD at equal parameter count.

    OMP_NUM_THREADS=1 python benchmarks/pruning.py --model outputs/bench/french-bench \
        --data benchmarks/data/manpages-fr --removed 0.2 0.4 [--arms width mlp depth-bi ...] [--jobs 2] [--write-docs]

For each share of the whole model to remove and each arm, through the `llm4all` CLI with the shipped recipes
(only model, data and the arm's keys overridden):
- prune arms: `prune` (recipes/tiny-llama/prune/width-20.yaml, `--ratio` = the share, the arm's axes and depth
  criterion), then `kd` (recipes/tiny-llama/kd/heal.yaml, the original as teacher);
- `svd`: `compress` (recipes/tiny-llama/compress/whitening-60.yaml, its ratio of the targeted linear parameters
  set so that the same share of the whole model goes), `feature-distill`
  (recipes/tiny-llama/feature-distill/whitening-60.yaml), `kd` (the same recipe and budget).
Then, one model at a time in this process: forward latency of one 256-token window (batch 1) and greedy decode
speed (128 new tokens after 16, KV cache), dense vs each model (the pruned model before healing has the healed
model's shapes). Held-out perplexity: old_eval (the domain the model knows; calibration and KD text is
old_train) and new_eval. Outputs under outputs/bench/pruning/ are reused by a rerun. Results:
benchmarks/results/pruning.json; with --write-docs, the `pruning` section of docs/BENCHMARKS.md.

A real-model folder's recipes as shipped (nothing overridden; the model, data and share are the recipes' own):

    python benchmarks/pruning.py --recipes recipes/smollm2-135m --name smollm2-135m \
        --arms width width-tokens svd [--threads 2] [--write-docs]

`width`: its prune/*.yaml then kd/heal-pruned.yaml; `svd`: compress/whitening-20.yaml, feature-distill/
whitening-20.yaml, kd/heal-20.yaml; they write to the recipes' own output folders (outputs/<model>/...), so after
`llm4all pipeline` they are only read. `width-tokens`: heal-pruned's KD run for as many tokens as the SVD chain's
feature distillation + KD, under outputs/bench/pruning-<name>/. Results: benchmarks/results/pruning-<name>.json,
section `pruning-<name>`.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from report import add_docs_flag, command_line, machine, write_section

from llm4all_recipes.paths import default_output_dir

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "pruning.json"
OUT = Path("outputs/bench/pruning")
PRUNE = "recipes/tiny-llama/prune/width-20.yaml"
COMPRESS = "recipes/tiny-llama/compress/whitening-60.yaml"
FD = "recipes/tiny-llama/feature-distill/whitening-60.yaml"
KD = "recipes/tiny-llama/kd/heal.yaml"

# arm -> (prune overrides, or None for the SVD chain; kd overrides)
ARMS: dict[str, tuple[list[str] | None, list[str]]] = {
    "width": ([], []),  # Minitron's width pruning: the recipe's own axes (mlp + embedding)
    "mlp": (["--axes", '["mlp"]'], []),
    "mlp+heads": (["--axes", '["mlp", "heads"]'], []),
    "depth-bi": (["--axes", '["depth"]', "--depth_importance", "block_influence"], []),
    "depth-ppl": (["--axes", '["depth"]', "--depth_importance", "perplexity"], []),
    "depth-bi+hidden": (
        ["--axes", '["depth"]', "--depth_importance", "block_influence"],
        ["--kd_hidden_coef", "1"],
    ),
    "width+hidden": (["--axes", '["mlp", "embedding"]'], ["--kd_hidden_coef", "1"]),
    # KD for as many tokens as the SVD chain's feature distillation + KD (128 + 80 steps of 8 x 256)
    # (a recipe folder: as many steps as its SVD chain's tokens need)
    "width-tokens": ([], ["--max_steps", "208"]),
    "svd": (None, []),  # compress (whitening) -> feature-distill -> kd
}


@dataclass
class Plan:
    """Where an arm's stages come from. Tiny mode: the tiny-llama recipes with model, data and share overridden,
    outputs under outputs/bench/pruning/. Folder mode (`shipped`): a real-model folder's recipes as they are; a
    stage without overrides writes to its recipe's own output folder (a pipeline run's outputs are reused)."""

    model: str
    prune: str = PRUNE
    compress: str = COMPRESS
    fd: str = FD
    kd: str = KD
    kd_pruned: str = KD
    sources: list[str] = field(default_factory=list)
    out: Path = OUT
    shipped: bool = False
    threads: int = 1

    def where(self, recipe: str, overrides: list[str], fallback: Path) -> Path:
        return Path(default_output_dir(recipe)) if self.shipped and not overrides else fallback


def folder_plan(recipes: str, name: str, threads: int) -> tuple[Plan, float]:
    """A real-model folder's recipes as shipped, and the share of the model its prune recipe removes."""
    import yaml

    folder = Path(recipes)
    (prune,) = sorted(folder.glob("prune/*.yaml"))  # one pruning recipe per folder
    spec = yaml.safe_load(prune.read_text())
    plan = Plan(
        model=spec["model_name_or_path"],
        prune=str(prune),
        compress=str(folder / "compress/whitening-20.yaml"),
        fd=str(folder / "feature-distill/whitening-20.yaml"),
        kd=str(folder / "kd/heal-20.yaml"),
        kd_pruned=str(folder / "kd/heal-pruned.yaml"),
        out=Path("outputs/bench") / f"pruning-{name}",
        shipped=True,
        threads=threads,
    )
    return plan, float(spec["ratio"])


def cli(stage: str, argv: list[str], out: Path, threads: int = 1) -> dict:
    """`llm4all <stage>` in a subprocess (`threads` threads) unless its output exists; its metrics."""
    if not (ROOT / out / "metrics.json").is_file():
        log = (ROOT / out).with_name(out.name + ".log")  # (names may hold dots: lr0.001)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
        binary = str(Path(sys.executable).with_name("llm4all"))
        cmd = [binary, stage, *argv, "--output_dir", str(out), "--push_to_hub", "false"]
        start = time.perf_counter()
        with log.open("w") as f:
            rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        if rc != 0:
            raise SystemExit(f"{stage} -> {out} failed (rc {rc}): see {log}")
        (ROOT / out / "seconds.txt").write_text(f"{time.perf_counter() - start:.1f}")
    return json.loads((ROOT / out / "metrics.json").read_text())


def svd_ratio(model: str, share: float) -> float:
    """compress's ratio (of the targeted linear parameters) that removes `share` of the whole model."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model))
    total = sum(p.numel() for p in m.parameters())
    linear = sum(
        mod.weight.numel() for name, mod in m.named_modules() if isinstance(mod, torch.nn.Linear) and ".layers." in name
    )
    return round(share * total / linear, 4)


def run_arm(arm: str, share: float, plan: Plan, ratio: float, equal_steps: int | None = None) -> dict:
    """One arm: prune (or compress + feature-distill), then kd; the row of its metrics."""
    prune_over, kd_over = ARMS[arm]
    if equal_steps is not None:  # width-tokens of a recipe folder: the SVD chain's token count
        kd_over = ["--max_steps", str(equal_steps)]
    root = plan.out / f"r{round(share * 100)}" / arm
    row: dict = {"arm": arm, "removed_target": share}
    given = [] if plan.shipped else ["--model_name_or_path", plan.model]

    def run(stage: str, recipe: str, over: list[str], name: str) -> tuple[dict, Path]:
        out = plan.where(recipe, over, root / name)
        return cli(stage, ["--config", recipe, *over, *plan.sources], out, plan.threads), out

    if prune_over is None:
        c, shapes = run("compress", plan.compress, [] if plan.shipped else [*given, "--ratio", str(ratio)], "compress")
        fd, student = run(
            "feature-distill", plan.fd, [] if plan.shipped else ["--model_name_or_path", str(shapes)], "fd"
        )
        row.update(
            removed=c["compression"]["model_fraction_removed"],
            parameters=c["parameters"],
            before=c["eval_before"],
            pruned=c["eval"],
            fd=fd["eval"],
            fd_tokens=fd["text_tokens"],
            compress_ratio=c["compression"]["target_ratio"],
            student=str(student),
            shapes=str(shapes),
        )
        kd_recipe = plan.kd
    else:
        p, student = run(
            "prune", plan.prune, [] if plan.shipped else [*given, "--ratio", str(share), *prune_over], "prune"
        )
        row.update(
            removed=p["pruning"]["model_fraction_removed"],
            parameters=p["parameters"],
            before=p["eval_before"],
            pruned=p["eval"],
            sizes=p["pruning"]["sizes_after"],
            kept_layers=p["kept_layers"],
            student=str(student),
            shapes=str(student),
        )
        kd_recipe = plan.kd_pruned
    teacher = (
        [] if plan.shipped else ["--model_name_or_path", row["student"], "--teacher_model_name_or_path", plan.model]
    )
    kd, _ = run("kd", kd_recipe, [*teacher, *kd_over], "kd")
    row.update(
        healed=kd["eval"],
        kd_tokens=kd["train"]["num_tokens"],
        kd_kept=kd["train"].get("kept"),
        kd_seconds=kd["train"].get("train_runtime"),
        kd_keys=shlex.join(kd_over),
    )
    return row


def speed(path: str) -> dict:
    """Forward ms of a 256-token window (batch 1) and greedy decode tokens/s (128 after 16), best of 30 and of 5
    runs after warm-up: on a shared CPU the best run is the one least disturbed (a median moved by 25 % between
    two measures of the same shapes)."""
    import torch

    from llm4all_recipes.models import load_model

    model = load_model(path).eval()
    vocab = model.config.vocab_size if hasattr(model.config, "vocab_size") else 1000
    gen = torch.Generator().manual_seed(0)
    window = torch.randint(4, vocab, (1, 256), generator=gen)
    prompt = window[:, :16]
    times = []
    with torch.no_grad():
        for i in range(35):
            start = time.perf_counter()
            model(input_ids=window, use_cache=False)
            if i >= 5:
                times.append(time.perf_counter() - start)
        rates = []
        for _ in range(6):
            start = time.perf_counter()
            out = model.generate(
                input_ids=prompt,
                max_new_tokens=128,
                min_new_tokens=128,
                do_sample=False,
                use_cache=True,
                pad_token_id=0,
            )
            rates.append((out.shape[1] - 16) / (time.perf_counter() - start))
    return {"forward_ms": 1000 * min(times), "decode_tok_s": max(rates[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="outputs/bench/french-bench", help="the dense model (a folder)")
    parser.add_argument("--data", default="benchmarks/data/manpages-fr", help="old_train/old_eval/new_eval.jsonl")
    parser.add_argument("--removed", type=float, nargs="+", default=[0.2, 0.4], help="shares of the model")
    parser.add_argument(
        "--recipes",
        help="a real-model recipe folder, run as shipped (its model, data and share; "
        "--model, --data and --removed are then unused)",
    )
    parser.add_argument("--name", help="with --recipes: results name, pruning-<name>")
    parser.add_argument(
        "--arms", nargs="+", default=["width", "mlp", "depth-bi", "depth-ppl", "svd"], choices=sorted(ARMS)
    )
    parser.add_argument("--jobs", type=int, default=2, help="arms run in parallel (tiny mode)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per stage")
    parser.add_argument("--no-speed", action="store_true", help="skip the latency measures")
    add_docs_flag(parser)
    args = parser.parse_args()

    if args.recipes:
        if not args.name:
            parser.error("--recipes needs --name")
        unknown = set(args.arms) - {"width", "width-tokens", "svd"}
        if unknown:
            parser.error(f"a recipe folder runs width, width-tokens and svd only, not {sorted(unknown)}")
        plan, share = folder_plan(args.recipes, args.name, args.threads)
        shares, data, section = [share], f"the recipes of {args.recipes}", f"pruning-{args.name}"
    else:
        data = args.data
        sources = [
            "--datasets",
            json.dumps([str(Path(data) / "old_train.jsonl")]),
            "--eval_datasets",
            json.dumps([str(Path(data) / "old_eval.jsonl"), str(Path(data) / "new_eval.jsonl")]),
        ]
        plan, shares, section = (
            Plan(model=args.model, sources=sources, threads=args.threads),
            args.removed,
            "pruning",
        )
    results_file = RESULTS.with_name(f"{section}.json")
    old = json.loads(results_file.read_text()) if results_file.is_file() else {"rows": [], "speed": {}}
    rows = {(r["removed_target"], r["arm"]): r for r in old["rows"]}
    ratios = {share: svd_ratio(plan.model, share) for share in shares}  # here: imports are not thread-safe

    def done(row: dict) -> None:
        row["command"] = command_line()
        rows[(row["removed_target"], row["arm"])] = row
        print(json.dumps({k: row[k] for k in ("arm", "removed_target", "removed")}), flush=True)

    if args.recipes:  # in order: width-tokens needs the SVD chain's token count
        for arm in sorted(args.arms, key=lambda a: a != "svd"):
            steps = None
            if arm == "width-tokens":
                svd = rows.get((share, "svd")) or run_arm("svd", share, plan, ratios[share])
                per_step = svd["kd_tokens"] // yaml_value(plan.kd, "max_steps")
                steps = -(-(svd["kd_tokens"] + svd["fd_tokens"]) // per_step)
            done(run_arm(arm, share, plan, ratios[share], steps))
    else:
        jobs = [(arm, share) for share in shares for arm in args.arms]
        with ThreadPoolExecutor(args.jobs) as pool:
            for row in pool.map(lambda job: run_arm(*job, plan, ratios[job[1]]), jobs):
                done(row)
    speeds = old.get("speed", {})
    if not args.no_speed:
        import torch

        torch.set_num_threads(1)
        for path in [plan.model, *dict.fromkeys(r["shapes"] for r in rows.values())]:
            speeds[path] = speed(path)
            print(path, speeds[path], flush=True)
    ordered = sorted(rows.values(), key=lambda r: (r["removed_target"], list(ARMS).index(r["arm"])))
    results = {
        "commands": list(dict.fromkeys(r["command"] for r in ordered)),
        "machine": machine(),
        "model": plan.model,
        "data": data,
        "rows": ordered,
        "speed": speeds,
        "recipes": {"prune": plan.prune, "kd": plan.kd_pruned if args.recipes else plan.kd},
    }
    results_file.write_text(json.dumps(results, indent=2) + "\n")
    if args.write_docs:
        write_section(section, report(results))


def yaml_value(recipe: str, key: str):
    import yaml

    return yaml.safe_load(Path(recipe).read_text())[key]


def report(results: dict) -> str:
    speeds = results["speed"]
    dense = speeds.get(results["model"], {})
    first = results["rows"][0]
    old, new = (next(k for k in first["before"] if k.startswith(d)) for d in ("old", "new"))
    recipes = results.get("recipes", {"prune": PRUNE, "kd": KD})
    lines = [
        "## Pruning: structured pruning + KD vs SVD-whitening + Lillama + KD, at equal parameter count"
        + (f" (`{results['model']}`)" if results.get("recipes") else ""),
        "",
        "```bash",
        *results["commands"],
        "```",
        "",
        f"{results['machine']}. Model `{results['model']}` (dense held-out perplexity "
        f"{first['before'][old]['perplexity']:.2f} old / {first['before'][new]['perplexity']:.2f} new), "
        f"data `{results['data']}`"
        + (
            " (their own output folders: a `llm4all pipeline` run's outputs are read, not rerun; the machine line is "
            "this script's, which measures the latency)"
            if results.get("recipes")
            else ""
        )
        + f". Perplexity on {old} ({new} in brackets). Every arm is healed by the same "
        f"`kd` recipe and budget ({recipes['kd']}, the original as teacher); the SVD chain also runs "
        "feature distillation first (its tokens per block added); `width-tokens` gives pruning the same total. "
        "Latency: one thread, best of 30 (forward: one 256-token window, batch 1) and of 5 (decode: greedy, 128 "
        "tokens after 16, KV cache) — the pruned model before healing has the healed model's shapes.",
        "",
        "| removed | arm | sizes | after pruning | + FD | + KD | KD kept | tokens | forward ms | decode tok/s |",
        "|---:|---|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    if dense:
        lines.append(
            f"| 0 % | dense | - | {first['before'][old]['perplexity']:.2f} | - | - | - | - | "
            f"{dense['forward_ms']:.1f} | {dense['decode_tok_s']:.0f} |"
        )

    def ppl(v):
        return f"{v[old]['perplexity']:.2f} ({v[new]['perplexity']:.1f})"

    for r in results["rows"]:
        s = speeds.get(r["shapes"], {})
        names = {
            "hidden_size": "hidden",
            "intermediate_size": "mlp",
            "num_hidden_layers": "layers",
            "num_attention_heads": "heads",
        }
        sizes = (
            f"low-rank, compress ratio {r['compress_ratio']}"
            if r["arm"] == "svd"
            else ", ".join(f"{names[k]} {v}" for k, v in r["sizes"].items())
        )
        tokens = r["kd_tokens"] + r.get("fd_tokens", 0)
        lines.append(
            f"| {r['removed']:.1%} | {r['arm']} | {sizes} | {ppl(r['pruned'])} | {ppl(r['fd']) if 'fd' in r else '-'} "
            f"| {ppl(r['healed'])} | {r['kd_kept'] or '-'} | {tokens:,} | "
            f"{s.get('forward_ms', float('nan')):.1f} | {s.get('decode_tok_s', float('nan')):.0f} |"
        )
    lines += ["", "| arm | prune keys | kd keys |", "|---|---|---|"]
    for r in {r["arm"]: r for r in results["rows"]}.values():
        prune_over, kd_over = ARMS[r["arm"]]
        prune_keys = "compress + feature-distill" if prune_over is None else " ".join(prune_over) or "the recipe's axes"
        lines.append(f"| {r['arm']} | {prune_keys} | {r.get('kd_keys', ' '.join(kd_over)) or '-'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
