"""Offline teacher: tokenise and pack the data, run the teacher once, keep its top-k log-probs per token.

    llm4all cache-teacher --config recipes/tiny-llama/cache-teacher/base.yaml

Writes `data/` (the packed rows, save_to_disk: input_ids, attention_mask, labels, row), `topk/` (per row shard,
memory-mapped .npy arrays: logprobs (rows, max_length, k) and indices), `fingerprint.json` (data, teacher,
tokenizer, k, temperature), the recipe and a README. `llm4all kd --teacher_cache <this folder>` trains on
exactly these rows, without running the teacher.
"""

import json
import logging
import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..configs import CacheTeacherRecipe, read_chat_template
from ..data.mixture import load_data
from ..data.packing import chat_rows, text_rows
from ..errors import RecipeError
from ..models import load_model, load_tokenizer, resolve_device
from ..outputs import staged_output, write_run_files
from ..paths import write_json
from ..trainers.kd import TeacherCache, data_hash, model_identity, tokenizer_hash

logger = logging.getLogger(__name__)


def pack_rows(dataset, tokenizer, data_format: str, max_length: int):
    """(rows as a Dataset with a `row` index, report of what packing dropped or truncated)."""
    import datasets

    report = {"truncated_rows": 0, "dropped_tail_tokens": 0}
    if data_format == "text":
        rows, report["dropped_tail_tokens"] = text_rows(list(dataset["text"]), tokenizer, max_length)
    else:
        rows, report["truncated_rows"] = chat_rows(list(dataset["messages"]), tokenizer, max_length)
    for i, row in enumerate(rows):
        row["row"] = i
    report["rows"], report["tokens"] = len(rows), sum(sum(r["attention_mask"]) for r in rows)
    return datasets.Dataset.from_list(rows), report


def run(recipe: CacheTeacherRecipe, callbacks=None):
    # 1. Tokeniser, data, packed rows: all before the teacher loads.
    tokenizer = load_tokenizer(recipe.teacher_model_name_or_path, key="teacher_model_name_or_path")
    if recipe.chat_template_path:
        tokenizer.chat_template = read_chat_template(recipe.chat_template_path)
    if recipe.top_k > len(tokenizer):
        raise RecipeError(
            f"{recipe.top_k} is more than the vocabulary ({len(tokenizer)} tokens; the vocabulary size "
            "makes the cache exact)",
            key="top_k",
        )
    train, _, mixture = load_data(recipe, tokenizer)
    rows, report = pack_rows(train, tokenizer, recipe.data_format, recipe.max_length)
    value_bytes = 2 if recipe.cache_dtype == "float16" else 4
    report["cache_bytes"] = len(rows) * recipe.max_length * recipe.top_k * (value_bytes + 4)
    if recipe.dry_run:
        print(
            f"# cache-teacher: {report['rows']} rows x {recipe.max_length} tokens, top-{recipe.top_k}: "
            f"{report['cache_bytes'] / 2**20:.1f} MiB of cache"
        )
        return report

    with staged_output(recipe, "cache-teacher") as tmp:
        # 2. One teacher pass, shard by shard, straight into memory-mapped files.
        teacher = load_model(
            recipe.teacher_model_name_or_path, dtype=recipe.teacher_dtype, key="teacher_model_name_or_path"
        )
        device = resolve_device(recipe.device)
        teacher.to(device).eval()
        vocab = len(tokenizer)
        rows.save_to_disk(str(tmp / TeacherCache.DATA))
        report["mean_topk_mass"] = write_top_k(recipe, teacher, rows, vocab, device, tmp)
        fingerprint = {
            "data": data_hash(rows),
            "teacher": recipe.teacher_model_name_or_path,
            "teacher_identity": model_identity(teacher),
            "tokenizer": tokenizer_hash(tokenizer),
            "top_k": recipe.top_k,
            "temperature": recipe.kd_temperature,
            "max_length": recipe.max_length,
            "data_format": recipe.data_format,
            "rows": len(rows),
            "shard_rows": recipe.shard_rows,
            "cache_dtype": recipe.cache_dtype,
            "vocab_size": vocab,
        }
        write_json(tmp / TeacherCache.FINGERPRINT, fingerprint)
        write_run_files(tmp, stage="cache-teacher", recipe=recipe, metrics={**report, "data": mixture}, parent=None)
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "README.md").write_text(readme(recipe, report, fingerprint), encoding="utf-8")
    logger.info(
        "top-%d holds %.4f of the teacher's probability mass on average", recipe.top_k, report["mean_topk_mass"]
    )
    return report


def write_top_k(recipe: CacheTeacherRecipe, teacher, rows, vocab: int, device: str, tmp) -> float:
    """The teacher's top-k log-probs and token ids of every row, shard by shard into memory-mapped files; returns
    the mean probability mass the top-k hold."""
    dtype = np.float16 if recipe.cache_dtype == "float16" else np.float32
    mass, counted = 0.0, 0
    (tmp / TeacherCache.TOPK).mkdir()
    for shard in range(math.ceil(len(rows) / recipe.shard_rows)):
        start, stop = shard * recipe.shard_rows, min(len(rows), (shard + 1) * recipe.shard_rows)
        shape = (stop - start, recipe.max_length, recipe.top_k)
        lp = np.lib.format.open_memmap(TeacherCache.shard_files(tmp, shard)[0], mode="w+", dtype=dtype, shape=shape)
        ix = np.lib.format.open_memmap(TeacherCache.shard_files(tmp, shard)[1], mode="w+", dtype=np.int32, shape=shape)
        for b in tqdm(range(start, stop, recipe.batch_size), desc=f"teacher shard {shard}"):
            batch = rows[b : min(b + recipe.batch_size, stop)]
            ids = torch.tensor(batch["input_ids"], device=device)
            attention = torch.tensor(batch["attention_mask"], device=device)
            with torch.no_grad():
                logits = teacher(input_ids=ids, attention_mask=attention, use_cache=False).logits[..., :vocab]
            top = F.log_softmax(logits.float() / recipe.kd_temperature, dim=-1).topk(recipe.top_k, dim=-1)
            lp[b - start : b - start + len(ids)] = top.values.cpu().numpy().astype(dtype)
            ix[b - start : b - start + len(ids)] = top.indices.cpu().numpy().astype(np.int32)
            keep = attention.bool()
            mass += float(top.values.exp().sum(-1)[keep].sum())
            counted += int(keep.sum())
        lp.flush()
        ix.flush()
        del lp, ix
    return mass / max(counted, 1)


def readme(recipe: CacheTeacherRecipe, report: dict, fingerprint: dict) -> str:
    return f"""# Teacher cache of `{recipe.teacher_model_name_or_path}`

Top-{recipe.top_k} log-probabilities (temperature {recipe.kd_temperature}, {recipe.cache_dtype}) of every token of
{report["rows"]} rows × {recipe.max_length} tokens ({report["tokens"]} real tokens, {recipe.data_format} data), for
`llm4all kd --teacher_cache <this folder>`. On average the top-{recipe.top_k} tokens hold
{report["mean_topk_mass"]:.4f} of the teacher's probability mass; the rest (the tail) is not distilled.

- `data/`: the packed rows (save_to_disk), used unchanged by the kd stage
- `topk/logprobs-NNNNN.npy`, `topk/indices-NNNNN.npy`: {recipe.shard_rows} rows per shard, memory-mapped
- `fingerprint.json`: what the cache depends on; the kd stage refuses a cache that does not match its
  student tokenizer, teacher or temperature

```json
{json.dumps(fingerprint, indent=2)}
```
"""
