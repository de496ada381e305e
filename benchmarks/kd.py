"""Distillation benchmark, on the tiny default.

    python benchmarks/kd.py --teacher outputs/tiny-llama/tiny-model/base --student
    outputs/tiny-llama/feature-distill/svd-80

1. Speed and memory, same student, teacher, data (French chat, assistant tokens), batch and steps, each arm in
   its own process (peak resident memory = that process's): plain SFT of the student (the speed limit),
   KDTrainer with the teacher online, KDTrainer from the offline top-k cache (cache built beforehand, not
   timed), and TRL's GKDTrainer with λ = 0 (off-policy, no generation).
2. Healing at 60 % and 80 % (svd and whitening inits): perplexity of the dense model, the compressed one,
   after Lillama feature distillation, and after KD (recipes/tiny-llama/kd/heal.yaml).
Writes the `kd` section of docs/BENCHMARKS.md and benchmarks/results/kd.json.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import add_docs_flag, command_line, machine, write_section

STEPS, BATCH, LENGTH = 24, 8, 512
CHAT = "tests/fixtures/chat/train.jsonl"


def arm(name: str, teacher: str, student: str, tmp: str, cache: str) -> dict:
    """One speed arm, in this process."""
    from llm4all_recipes.cli import run_stage

    common = [
        "--model_name_or_path",
        student,
        "--max_steps",
        str(STEPS),
        "--per_device_train_batch_size",
        str(BATCH),
        "--max_length",
        str(LENGTH),
        "--save_strategy",
        "no",
        "--logging_steps",
        "1",
        "--push_to_hub",
        "false",
        "--output_dir",
        f"{tmp}/{name}",
    ]
    if name == "sft":
        metrics = run_stage("sft", ["--config", "recipes/tiny-llama/sft/chat.yaml", *common])
        train = metrics["train"]
    elif name in ("kd-online", "kd-cache"):
        source = (
            ["--teacher_cache", cache]
            if name == "kd-cache"
            else ["--teacher_model_name_or_path", teacher, "--datasets", CHAT]
        )
        recipe = Path(tmp) / "recipes" / "b" / "kd" / "chat.yaml"
        recipe.parent.mkdir(parents=True, exist_ok=True)
        recipe.write_text(
            "data_format: messages\nlearning_rate: 1.0e-3\n" + ("" if name == "kd-cache" else "kd_loss: forward_kl\n")
        )
        metrics = run_stage("kd", ["--config", str(recipe), *source, *common])
        train = metrics["train"]
    else:
        train = gkd(teacher, student, f"{tmp}/{name}")
    return {
        "arm": name,
        "tokens_per_second": train["num_tokens"] / train["train_runtime"],
        "seconds": train["train_runtime"],
        "tokens": train["num_tokens"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def gkd(teacher: str, student: str, out: str) -> dict:
    """TRL's GKDTrainer, λ = 0 (on-policy fraction zero: no generation), β = 0 (forward KL), same data."""
    from datasets import load_dataset
    from trl.experimental.gkd import GKDConfig, GKDTrainer

    from llm4all_recipes.models import load_model, load_tokenizer

    data = load_dataset("json", data_files=CHAT, split="train").select_columns(["messages"])
    args = GKDConfig(
        output_dir=out,
        lmbda=0.0,
        beta=0.0,
        temperature=1.0,
        max_steps=STEPS,
        per_device_train_batch_size=BATCH,
        max_length=LENGTH,
        learning_rate=1e-3,
        use_cpu=True,
        bf16=False,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        gradient_checkpointing=False,
    )
    trainer = GKDTrainer(
        model=load_model(student),
        teacher_model=load_model(teacher),
        args=args,
        train_dataset=data,
        processing_class=load_tokenizer(student),
    )
    inner, seen = trainer.data_collator, {"tokens": 0}

    def counting(features):  # GKD does not log its token count: count the attended tokens of each batch
        batch = inner(features)
        seen["tokens"] += int(batch["attention_mask"].sum())
        return batch

    trainer.data_collator = counting
    result = trainer.train()
    return {"train_runtime": result.metrics["train_runtime"], "num_tokens": seen["tokens"]}


