"""Compression and Lillama feature distillation at real shapes: decoder layers of Llama-3.1-8B (hidden 4096,
MLP 14336, 32 query / 8 key-value heads, vocabulary 128256) with random weights, bf16, a few layers only.

    python benchmarks/scale.py --layers 2 --device cuda

Measures, for `llm4all compress`'s driver (one layer on the device at a time, float64 statistics) and for
feature distillation (one teacher/student block pair on the device, fp32 factors under bf16 autocast):
seconds per layer, peak device memory and peak process RSS, and compares the device peak with
benchmarks/memory_estimate.py's formula for the same shapes. Random weights say nothing about quality;
time and memory depend on the shapes only. Writes results/scale-<name>.json and the `scale-<name>` section
of docs/BENCHMARKS.md.
"""

import argparse
import copy
import json
import resource
import time
from pathlib import Path

import torch
from memory_estimate import GIB, estimate
from report import add_docs_flag, command_line, machine, write_section
from transformers import AutoModelForCausalLM, LlamaConfig

from llm4all_recipes.compression import ranks as R
from llm4all_recipes.compression.compressor import compress_model
from llm4all_recipes.compression.feature_distill import DistillConfig, distill

RESULTS = Path(__file__).resolve().parent / "results"


def llama_8b_shapes(layers: int, vocab: int, hidden: int = 4096, intermediate: int = 14336) -> LlamaConfig:
    return LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=vocab,
        tie_word_embeddings=False,
        max_position_embeddings=8192,
    )


def peak_device_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=128256)
    parser.add_argument("--hidden-size", type=int, default=4096, help="smaller only for a smoke test")
    parser.add_argument("--intermediate-size", type=int, default=14336, help="smaller only for a smoke test")
    parser.add_argument("--samples", type=int, default=256, help="calibration windows")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--ratio", type=float, default=0.4)
    parser.add_argument("--method", default="whitening")
    parser.add_argument("--fd-samples", type=int, default=64, help="feature-distillation windows")
    parser.add_argument("--fd-tokens", type=int, default=262144, help="feature-distillation tokens per block")
    parser.add_argument("--fd-batch", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--name", default="llama-3.1-8b-shapes")
    add_docs_flag(parser)
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)

    config = llama_8b_shapes(args.layers, args.vocab, args.hidden_size, args.intermediate_size)
    start = time.perf_counter()
    with device:  # random init is much faster on an accelerator; the drivers keep the model on the CPU
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.to("cpu").eval()
    teacher = copy.deepcopy(model)
    print(
        f"model: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters, built in "
        f"{time.perf_counter() - start:.1f} s"
    )
    ids = torch.randint(0, args.vocab, (args.samples, args.seq_len))
    targets = R.find_targets(model, R.DEFAULT_TARGETS)
    result = {"args": vars(args), "command": command_line(), "machine": machine()}

    reset_peak(device)
    start = time.perf_counter()
    ranks, _ = compress_model(
        model,
        ids,
        targets,
        R.uniform(targets, args.ratio),
        method=args.method,
        device=str(device),
        batch_size=args.batch,
    )
    seconds = time.perf_counter() - start
    e = estimate(config, args.samples, args.seq_len, args.batch)
    result["compress"] = {
        "seconds": seconds,
        "seconds_per_layer": seconds / args.layers,
        "achieved_ratio": R.achieved_ratio(targets, ranks),
        "peak_device_gib": peak_device_gib(device),
        "estimate_device_gib": e["device_peak_bytes"] / GIB,
        "peak_rss_gib": rss_gib(),
    }
    print(json.dumps(result["compress"]))

    fd_ids = ids[: args.fd_samples]
    hold = torch.randint(0, args.vocab, (max(args.fd_batch, args.fd_samples // 8), args.seq_len))
    cfg = DistillConfig(
        learning_rate=1e-4,
        tokens_per_block=args.fd_tokens,
        batch_size=args.fd_batch,
        eval_every=max(1, args.fd_tokens // (args.fd_batch * args.seq_len) // 4),
        device=str(device),
    )
    reset_peak(device)
    start = time.perf_counter()
    reports = distill(teacher, model, fd_ids, hold, cfg)
    seconds = time.perf_counter() - start
    result["feature_distill"] = {
        "seconds": seconds,
        "seconds_per_block": seconds / args.layers,
        "train_tokens_per_second": args.fd_tokens * args.layers / seconds,
        "steps_per_block": reports[0].steps,
        "peak_device_gib": peak_device_gib(device),
        "peak_rss_gib": rss_gib(),
        "losses": [(r.initial_loss, r.best_loss) for r in reports],
    }
    print(json.dumps(result["feature_distill"]))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"scale-{args.name}.json").write_text(json.dumps(result, indent=1))
    if args.write_docs:
        write_section(f"scale-{args.name}", markdown(args, result))


def markdown(args, result: dict) -> str:
    c, f = result["compress"], result["feature_distill"]

    def gib(x):
        return "-" if x is None else f"{x:.2f} GiB"

    full = 32
    return (
        "\n".join(
            [
                f"## Real shapes: {args.layers} decoder layers of Llama-3.1-8B (random weights, bf16)"
                if (args.hidden_size, args.intermediate_size) == (4096, 14336)
                else f"## Scale smoke test: {args.layers} layers, hidden {args.hidden_size}, "
                f"MLP {args.intermediate_size}",
                "",
                f"Command: `{result['command']}`  ",
                f"Machine: {result['machine']}. Calibration {args.samples} windows × {args.seq_len} tokens, batches of "
                f"{args.batch}; {args.method} at {args.ratio:.0%} removed (achieved {c['achieved_ratio']:.3f}); "
                "feature "
                f"distillation {args.fd_tokens} tokens per block from {args.fd_samples} windows, batches of "
                f"{args.fd_batch}, {f['steps_per_block']} steps per block.",
                "",
                "| stage | seconds per layer | peak device memory | computed estimate | peak process RSS |",
                "|---|---:|---:|---:|---:|",
                f"| compress (statistics + factorisation + propagation) | {c['seconds_per_layer']:.1f} | "
                f"{gib(c['peak_device_gib'])} | {gib(c['estimate_device_gib'])} | {c['peak_rss_gib']:.1f} GiB |",
                f"| feature distillation | {f['seconds_per_block']:.1f} | {gib(f['peak_device_gib'])} | | "
                f"{f['peak_rss_gib']:.1f} GiB |",
                "",
                f"Extrapolated to the {full} layers of Llama-3.1-8B on this machine: compression ≈ "
                f"{c['seconds_per_layer'] * full / 60:.0f} min, feature distillation ≈ "
                f"{f['seconds_per_block'] * full / 60:.0f} min at {args.fd_tokens} tokens per block "
                f"({f['train_tokens_per_second']:,.0f} tokens/s). The device peak does not grow with depth (one "
                "layer at a time); the CPU holds the model and the calibration hidden states.",
            ]
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
