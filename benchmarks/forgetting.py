"""Forgetting benchmark: the learning–forgetting trade-off of continued pretraining, arm by arm, on the French
benchmark model (outputs/bench/french-bench, pretrained on the old domain of the French man pages).

    python benchmarks/forgetting.py [--arms naive replay-kl ...] [--seeds 0] [--confirm ARM ... --confirm-seeds 1 2]
                                    [--jobs 2] [--write-docs]
    python benchmarks/forgetting.py --bench smollm2-135m ...   # SmolLM2-135M: English (old) -> French (new)

Every arm is one `llm4all cpt` run: benchmarks/recipes/french-bench/cpt/naive.yaml (120 steps x 8 x 256 tokens of
the new domain, lr 1e-3 re-warmed over 12 steps then cosine) plus the arm's overrides (replay, KL, LoRA,
merging with the starting model). Arms with a merge grid add one point per α (the run's own forgetting
report). Each point is placed by its old-domain perplexity rise and new-domain perplexity gain, both in
perplexity points relative to naive's (rise ratio, gain share: the issue-15 criterion is rise ≤ 0.15x naive's
with ≥ 95 % of naive's gain). The Pareto front (no other point has a lower rise and a higher gain) is drawn in
docs/img/forgetting-pareto.png. `--confirm` reruns arms (and naive) at more seeds: each seed's kept merge (the
α the run's grid chose) against that seed's naive run, the criterion checked seed by seed.

Runs land in outputs/bench/forgetting/<arm>-s<seed>/ and are reused by a rerun (a finished run is skipped);
`--jobs` runs run in parallel, one thread each. Results: benchmarks/results/forgetting.json; with --write-docs,
the `forgetting` section of docs/BENCHMARKS.md and the PNG.
"""

import argparse
import dataclasses
import json
import os
import shlex
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from report import add_docs_flag, command_line, machine, write_section

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Bench:
    """A start model, its naive recipe, its old-domain replay text and the goal (rise ≤ x naive's, gain ≥ share)."""

    model: str
    recipe: str
    replay: str
    describe: str
    max_rise: float
    min_gain: float
    suffix: str = ""  # of the output folder, results file, docs section and PNG


BENCHES = {
    "french-bench": Bench(
        "outputs/bench/french-bench",
        "benchmarks/recipes/french-bench/cpt/naive.yaml",
        "benchmarks/data/manpages-fr/old_train.jsonl",
        "5.2M-parameter Llama pretrained on the old domain; new domain `manpages-fr-dev` sections 2/3: 120 steps × 8 × "
        "256 tokens, lr 1e-3 re-warmed over 12 steps, cosine re-decay; replay: the old domain's training pages",
        0.15,
        0.95,
    ),
    "smollm2-135m": Bench(
        "outputs/bench/smollm2-135m",
        "benchmarks/recipes/smollm2-135m/cpt/naive.yaml",
        "benchmarks/data/smollm2/en/train.jsonl",
        "SmolLM2-135M-Instruct, Q4_1-dequantized (benchmarks/smollm2.py); old domain English documentation, new domain "
        "French Debian manuals: 40 steps × 8 × 256 tokens of French, lr 1e-3 re-warmed over 4 steps, cosine re-decay; "
        "replay: the English training documents",
        0.25,
        0.90,
        "-smollm2-135m",
    ),
}
BENCH = BENCHES["french-bench"]  # set by main()
KL = ["--kl_coef", "1"]
GRID = ["--merge_grid", "[0.5, 0.6, 0.7, 0.8, 0.9]"]


REPLAY = ["--replay", "0.25"]  # "--replay SHARE": the bench's own old-domain text, expanded by overrides()


def overrides(arm: str) -> list[str]:
    """The arm's cpt arguments, each `--replay SHARE` pair spelt out for the current bench."""
    out, args = [], iter(ARMS[arm])
    for arg in args:
        if arg == "--replay":
            out += ["--replay_datasets", json.dumps([{"path": BENCH.replay}]), "--replay_share", next(args)]
        else:
            out.append(arg)
    return out


