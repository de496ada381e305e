"""Memory of `llm4all compress` on 7B/8B models, computed from their configs (meta device: no weights).

    python benchmarks/memory_estimate.py

The layer-by-layer driver keeps on the device one decoder layer (weights), the float64 statistics of its
distinct linear inputs (Llama: attention input shared by q/k/v, o_proj input, MLP input shared by gate/up,
down_proj input) and one batch of hidden states; on the CPU the model and the calibration hidden states
(inputs and outputs of the current layer). Writes the `memory-estimate` section of docs/BENCHMARKS.md.
"""

import torch
from report import command_line, write_section
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig

from llm4all_recipes.compression import ranks as R

CONFIGS = {
    "Llama-3.1-8B": LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                                num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False),
    "Mistral-7B-v0.3": MistralConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                                     num_key_value_heads=8, vocab_size=32768),
    "Llama-3.2-1B": LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                                num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True),
}  # fmt: skip
SAMPLES, SEQ_LEN, BATCH = 256, 2048, 8
GIB = 2**30


def distinct_input_dims(config) -> list[int]:
    """Llama-family decoder layer: q/k/v share their input, gate/up share theirs."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return [
        config.hidden_size,
        config.num_attention_heads * head_dim,
        config.hidden_size,
        config.intermediate_size,
    ]


def estimate(config, samples: int = SAMPLES, seq_len: int = SEQ_LEN, batch: int = BATCH) -> dict[str, float]:
    """Bytes of layer-by-layer compression with bf16 weights and hidden states, float64 statistics."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    targets = R.find_targets(model, R.DEFAULT_TARGETS)
    params = sum(p.numel() for p in model.parameters())
    layer_weights = 2 * max(
        sum(t.params for t in targets if t.layer == i) for i in range(config.num_hidden_layers)
    )
    return {
        "parameters": params,
        "device_layer_weights": layer_weights,
        "device_statistics": sum(8 * d * d + 8 * d for d in distinct_input_dims(config)),
        # the widest intermediate activation of one batch, counted generously at 8 bytes an element
        "device_batch_activations": 8 * batch * seq_len * config.intermediate_size,
        "cpu_model": 2 * params,
        "cpu_hidden_states": 2 * samples * seq_len * config.hidden_size * 2,
    }


def main() -> None:
    lines = [
        "## Memory of layer-by-layer compression (computed)",
        "",
        f"Command: `{command_line()}`. Calibration {SAMPLES} windows × {SEQ_LEN} tokens, batches of {BATCH}; "
        "weights and hidden states in bf16, statistics in float64.",
        "",
        "| model | parameters | device: layer weights | device: statistics | device: batch activations | CPU: model (bf16) | CPU: hidden states in + out |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    totals = {}
    for name, config in CONFIGS.items():
        e = estimate(config)
        device = e["device_layer_weights"] + e["device_statistics"] + e["device_batch_activations"]
        totals[name] = (device / GIB, (e["cpu_model"] + e["cpu_hidden_states"]) / GIB)
        lines.append(
            f"| {name} | {e['parameters'] / 1e9:.2f} B | {e['device_layer_weights'] / GIB:.2f} GiB | "
            f"{e['device_statistics'] / GIB:.2f} GiB | {e['device_batch_activations'] / GIB:.2f} GiB | "
            f"{e['cpu_model'] / GIB:.1f} GiB | {e['cpu_hidden_states'] / GIB:.1f} GiB |"
        )
    device, cpu = totals["Llama-3.1-8B"]
    lines += [
        "",
        f"So Llama-3.1-8B compresses with ≈ {device:.1f} GiB on the device (one layer, its statistics, a batch; "
        f"plus the float64 SVD workspace of the largest matrix, ≈ 1 GiB) and ≈ {cpu:.0f} GiB of CPU RAM for "
        f"{SAMPLES} × {SEQ_LEN} calibration tokens; halve the windows to halve the hidden states. "
        "`llm4all compress --dry_run true` prints an estimate for any recipe.",
    ]
    write_section("memory-estimate", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
