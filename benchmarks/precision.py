"""Precision benchmark: the same SFT run of a model loaded in bf16 under each precision of the policy.

    python benchmarks/precision.py [--arms bf16 bf16-stochastic fp32-master] [--steps 36] [--write-docs]

(from the repository root, after `python benchmarks/smollm2.py`). The run is
benchmarks/recipes/smollm2-135m/sft/precision.yaml: SmolLM2-135M-Instruct (Q4_1-dequantized) in bf16, 48 French
chat fixtures, lr 1e-5 (the real folders' SFT rate), held-out loss on the 12 evaluation chats every 12 steps.
Arms (`--precision`): `bf16` (plain AdamW on bf16 weights: what one-GPU runs did before the policy),
`bf16-stochastic` (torchao's AdamW with stochastic rounding), `fp32-master` (float32 weights and AdamW states,
bf16 autocast, saved in bf16). Reported: the held-out loss at each check, the last training losses, the share of
the saved bf16 weights that differ from the start, time. Outputs under outputs/bench/precision-smollm2-135m/<arm>
(a finished arm is reused); results: benchmarks/results/precision-smollm2-135m.json.
"""

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from report import add_docs_flag, command_line, machine, write_section  # noqa: E402

RECIPE = "benchmarks/recipes/smollm2-135m/sft/precision.yaml"
ARMS = ["bf16", "bf16-stochastic", "fp32-master"]
NAME = "precision-smollm2-135m"


def changed_share(start: Path, trained: Path) -> float:
    """Share of the parameters whose saved value differs from the starting model's (both in bf16)."""
    from safetensors.torch import load_file

    a, b = load_file(str(start / "model.safetensors")), load_file(str(trained / "model.safetensors"))
    same = total = 0
    for key, t in b.items():
        s = a[key].to(t.dtype)
        same += int((s == t).sum())
        total += t.numel()
    return 1 - same / total


def run_arm(arm: str, steps: int, root: Path) -> dict:
    from llm4all_recipes.cli import run_stage

    out = root / arm
    if not (out / "metrics.json").is_file():
        start = time.perf_counter()
        run_stage(
            "sft",
            [
                "--config",
                RECIPE,
                "--precision",
                arm,
                "--max_steps",
                str(steps),
                "--output_dir",
                str(out),
                "--push_to_hub",
                "false",
            ],
        )
        (out / "seconds.txt").write_text(f"{time.perf_counter() - start:.1f}")
    metrics = json.loads((out / "metrics.json").read_text())
    state = (
        json.loads(next(out.glob("checkpoint-*/trainer_state.json")).read_text())
        if list(out.glob("checkpoint-*/trainer_state.json"))
        else {"log_history": []}
    )
    history = state["log_history"]
    # the Trainer names a held-out set's loss eval_<label>_loss (eval_loss with a single unnamed set)
    checks = [(h["step"], v) for h in history for k, v in h.items() if k.startswith("eval_") and k.endswith("_loss")]
    losses = [h["loss"] for h in history if "loss" in h]
    return {
        "arm": arm,
        "precision": metrics["train"].get("precision"),
        "eval_before": metrics["eval_before"]["eval"]["loss"],
        "checks": checks,
        "eval_after": metrics["eval"]["eval"]["loss"],
        "last_train_losses": losses[-12:],
        "mean_last_train_loss": sum(losses[-12:]) / max(1, len(losses[-12:])),
        "changed_share": changed_share(Path("outputs/bench/smollm2-135m"), out),
        "seconds": float((out / "seconds.txt").read_text()) if (out / "seconds.txt").is_file() else None,
        "steps": metrics["train"]["global_step"],
        "tokens": metrics["train"].get("num_tokens"),
    }


def report(results: dict) -> str:
    lines = [
        "## Precision: the same SFT run of a bf16 model under each precision (`smollm2-135m`)",
        "",
        "```bash",
        *results["commands"],
        "```",
        "",
        f"{results['machine']}. `{RECIPE}`: SmolLM2-135M-Instruct (Q4_1-dequantized) loaded in bf16, 48 French chat "
        "fixtures, lr 1e-5 constant, batches of 4 chats; held-out loss (assistant tokens of the 12 evaluation chats) "
        "before training and every 12 steps; changed = share of the saved bf16 weights that differ from the start.",
        "",
        "| precision | held-out loss: start → every 12 steps | mean training loss, last 12 steps | changed | time |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results["rows"]:
        path = " → ".join([f"{r['eval_before']:.4f}", *(f"{loss:.4f}" for _, loss in r["checks"])])
        secs = f"{r['seconds'] / 60:.1f} min" if r["seconds"] else ""
        lines.append(f"| `{r['arm']}` | {path} | {r['mean_last_train_loss']:.4f} | {r['changed_share']:.1%} | {secs} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    parser.add_argument("--steps", type=int, default=36)
    add_docs_flag(parser)
    args = parser.parse_args()
    root = Path("outputs/bench") / NAME
    file = HERE / "results" / f"{NAME}.json"
    old = json.loads(file.read_text()) if file.is_file() else {"rows": [], "commands": []}
    rows = {r["arm"]: r for r in old["rows"]}
    for arm in args.arms:
        rows[arm] = run_arm(arm, args.steps, root)
        print(json.dumps(rows[arm]), flush=True)
    results = {
        "commands": list(dict.fromkeys([*old["commands"], command_line()])),
        "machine": machine(),
        "rows": [rows[a] for a in ARMS if a in rows],
    }
    file.parent.mkdir(exist_ok=True)
    file.write_text(json.dumps(results, indent=1) + "\n")
    if args.write_docs:
        write_section(NAME, report(results))


if __name__ == "__main__":
    main()