# name -> overrides of the bench's naive recipe
ARMS: dict[str, list[str]] = {
    "naive": GRID,
    "naive-slerp": [*GRID, "--merge_method", "slerp"],
    "replay": [*REPLAY, *GRID],
    "replay-kl": [
        *REPLAY,
        *KL,
        "--kl_on",
        "replay",
        *GRID,
    ],  # the shipped replay-kl.yaml before issue 15: KL on replay tokens
    "replay-kl-all": [*REPLAY, *KL, "--kl_on", "all", *GRID],
    "replay10-kl": ["--replay", "0.1", *KL, "--kl_on", "replay", *GRID],
    "replay-kl-new": [*REPLAY, *KL, "--kl_on", "new"],
    "kl-all": [*KL, "--kl_on", "all"],
    "kl-all-merge": [*KL, "--kl_on", "all", *GRID],
    "replay-kl-t2": [*REPLAY, *KL, "--kl_on", "replay", "--kd_temperature", "2"],
    "replay-kl3": [*REPLAY, "--kl_coef", "3", "--kl_on", "replay"],
    "replay-kl-decay": [*REPLAY, "--kl_coef", "2", "--kl_coef_end", "0", "--kl_on", "replay"],
    "replay-kl-rise": [*REPLAY, "--kl_coef", "0", "--kl_coef_end", "2", "--kl_on", "replay"],
    "naive-lr1e-4": ["--learning_rate", "1e-4", *GRID],
    "lora": ["--use_peft", "true", "--lora_r", "16", "--lora_alpha", "32"],
    "lora-lr5e-3": ["--use_peft", "true", "--lora_r", "16", "--lora_alpha", "32", "--learning_rate", "5e-3"],
}


def out_dir() -> Path:
    return Path(f"outputs/bench/forgetting{BENCH.suffix}")


def command(arm: str, seed: int, model: str) -> list[str]:
    return [
        "llm4all",
        "cpt",
        "--config",
        BENCH.recipe,
        "--model_name_or_path",
        model,
        "--seed",
        str(seed),
        "--output_dir",
        str(out_dir() / f"{arm}-s{seed}"),
        *overrides(arm),
    ]


def run(arm: str, seed: int, model: str) -> dict:
    out = ROOT / out_dir() / f"{arm}-s{seed}"
    if not (out / "metrics.json").is_file():
        argv = command(arm, seed, model)
        log = out.with_suffix(".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        binary = str(Path(sys.executable).with_name("llm4all"))
        with log.open("w") as f:
            rc = subprocess.call([binary, *argv[1:]], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
        if rc != 0:
            raise SystemExit(f"{arm} seed {seed} failed (rc {rc}): see {log}")
    metrics = json.loads((out / "metrics.json").read_text())
    points = metrics["forgetting"]["points"]
    return {
        "arm": arm,
        "seed": seed,
        "command": shlex.join(command(arm, seed, model)),
        "points": points,
        "merge": metrics.get("merge_with_base"),
        "seconds": metrics["train"]["train_runtime"],
        "trainable": metrics["trainable_parameters"],
    }


def place(rows: list[dict]) -> list[dict]:
    """One point per (arm, α), averaged over seeds, with its rise ratio and gain share relative to naive."""
    naive = [r for r in rows if r["arm"] == "naive"]
    if not naive:
        raise SystemExit("the naive arm is the reference: include it")
    before = naive[0]["points"][0]
    naive_after = [r["points"][1] for r in naive]
    naive_rise = statistics.mean(p["old"] for p in naive_after) - before["old"]
    naive_gain = before["new"] - statistics.mean(p["new"] for p in naive_after)
    grouped: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        for p in r["points"][1:]:
            label = p["model"].replace(" (kept)", "")
            grouped.setdefault((r["arm"], "" if label == "after" else label), []).append(p)
    points = []
    for (arm, merge), ps in grouped.items():
        old, new = statistics.mean(p["old"] for p in ps), statistics.mean(p["new"] for p in ps)
        points.append(
            {
                "arm": arm,
                "merge": merge,
                "name": arm + (f" {merge}" if merge else ""),
                "old": old,
                "new": new,
                "seeds": len(ps),
                "rise": old - before["old"],
                "gain": before["new"] - new,
                "rise_ratio": (old - before["old"]) / naive_rise,
                "gain_share": (before["new"] - new) / naive_gain,
            }
        )
    for p in points:
        p["pareto"] = not any(
            q["rise"] <= p["rise"]
            and q["gain"] >= p["gain"]
            and q is not p
            and (q["rise"], q["gain"]) != (p["rise"], p["gain"])
            for q in points
        )
        p["goal"] = p["rise_ratio"] <= BENCH.max_rise and p["gain_share"] >= BENCH.min_gain
    return points


def confirmations(rows: list[dict], arms: list[str]) -> list[dict]:
    """For each arm and seed: its kept model (the α its grid chose, else the trained one) against that seed's naive."""
    by = {(r["arm"], r["seed"]): r for r in rows}
    out = []
    for arm in arms:
        for (name, seed), r in sorted(by.items()):
            naive = by.get(("naive", seed))
            if name != arm or naive is None:
                continue
            before, after = naive["points"][0], naive["points"][1]
            kept = next((p for p in r["points"] if p["model"].endswith("(kept)")), r["points"][1])
            rise, gain = kept["old"] - before["old"], before["new"] - kept["new"]
            out.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "kept": kept["model"].replace(" (kept)", ""),
                    "old": kept["old"],
                    "new": kept["new"],
                    "naive_old": after["old"],
                    "naive_new": after["new"],
                    "rise_ratio": rise / (after["old"] - before["old"]),
                    "gain_share": gain / (before["new"] - after["new"]),
                }
            )
            out[-1]["goal"] = out[-1]["rise_ratio"] <= BENCH.max_rise and out[-1]["gain_share"] >= BENCH.min_gain
    return out


