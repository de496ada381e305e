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
