"""The embedded defaults, built offline: a byte-level BPE tokenizer trained on the project's own French
text, and a small Llama from a config dict (`stages/tiny_model.py` pretrains it briefly), or a small random
Whisper with the same kind of tokenizer plus Whisper's special tokens (for the speech tests and demo).

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
_DROP = (
    "architectures",
    "auto_map",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "quantization_config",
    "_name_or_path",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
)


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


# --------------------------------------------------------------------------- a tiny Whisper
# Whisper's special tokens after the text vocabulary, in the order its tokenizer and generate() rely on: the
# language tokens directly follow <|startoftranscript|> (language id = sot + 1 + index), the timestamp tokens
# <|0.00|> ... <|30.00|> directly follow <|notimestamps|>.
WHISPER_TASK_TOKENS = [
    "<|translate|>",
    "<|transcribe|>",
    "<|startoflm|>",
    "<|startofprev|>",
    "<|nospeech|>",
    "<|notimestamps|>",
]
WHISPER_EOT = "<|endoftext|>"


def build_whisper_tokenizer(files: Sequence[str], vocab_size: int):
    """A WhisperTokenizer whose byte-level BPE is trained on the files, with Whisper's special tokens appended."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import WhisperTokenizer
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[WHISPER_EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(iter_texts(files), trainer=trainer)
    bpe = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in bpe["merges"]]
    tokenizer = WhisperTokenizer(vocab=bpe["vocab"], merges=merges)
    specials = ["<|startoftranscript|>", *(f"<|{code}|>" for code in LANGUAGES), *WHISPER_TASK_TOKENS]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    tokenizer.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
    return tokenizer


def build_whisper(model_config: dict, tokenizer, seed: int):
    """(randomly initialised WhisperForConditionalGeneration, WhisperProcessor) of the tokenizer's vocabulary,
    with a generation config that `generate(language=..., task=..., return_timestamps=...)` accepts."""
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    ids = tokenizer.convert_tokens_to_ids
    eot, sot = ids(WHISPER_EOT), ids("<|startoftranscript|>")
    # never generated: the prompt's own tokens (so a random model writes text, not an empty transcript), and every
    # timestamp but <|0.00|>: a random model has no sense of time, and its arbitrary tiny timestamps would make
    # long-form decoding advance 20 ms per generate() pass; with <|0.00|> alone it moves one window per pass
    first_ts = ids("<|0.00|>")
    never = [
        sot,
        *(ids(f"<|{code}|>") for code in LANGUAGES),
        *(ids(t) for t in WHISPER_TASK_TOKENS[:-1]),
        *range(first_ts + 1, len(tokenizer)),
    ]
    values = {k: v for k, v in model_config.items() if k != "model_type"}
    config = WhisperConfig(
        **{
            **values,
            "vocab_size": len(tokenizer),
            "pad_token_id": eot,
            "bos_token_id": eot,
            "eos_token_id": eot,
            "decoder_start_token_id": sot,
        }
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    with torch.no_grad():  # timestamp logits 0 (tied output): a random model writes text, timestamps long-form only
        model.get_output_embeddings().weight[first_ts:] = 0
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot,
        eos_token_id=eot,
        pad_token_id=eot,
        bos_token_id=eot,
        is_multilingual=True,
        lang_to_id={f"<|{code}|>": ids(f"<|{code}|>") for code in LANGUAGES},
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"),
        prev_sot_token_id=ids("<|startofprev|>"),
        max_initial_timestamp_index=50,
        suppress_tokens=never,
        begin_suppress_tokens=[eot],
        max_length=config.max_target_positions,
    )
    extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    return model, WhisperProcessor(feature_extractor=extractor, tokenizer=tokenizer)
