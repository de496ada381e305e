"""Forgetting benchmark: naive continued pretraining vs replay vs replay + KL, on the tiny default.

    python benchmarks/forgetting.py --model outputs/tiny-llama/tiny-model/base --seeds 0 1

Each arm is one shipped `llm4all cpt` recipe (same steps, new data and LR schedule): recipes/tiny-llama/cpt/
naive.yaml (no replay), replay.yaml (20 % of the tokens from the old domain), replay-kl.yaml (the same, plus
a forward KL to the starting model on the replayed tokens). Reported per arm: the new-domain perplexity drop (learning)
and the old-domain perplexity rise (forgetting); an arm whose new-domain drop is not within ±10 % of naive's
is marked "not comparable" (it learned less, so its lower forgetting proves nothing). Writes the
`forgetting` section of docs/BENCHMARKS.md and benchmarks/results/forgetting.json.
"""

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from report import add_docs_flag, command_line, machine, write_section

from llm4all_recipes.cli import run_stage

ARMS = {
    "naive": "recipes/tiny-llama/cpt/naive.yaml",
    "replay 20 %": "recipes/tiny-llama/cpt/replay.yaml",
    "replay 20 % + KL": "recipes/tiny-llama/cpt/replay-kl.yaml",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="outputs/tiny-llama/tiny-model/base")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--max-steps", type=int, default=60)
    add_docs_flag(parser)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arm, recipe in ARMS.items():
            for seed in args.seeds:
                out = Path(tmp) / f"{arm}-{seed}".replace(" ", "_").replace("%", "")
                argv = ["--config", recipe, "--model_name_or_path", args.model, "--output_dir", str(out), "--seed", str(seed),
                        "--max_steps", str(args.max_steps), "--push_to_hub", "false"]  # fmt: skip
                metrics = run_stage("cpt", argv)
                before, after = metrics["eval_before"], metrics["eval"]
                rows.append({"arm": arm, "seed": seed, "replay_share": metrics["data"]["replay_share"],
                             "old_before": before["old_eval"]["perplexity"], "old_after": after["old_eval"]["perplexity"],
                             "new_before": before["new_eval"]["perplexity"], "new_after": after["new_eval"]["perplexity"],
                             "seconds": metrics["train"]["train_runtime"]})  # fmt: skip
                print(json.dumps(rows[-1]))
    result = {"rows": rows, "command": command_line(), "machine": machine(), "model": args.model}
    Path(__file__).resolve().parent.joinpath("results").mkdir(exist_ok=True)
    Path(__file__).resolve().parent.joinpath("results", "forgetting.json").write_text(
        json.dumps(result, indent=1)
    )
    if args.write_docs:
        write_section("forgetting", markdown(args, result))


def markdown(args, result: dict) -> str:
    rows = result["rows"]
    naive_drop = statistics.mean(1 - r["new_after"] / r["new_before"] for r in rows if r["arm"] == "naive")
    lines = [
        "## Forgetting: naive vs replay vs replay + KL",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}. Start: `{args.model}`; continued pretraining on the new domain "
        f"(`tests/fixtures/text/new_train.jsonl`, emergency medicine) with the recipes `recipes/tiny-llama/cpt/"
        f"{{naive,replay,replay-kl}}.yaml` ({args.max_steps} steps, cosine "
        f"after 6 warm-up steps, lr 2e-3); old domain = `old_eval`, new domain = `new_eval`; mean over seeds {args.seeds}.",
        "",
        "| arm | replay share | new-domain perplexity (drop) | old-domain perplexity (rise) | comparable to naive |",
        "|---|---:|---:|---:|---|",
    ]
    for arm in ARMS:
        group = [r for r in rows if r["arm"] == arm]
        drop = statistics.mean(1 - r["new_after"] / r["new_before"] for r in group)
        rise = statistics.mean(r["old_after"] / r["old_before"] - 1 for r in group)
        comparable = abs(drop - naive_drop) <= 0.10 * naive_drop
        lines.append(
            f"| {arm} | {statistics.mean(r['replay_share'] for r in group):.3f} | "
            f"{statistics.mean(r['new_before'] for r in group):.1f} → {statistics.mean(r['new_after'] for r in group):.1f} "
            f"(−{drop:.1%}) | {statistics.mean(r['old_before'] for r in group):.1f} → "
            f"{statistics.mean(r['old_after'] for r in group):.1f} (+{rise:.1%}) | "
            f"{'yes' if comparable else 'not comparable (learned less)'} |"
        )
    lines += ["", "Replay shares in the literature: 5–25 % of the tokens. The KL term pulls the model towards its "
              "starting point on the replayed tokens only."]  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