def distinct(points: list[dict]) -> list[dict]:
    """The points, less repeats of the same training (an arm that differs from another only by its merge grid
    reports the same unmerged model)."""
    seen, out = set(), []
    for p in points:
        key = (round(p["old"], 6), round(p["new"], 6))
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def plot(points: list[dict], before: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6), dpi=110)
    for p in points:
        ax.scatter(
            p["gain_share"],
            p["rise_ratio"],
            s=36 if p["pareto"] else 14,
            color="C3" if p["pareto"] else "0.6",
            zorder=3,
        )
        if not p["merge"] or p["goal"]:
            ax.annotate(
                p["name"],
                (p["gain_share"], p["rise_ratio"]),
                textcoords="offset points",
                xytext=(5, 3),
                fontsize=7,
            )
    front = sorted((p for p in points if p["pareto"]), key=lambda p: p["gain_share"])
    ax.plot(
        [p["gain_share"] for p in front],
        [p["rise_ratio"] for p in front],
        color="C3",
        lw=1,
        label="Pareto front",
    )
    low, right = ax.get_ylim()[0], max(1.05, max(p["gain_share"] for p in points) + 0.02)
    ax.fill_between(
        [BENCH.min_gain, right],
        low,
        BENCH.max_rise,
        color="C2",
        alpha=0.12,
        label=f"goal: rise ≤ {BENCH.max_rise}× naive, gain ≥ {BENCH.min_gain:.0%}",
    )
    ax.set_ylim(bottom=low)
    ax.set_xlabel("new-domain gain, share of naive's  (→ learns more)")
    ax.set_ylabel("old-domain perplexity rise, × naive's  (↑ forgets more)")
    ax.set_title(
        f"Learning vs forgetting, {BENCH.model} (old {before['old']:.2f}, new {before['new']:.2f} before); "
        "unlabelled: merge α points",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--bench",
        choices=list(BENCHES),
        default="french-bench",
        help="start model, naive recipe, replay text and goal (BENCHES)",
    )
    parser.add_argument("--model", default=None, help="the start model (default: the bench's)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--confirm", nargs="*", default=[], choices=list(ARMS), help="arms rerun at --confirm-seeds")
    parser.add_argument("--confirm-seeds", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one thread each)")
    add_docs_flag(parser)
    args = parser.parse_args()
    global BENCH
    BENCH = BENCHES[args.bench]
    args.model = args.model or BENCH.model
    if "naive" not in args.arms:
        args.arms.insert(0, "naive")
    jobs = [(arm, seed) for arm in args.arms for seed in args.seeds]
    confirm = [*dict.fromkeys(["naive", *args.confirm])] if args.confirm else []
    jobs += [(arm, seed) for arm in confirm for seed in args.confirm_seeds if seed not in args.seeds]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda job: run(*job, args.model), jobs))
    for r in rows:
        print(json.dumps({"arm": r["arm"], "seed": r["seed"], "points": r["points"]}))
    points = distinct(place([r for r in rows if r["seed"] in args.seeds]))
    checks = confirmations(rows, args.confirm)
    result = {
        "rows": rows,
        "points": points,
        "confirm": checks,
        "command": command_line(),
        "machine": machine(),
        "model": args.model,
    }
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "results" / f"forgetting{BENCH.suffix}.json").write_text(json.dumps(result, indent=1))
    if args.write_docs:
        plot(points, rows[0]["points"][0], ROOT / png())
        write_section(f"forgetting{BENCH.suffix}", markdown(args, result))


