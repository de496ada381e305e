"""Memory of `llm4all compress` on 7B/8B models, computed from their configs (meta device: no weights).

    python benchmarks/memory_estimate.py

The layer-by-layer driver keeps on the device one decoder layer (weights) and the float64 statistics of its
distinct linear inputs (Llama: attention input shared by q/k/v, o_proj input, MLP input shared by gate/up,
down_proj input); on top of that, either one batch's activations while statistics are collected (bf16
intermediates, plus a float64 chunk of `InputStats.chunk_rows` tokens) or the float64 workspace of the
largest factorisation (whitening: the n x n Cholesky factor and about seven m x n matrices), whichever is larger.
On the CPU: the model and the calibration hidden states (inputs and outputs of the current layer).
benchmarks/scale.py measures the device peak at these shapes. Writes the `memory-estimate` section of
docs/BENCHMARKS.md.
"""

import argparse

import torch
from report import add_docs_flag, command_line, write_section
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig

from llm4all_recipes.compression import ranks as R

CONFIGS = {
    "Llama-3.1-8B": LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=False,
    ),
    "Mistral-7B-v0.3": MistralConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=32768,
    ),
    "Llama-3.2-1B": LlamaConfig(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        tie_word_embeddings=True,
    ),
}
SAMPLES, SEQ_LEN, BATCH = 256, 2048, 8
GIB = 2**30


def estimate(config, samples: int = SAMPLES, seq_len: int = SEQ_LEN, batch: int = BATCH) -> dict[str, int]:
    """`llm4all compress`'s own estimate (ranks.memory_estimate, also printed by --dry_run) on a meta model."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    e = R.memory_estimate(model, R.find_targets(model, R.DEFAULT_TARGETS), samples, seq_len, batch)
    return {**e, "parameters": sum(p.numel() for p in model.parameters())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_docs_flag(parser)
    args = parser.parse_args()
    lines = [
        "## Memory of layer-by-layer compression (computed)",
        "",
        f"Command: `{command_line()}`. Calibration {SAMPLES} windows × {SEQ_LEN} tokens, batches of {BATCH}; "
        "weights and hidden states in bf16, statistics in float64.",
        "",
        "| model | parameters | device: layer weights | device: statistics | device: batch activations | device: "
        "factorisation | device: peak | CPU: model (bf16) | CPU: hidden states in + out |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    totals = {}
    for name, config in CONFIGS.items():
        e = estimate(config)
        totals[name] = (
            e["device_peak_bytes"] / GIB,
            (e["model_bytes_cpu"] + e["activations_bytes_cpu"]) / GIB,
        )
        lines.append(
            f"| {name} | {e['parameters'] / 1e9:.2f} B | {e['layer_weights_bytes_max'] / GIB:.2f} GiB | "
            f"{e['statistics_bytes_per_layer_max'] / GIB:.2f} GiB | {e['batch_activations_bytes'] / GIB:.2f} GiB | "
            f"{e['factorisation_bytes'] / GIB:.2f} GiB | {e['device_peak_bytes'] / GIB:.1f} GiB | "
            f"{e['model_bytes_cpu'] / GIB:.1f} GiB | {e['activations_bytes_cpu'] / GIB:.1f} GiB |"
        )
    device, cpu = totals["Llama-3.1-8B"]
    lines += [
        "",
        f"Device peak = layer weights + statistics + the larger of batch activations and factorisation. So "
        f"Llama-3.1-8B compresses with ≈ {device:.1f} GiB on the device and ≈ {cpu:.0f} GiB of CPU RAM for "
        f"{SAMPLES} × {SEQ_LEN} calibration tokens; halve the windows to halve the hidden states. "
        "`llm4all compress --dry_run true` prints an estimate for any recipe.",
    ]
    if args.write_docs:
        write_section("memory-estimate", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
