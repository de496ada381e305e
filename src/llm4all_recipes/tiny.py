"""The embedded default, built offline: a byte-level BPE tokenizer trained on the project's own French
text, and a small Llama from a config dict. `stages/tiny_model.py` pretrains it briefly.

Special tokens (ChatML): `<|im_start|>`, `<|im_end|>` (EOS: ends an assistant turn and a document),
`<|endoftext|>`, `<|pad|>` (padding only). No BOS is added.
"""

import json
from collections.abc import Iterator, Sequence

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
EOS, PAD = "<|im_end|>", "<|pad|>"


def iter_texts(files: Sequence[str]) -> Iterator[str]:
    """Text of jsonl files: the `text` field, or the contents of `messages`."""
    for path in files:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{lineno}: invalid JSON ({exc.msg})") from None
                if "text" in row:
                    yield row["text"]
                elif "messages" in row:
                    yield "\n".join(m["content"] for m in row["messages"])
                else:
                    raise ValueError(f"{path}:{lineno}: no `text` or `messages` field")


def build_tokenizer(files: Sequence[str], vocab_size: int, chat_template: str, model_max_length: int):
    """Train a byte-level BPE (NFC-normalised, so accents are single code points) and wrap it for transformers;
    `model_max_length` is the model's context (its max_position_embeddings)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter_texts(files), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (EOS, PAD)],
        model_max_length=model_max_length,
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def build_model(model_config: dict, tokenizer, seed: int):
    """A randomly initialised LlamaForCausalLM whose vocabulary and special ids match the tokenizer."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        **{
            **model_config,
            "vocab_size": len(tokenizer),
            "bos_token_id": None,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
        max_new_tokens=64,
    )
    return model


# Sizes of a tiny model "of the same family" as a real one: enough for every structural feature (GQA groups,
# biases, q/k norms, soft-capping, tied embeddings, fused projections) to be exercised, small enough for CPU tests.
TINY_SIZES = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "head_dim": 16,
}
# Keys of a published config that describe the checkpoint, not the architecture, or are sized for the real one.
_DROP = ("architectures", "auto_map", "torch_dtype", "dtype", "transformers_version", "quantization_config",
         "_name_or_path", "bos_token_id", "eos_token_id", "pad_token_id")  # fmt: skip


def shrink_config(config: dict, tokenizer, sizes: dict | None = None):
    """A real model's config.json (dict) at tiny sizes, with the tokenizer's vocabulary and special ids: the
    same class, biases, norms, activations, soft-capping and tying as the real model, random-init sized."""
    from transformers import AutoConfig

    values = {k: v for k, v in config.items() if k not in _DROP}
    sizes = {**TINY_SIZES, **(sizes or {})}
    heads = sizes["num_attention_heads"]
    real_heads = config.get("num_attention_heads", heads)
    real_kv = config.get("num_key_value_heads") or real_heads
    # GQA stays GQA (2 KV heads), MHA stays MHA
    sizes.setdefault("num_key_value_heads", heads if real_kv == real_heads else 2)
    values.update(sizes)
    layers = sizes["num_hidden_layers"]
    if isinstance(values.get("layer_types"), list):  # per-layer sliding/full attention (Gemma-2/3, Qwen3)
        values["layer_types"] = values["layer_types"][:layers]
    if "max_window_layers" in values:
        values["max_window_layers"] = min(values["max_window_layers"], layers)
    if "query_pre_attn_scalar" in values:  # Gemma: scaled by head_dim at real size
        values["query_pre_attn_scalar"] = sizes["head_dim"]
    scaling = values.get("rope_scaling") or {}
    if scaling.get("short_factor") or scaling.get("long_factor"):  # Phi-3 LongRoPE: one factor per rotary dim
        values.pop("rope_scaling")
    values.update(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return AutoConfig.for_model(values.pop("model_type"), **values)