def healing(teacher: str, tmp: str) -> list[dict]:
    from llm4all_recipes.cli import run_stage

    rows = []
    for method in ("svd", "whitening"):
        for ratio in (0.6, 0.8):
            tag = f"{tmp}/heal-{method}-{ratio}"
            start = time.perf_counter()
            comp = run_stage(
                "compress",
                [
                    "--config",
                    "recipes/tiny-llama/compress/svd-80.yaml",
                    "--model_name_or_path",
                    teacher,
                    "--method",
                    method,
                    "--ratio",
                    str(ratio),
                    "--output_dir",
                    f"{tag}/c",
                    "--push_to_hub",
                    "false",
                ],
            )
            fd = run_stage(
                "feature-distill",
                [
                    "--config",
                    "recipes/tiny-llama/feature-distill/svd-80.yaml",
                    "--model_name_or_path",
                    f"{tag}/c",
                    "--output_dir",
                    f"{tag}/fd",
                    "--push_to_hub",
                    "false",
                ],
            )
            kd = run_stage(
                "kd",
                [
                    "--config",
                    "recipes/tiny-llama/kd/heal.yaml",
                    "--model_name_or_path",
                    f"{tag}/fd",
                    "--teacher_model_name_or_path",
                    teacher,
                    "--output_dir",
                    f"{tag}/kd",
                    "--push_to_hub",
                    "false",
                ],
            )
            rows.append(
                {
                    "method": method,
                    "ratio": ratio,
                    "dense": comp["eval_before"]["old_eval"]["perplexity"],
                    "compressed": comp["eval"]["old_eval"]["perplexity"],
                    "distilled": fd["eval"]["old_eval"]["perplexity"],
                    "healed": kd["eval"]["old_eval"]["perplexity"],
                    "kd_steps": kd["train"]["global_step"],
                    "seconds": time.perf_counter() - start,
                }
            )
            print(json.dumps(rows[-1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", default="outputs/tiny-llama/tiny-model/base")
    parser.add_argument("--student", default="outputs/tiny-llama/feature-distill/svd-80")
    parser.add_argument("--arm", help="(internal) run one speed arm in this process and print its JSON")
    parser.add_argument("--tmp")
    parser.add_argument("--cache")
    add_docs_flag(parser)
    args = parser.parse_args()
    if args.arm:
        print("RESULT " + json.dumps(arm(args.arm, args.teacher, args.student, args.tmp, args.cache)))
        return
    from llm4all_recipes.cli import run_stage

    with tempfile.TemporaryDirectory() as tmp:
        cache = f"{tmp}/cache"
        run_stage(
            "cache-teacher",
            [
                "--config",
                "recipes/tiny-llama/cache-teacher/base.yaml",
                "--teacher_model_name_or_path",
                args.teacher,
                "--data_format",
                "messages",
                "--datasets",
                CHAT,
                "--max_length",
                str(LENGTH),
                "--output_dir",
                cache,
            ],
        )
        speed = []
        for name in ("sft", "kd-online", "kd-cache", "gkd"):
            proc = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--arm",
                    name,
                    "--teacher",
                    args.teacher,
                    "--student",
                    args.student,
                    "--tmp",
                    tmp,
                    "--cache",
                    cache,
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            speed.append(json.loads(proc.stdout.split("RESULT ", 1)[1]))
            print(json.dumps(speed[-1]))
        mass = json.loads(Path(cache, "metrics.json").read_text())["mean_topk_mass"]
        heal = healing(args.teacher, tmp)
    result = {
        "speed": speed,
        "healing": heal,
        "topk_mass": mass,
        "command": command_line(),
        "machine": machine(),
    }
    Path(__file__).resolve().parent.joinpath("results").mkdir(exist_ok=True)
    Path(__file__).resolve().parent.joinpath("results", "kd.json").write_text(json.dumps(result, indent=1))
    if args.write_docs:
        write_section("kd", markdown(args, result))


def markdown(args, result: dict) -> str:
    lines = [
        "## Distillation: speed, memory, healing",
        "",
        f"Command: `{result['command']}`  ",
        f"Machine: {result['machine']}. Teacher `{args.teacher}`, student `{args.student}` (low-rank); French chat "
        f"(`{CHAT}`), {STEPS} steps of {BATCH} rows × ≤ {LENGTH} tokens, assistant tokens; each arm in its own "
        "process.",
        "",
        "| trainer | tokens/s | time (s) | peak RSS (MiB) |",
        "|---|---:|---:|---:|",
    ]
    names = {
        "sft": "SFT of the student (the speed limit)",
        "kd-online": "KDTrainer, teacher online",
        "kd-cache": "KDTrainer, top-64 cache",
        "gkd": "TRL GKDTrainer, λ = 0",
    }
    for r in result["speed"]:
        lines.append(
            f"| {names[r['arm']]} | {r['tokens_per_second']:.0f} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} |"
        )
    lines += [
        "",
        f"The top-64 cache holds {result['topk_mass']:.4f} of the teacher's probability mass on average.",
        "",
        "Healing (perplexity on `old_eval`, window 256; compress → feature-distill → kd, the shipped tiny recipes):",
        "",
        "| init | ratio | dense | compressed | + feature distillation | + KD | gap recovered by FD + KD |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["healing"]:
        recovered = (
            (r["compressed"] - r["healed"]) / (r["compressed"] - r["dense"])
            if r["compressed"] > r["dense"]
            else float("nan")
        )
        lines.append(
            f"| {r['method']} | {r['ratio']:.0%} | {r['dense']:.2f} | {r['compressed']:.2f} | {r['distilled']:.2f} | "
            f"{r['healed']:.2f} | {recovered:.0%} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