def png() -> str:
    return f"docs/img/forgetting-pareto{BENCH.suffix}.png"


def markdown(args, result: dict) -> str:
    rows, points = result["rows"], result["points"]
    before = rows[0]["points"][0]
    lines = [
        "## Forgetting: the learning–forgetting trade-off of continued "
        f"pretraining{f' ({args.bench})' if BENCH.suffix else ''}",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}. Start: `{args.model}` ({BENCH.describe}; held-out perplexity "
        f"{before['old']:.2f} old / {before['new']:.2f} new). Every arm is `{BENCH.recipe}` plus its overrides; "
        "replay = 25 % (replay10: 10 %) of the tokens from the old domain; "
        f"seeds {args.seeds} (mean). Rise = old-domain perplexity after − before; gain = new-domain perplexity "
        "before − "
        "after; both relative to naive's. `α=x`: the trained model merged with the starting one x of the way "
        "(WiSE-FT), measured on the same held-out pages the grid chooses on.",
        "",
        f"![Pareto front]({Path(png()).relative_to('docs')})",
        "",
        "| arm | old ppl (rise) | new ppl (gain) | rise × naive | gain share | Pareto | goal |",
        "|---|---:|---:|---:|---:|:---:|:---:|",
    ]
    for p in sorted(points, key=lambda p: (p["arm"] != "naive", p["rise_ratio"])):
        if p["merge"] and not p["pareto"] and not p["goal"]:
            continue
        lines.append(
            f"| {p['name']} | {p['old']:.2f} ({p['rise']:+.2f}) | {p['new']:.2f} ({p['gain']:+.2f}) | "
            f"{p['rise_ratio']:.2f} | {p['gain_share']:.0%} | {'★' if p['pareto'] else ''} | "
            f"{'✓' if p['goal'] else ''} |"
        )
    if result["confirm"]:
        lines += [
            "",
            "Seed by seed (each run's kept model: the α its own grid chose on the held-out pages, against the "
            "same seed's naive run):",
            "",
            "| arm | seed | kept | old ppl | new ppl | naive old / new | rise × naive | gain share | goal |",
            "|---|---:|---|---:|---:|---:|---:|---:|:---:|",
        ]
        for c in result["confirm"]:
            lines.append(
                f"| {c['arm']} | {c['seed']} | {c['kept']} | {c['old']:.2f} | {c['new']:.2f} | "
                f"{c['naive_old']:.2f} / {c['naive_new']:.2f} | {c['rise_ratio']:.2f} | {c['gain_share']:.0%} | "
                f"{'✓' if c['goal'] else '✗'} |"
            )
    lines += [
        "",
        f"Goal: rise ≤ {BENCH.max_rise}× naive's at ≥ {BENCH.min_gain:.0%} of its gain. Merge points off "
        f"the front and outside the goal are in `benchmarks/results/forgetting{BENCH.suffix}.json`. "
        "Each arm's command (seed 0):",
        "",
    ]
    for r in rows:
        if r["seed"] == args.seeds[0]:
            lines.append(f"- {r['arm']}: `{r['command']}`")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
