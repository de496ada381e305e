"""Fixed-length rows of the training text of every stage (pretraining-style packing), and of chats.

Text: one token stream cut into blocks of `max_length`, every token trained; each document opens and ends as
in pretraining (`models.document_boundaries`: the tokenizer's own BOS if it adds one, and the end-of-text token,
not an instruct tokenizer's end of turn); the last incomplete block is dropped and counted. Messages: one chat
per row (chat template), assistant tokens trained, padded to `max_length` (longer chats are truncated and
counted).
"""

from collections.abc import Iterable
from typing import Any

import torch

from ..models import document_boundaries


def pack_text(texts: list[str], tokenizer, max_length: int) -> tuple[list[list[int]], int]:
    """(blocks of max_length token ids, number of tail tokens dropped)."""
    opening, end = document_boundaries(tokenizer)
    stream: list[int] = []
    for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]:
        stream.extend([*opening, *ids, *([] if end is None else [end])])
    blocks = len(stream) // max_length
    return [stream[b * max_length : (b + 1) * max_length] for b in range(blocks)], len(stream) - blocks * max_length


def text_rows(texts: list[str], tokenizer, max_length: int, **extra: Any) -> tuple[list[dict], int]:
    blocks, dropped = pack_text(texts, tokenizer, max_length)
    rows = [{"input_ids": b, "attention_mask": [1] * max_length, "labels": list(b), **extra} for b in blocks]
    return rows, dropped


def chat_rows(conversations: list[list[dict]], tokenizer, max_length: int) -> tuple[list[dict], int]:
    """(rows, number of truncated chats)."""
    pad, rows, truncated = tokenizer.pad_token_id, [], 0
    for messages in conversations:
        out = tokenizer.apply_chat_template(messages, return_dict=True, return_assistant_tokens_mask=True)
        ids, mask = out["input_ids"], out["assistant_masks"]
        truncated += len(ids) > max_length
        ids, mask = ids[:max_length], mask[:max_length]
        n = len(ids)
        rows.append(
            {
                "input_ids": ids + [pad] * (max_length - n),
                "attention_mask": [1] * n + [0] * (max_length - n),
                "labels": [t if m else -100 for t, m in zip(ids, mask)] + [-100] * (max_length - n),
            }
        )
    return rows, truncated


class StackCollator:
    """Batches fixed-length rows: stacks the given integer columns as tensors, cut after the batch's last
    attended position (right-padded chats do not pay for the padding every row carries)."""

    def __init__(self, keys: tuple[str, ...] = ("input_ids", "attention_mask", "labels")):
        self.keys = keys

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {k: torch.tensor([f[k] for f in features]) for k in self.keys if k in features[0]}
        if "attention_mask" in batch:
            width = int(batch["attention_mask"].sum(1).max())
            batch = {k: v[:, :width] for k, v in batch.items()}
        return batch


def corpus_ids(tokenizer, texts: Iterable[str]) -> list[int]:
    """One token stream of documents, each followed by EOS (perplexity and calibration windows)."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        if eos is not None:
            ids.append(eos)
    return ids
