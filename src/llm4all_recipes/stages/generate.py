"""A teacher writes a target column for a dataset: the data of sequence-level distillation.

    llm4all generate --config recipes/tiny-llama/generate/meeting-summaries.yaml

For every row of `dataset` (each split), the teacher answers a French instruction (`prompt`, rendered from the
row's `input_column`) with its chat template: batched, left-padded `generate` with the KV cache, greedy or
sampled. Inputs longer than the teacher's context are summarised map-reduce (`chunk_prompt` per token-bounded
chunk, then `merge_prompt`) or counted and left out. Rows are written in shard files as they are finished (a
shard is renamed into place only when whole), so a rerun of the same recipe continues at the first unfinished
shard. Then filters (empty, truncated, length, not French, missing fields, duplicates: every count in the card),
and a dataset whose rows carry the answer, a `messages` column (instruction -> answer, for `sft`) and their
provenance (teacher, revision, prompt and its sha256, sampling, seed).
"""

import hashlib
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path

from ..configs import GenerateRecipe
from ..data.language import looks_french
from ..data.meetings import chunk_lines, load_table
from ..data.templates import prompt_source, render_prompt_source
from ..errors import RecipeError
from ..models import load_model, load_tokenizer, resolve_device
from ..outputs import finish_dataset, staged_output

logger = logging.getLogger(__name__)


def teacher_context(recipe: GenerateRecipe) -> int:
    """The teacher's context from its config (no weights loaded)."""
    from transformers import AutoConfig

    from ..paths import local_hub_copy

    config = AutoConfig.from_pretrained(local_hub_copy(recipe.model_name_or_path), revision=recipe.model_revision)
    return getattr(config, "max_position_embeddings", None) or 2048


def load_rows(recipe: GenerateRecipe) -> dict[str, list[dict]]:
    """{split: rows} of the input dataset, checked for the input column (before any model loads)."""
    loaded = load_table(recipe.dataset, key="dataset", what="the input dataset")
    splits = recipe.splits or list(loaded)
    missing = [s for s in splits if s not in loaded]
    if missing:
        raise RecipeError(f"{recipe.dataset} has no split {missing} (splits: {', '.join(loaded)})", key="splits")
    rows = {s: loaded[s] for s in splits}
    if not any(rows.values()):
        raise RecipeError(f"{recipe.dataset} has no row", key="dataset")
    first = next(r[0] for r in rows.values() if r)
    if recipe.input_column not in first:
        raise RecipeError(
            f"{recipe.dataset} has no column '{recipe.input_column}' (columns: {', '.join(first)})",
            key="input_column",
        )
    history = first[recipe.input_column]
    is_chat = isinstance(history, list) and all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in history)
    if recipe.prompt is None and not is_chat:
        raise RecipeError(
            f"prompt: null writes next turns: '{recipe.input_column}' must hold chat histories "
            "([{role, content}, ...])",
            key="input_column",
        )
    return rows


def provenance(recipe: GenerateRecipe) -> dict:
    """What produced every answer: recorded per row and in the card."""
    prompts = {k: getattr(recipe, k) for k in ("prompt", "system_prompt", "chunk_prompt", "merge_prompt")}
    sha = hashlib.sha256()
    for key, value in prompts.items():
        if value:
            sha.update(f"{key}\0{prompt_source(value)[1]}\0".encode())
    sampling = {"do_sample": recipe.do_sample, "max_new_tokens": recipe.max_new_tokens}
    if recipe.do_sample:
        sampling.update(temperature=recipe.temperature, top_p=recipe.top_p)
    return {
        "teacher": recipe.model_name_or_path,
        "teacher_revision": recipe.model_revision,
        "prompts": {k: v for k, v in prompts.items() if v},
        "prompts_sha256": sha.hexdigest(),
        "sampling": sampling,
        "seed": recipe.seed,
        "machine_generated": True,
    }


class Teacher:
    """Batched chat generation, one seed per batch (reruns give the same answers): transformers' `generate` (left
    padding, KV cache), or vLLM's `LLM.generate` on the same token ids (`engine: vllm`)."""

    def __init__(self, recipe: GenerateRecipe, model, tokenizer, context: int):
        self.recipe, self.model, self.tokenizer, self.context = recipe, model, tokenizer, context
        self.new_tokens = 0
        system = render_prompt_source(recipe.system_prompt) if recipe.system_prompt else None
        self.system = [{"role": "system", "content": system}] if system else []

    def messages(self, instruction: str | list[dict]) -> list[dict]:
        return chat(self.system, instruction)

    def prompt_tokens(self, instruction: str) -> int:
        return len(
            self.tokenizer.apply_chat_template(
                self.messages(instruction), add_generation_prompt=True, return_dict=True
            )["input_ids"]
        )

    def fits(self, instruction: str) -> bool:
        return self.prompt_tokens(instruction) + self.recipe.max_new_tokens <= self.context

    def answer(self, instructions: list[str], seed: int) -> list[tuple[str, bool]]:
        """(text, truncated) per instruction."""
        import torch
        from transformers import set_seed

        r, tok = self.recipe, self.tokenizer
        texts = [
            tok.apply_chat_template(self.messages(i), add_generation_prompt=True, tokenize=False) for i in instructions
        ]
        if r.engine == "vllm":
            return self._answer_vllm(texts, seed)
        batch = tok(texts, padding=True, add_special_tokens=False, return_tensors="pt")
        batch = batch.to(next(self.model.parameters()).device)
        set_seed(seed)
        sampling = (
            {"do_sample": True, "temperature": r.temperature, "top_p": r.top_p} if r.do_sample else {"do_sample": False}
        )
        with torch.no_grad():
            out = self.model.generate(
                **batch, max_new_tokens=r.max_new_tokens, pad_token_id=tok.pad_token_id, use_cache=True, **sampling
            )
        new = out[:, batch["input_ids"].shape[1] :]
        stops = {
            tok.eos_token_id,
            *(
                [self.model.generation_config.eos_token_id]
                if isinstance(self.model.generation_config.eos_token_id, int)
                else self.model.generation_config.eos_token_id or []
            ),
        }
        results = []
        for row in new.tolist():
            ended = next((i for i, t in enumerate(row) if t in stops), None)
            kept = row if ended is None else row[:ended]
            self.new_tokens += len(kept)
            results.append((tok.decode(kept, skip_special_tokens=True).strip(), ended is None))
        return results

    def _answer_vllm(self, texts: list[str], seed: int) -> list[tuple[str, bool]]:
        from vllm import SamplingParams

        r = self.recipe
        params = SamplingParams(
            n=1,
            max_tokens=r.max_new_tokens,
            seed=seed,
            temperature=r.temperature if r.do_sample else 0.0,
            top_p=r.top_p if r.do_sample else 1.0,
        )
        # the token ids of the transformers path (the chat template already holds any BOS): same prompts, both engines
        prompts = [{"prompt_token_ids": self.tokenizer(t, add_special_tokens=False)["input_ids"]} for t in texts]
        results = []
        for out in self.model.generate(prompts, params, use_tqdm=False):
            best = out.outputs[0]
            self.new_tokens += len(best.token_ids)
            results.append((best.text.strip(), best.finish_reason == "length"))
        return results


def load_teacher(recipe: GenerateRecipe, context: int):
    """The teacher model: transformers on the best device, or a vLLM engine."""
    if recipe.engine == "vllm":
        from vllm import LLM

        return LLM(
            model=recipe.model_name_or_path,
            tokenizer=recipe.model_name_or_path,
            revision=recipe.model_revision,
            dtype=recipe.dtype,
            seed=recipe.seed,
            max_model_len=context,
        )
    model = load_model(
        recipe.model_name_or_path,
        dtype=recipe.dtype,
        revision=recipe.model_revision,
        attn_implementation=recipe.attn_implementation,
    )
    return model.to(resolve_device("auto")).eval()


def chat(system: list[dict], instruction: str | list[dict]) -> list[dict]:
    """The teacher's input: system message + instruction, or (next-turn mode) the chat history as it is, the
    system message first when the history has none."""
    if isinstance(instruction, list):
        has_system = bool(instruction) and instruction[0]["role"] == "system"
        return [*([] if has_system else system), *instruction]
    return [*system, {"role": "user", "content": instruction}]


def instruction(recipe: GenerateRecipe, row: dict) -> str | list[dict]:
    if recipe.prompt is None:  # next-turn mode: the history is the input
        return [{"role": m["role"], "content": m["content"]} for m in row[recipe.input_column]]
    return render_prompt_source(recipe.prompt, **{recipe.input_column: row[recipe.input_column]})


def map_reduce(recipe: GenerateRecipe, teacher: Teacher, text: str, seed: int) -> tuple[str, bool] | None:
    """Answer for an input too long for the context: one answer per chunk, then one merging them (None: no
    map-reduce prompts, or a chunk that still does not fit)."""
    if not recipe.chunk_prompt:
        return None

    def count(t: str) -> int:
        return len(teacher.tokenizer(t, add_special_tokens=False)["input_ids"])

    chunks = chunk_lines(text.splitlines(), count, recipe.chunk_tokens, recipe.chunk_overlap)
    prompts = [
        render_prompt_source(recipe.chunk_prompt, **{recipe.input_column: c}, index=i, total=len(chunks))
        for i, c in enumerate(chunks, 1)
    ]
    if not all(teacher.fits(p) for p in prompts):
        return None
    partial = []
    for start in range(0, len(prompts), recipe.batch_size):
        partial += [a for a, _ in teacher.answer(prompts[start : start + recipe.batch_size], seed + start)]
    merge = render_prompt_source(recipe.merge_prompt, summaries=partial)
    return teacher.answer([merge], seed)[0] if teacher.fits(merge) else None


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:05d}.jsonl"


def write_shard(folder: Path, index: int, rows: list[dict]) -> None:
    """Rows of one shard, renamed into place only when whole (a `.part` file is never read back)."""
    part = folder / f"shard-{index:05d}.jsonl.part"
    with open(part, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, shard_path(folder, index))


def read_shard(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def generate_shards(
    recipe: GenerateRecipe, teacher: Teacher, items: list[tuple[str, dict]], folder: Path, facts: dict
) -> list[dict]:
    """Answer every item, shard by shard, skipping the shards a previous run finished; all the answered rows."""
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.part"):
        stale.unlink()
    n_shards = (len(items) + recipe.shard_size - 1) // recipe.shard_size
    done = {i for i in range(n_shards) if shard_path(folder, i).is_file()}
    if done:
        logger.info("generate: %d of %d shards already written, resuming", len(done), n_shards)
    bar = tqdm(total=len(items), desc=f"generate ({recipe.output_column})", unit="row")
    bar.update(sum(min(recipe.shard_size, len(items) - i * recipe.shard_size) for i in done))
    start = time.perf_counter()
    for s in range(n_shards):
        if s in done:
            continue
        first = s * recipe.shard_size
        shard, direct = [], []
        for k, (split, row) in enumerate(items[first : first + recipe.shard_size], first):
            entry = {
                "split": split,
                "index": k,
                "row": row,
                "answer": None,
                "truncated": False,
                "how": "direct",
            }
            existing = row.get(recipe.output_column)
            if recipe.keep_existing and isinstance(existing, str) and existing.strip():  # a human target: kept
                entry.update(answer=existing, how="source")
            else:
                text = instruction(recipe, row)
                entry["instruction"] = text
                if teacher.fits(text):
                    direct.append(entry)
                else:
                    result = map_reduce(recipe, teacher, str(row[recipe.input_column]), recipe.seed + k)
                    entry["how"] = "map-reduce" if result else "too long"
                    if result:
                        entry["answer"], entry["truncated"] = result
            shard.append(entry)
        for b in range(0, len(direct), recipe.batch_size):
            batch = direct[b : b + recipe.batch_size]
            for entry, (answer, truncated) in zip(
                batch,
                teacher.answer([e["instruction"] for e in batch], recipe.seed + batch[0]["index"]),
                strict=True,
            ):
                entry["answer"], entry["truncated"] = answer, truncated
        write_shard(folder, s, shard)
        bar.update(len(shard))
        bar.set_postfix(tokens_per_s=f"{teacher.new_tokens / max(time.perf_counter() - start, 1e-9):.1f}")
    bar.close()
    facts["seconds"] = round(time.perf_counter() - start, 1)
    facts["new_tokens"] = teacher.new_tokens
    facts["tokens_per_s"] = round(teacher.new_tokens / max(facts["seconds"], 1e-9), 1)
    return [e for i in range(n_shards) for e in read_shard(shard_path(folder, i))]


def keep(recipe: GenerateRecipe, entries: list[dict]) -> tuple[list[dict], Counter]:
    """The filters, in order; counts of what each removed."""
    dropped, seen, kept = Counter(), set(), []
    for e in entries:
        answer = (e["answer"] or "").strip()
        words = len(answer.split())
        reason = None
        if e["how"] == "too long":
            reason = "input too long"
        elif not answer:
            reason = "empty"
        elif e["truncated"] and recipe.drop_truncated:
            reason = "truncated"
        elif words < recipe.min_words or (recipe.max_words and words > recipe.max_words):
            reason = "length"
        elif recipe.french_only and e["how"] != "source" and not looks_french(answer):
            reason = "not French"
        elif any(field.lower() not in answer.lower() for field in recipe.required_fields):
            reason = "missing fields"
        elif recipe.dedup and " ".join(answer.split()).lower() in seen:
            reason = "duplicate"
        if reason:
            dropped[reason] += 1
            continue
        seen.add(" ".join(answer.split()).lower())
        kept.append(e)
    return kept, dropped


def run(recipe: GenerateRecipe, callbacks=None):
    import datasets

    # 1. Data, prompts and the teacher's tokenizer (chat template) are checked before the teacher loads.
    splits = load_rows(recipe)
    items = [(split, row) for split, rows in splits.items() for row in rows]
    tokenizer = load_tokenizer(recipe.model_name_or_path, recipe.model_revision)
    if not tokenizer.chat_template:
        raise RecipeError(
            f"{recipe.model_name_or_path} has no chat template: the prompts are chat messages (use an "
            "instruct teacher, or one whose tokenizer_config.json has a chat_template)",
            key="model_name_or_path",
        )
    tokenizer.padding_side = "left"
    context = recipe.context_length or teacher_context(recipe)
    facts = {"rows": len(items), "splits": {s: len(r) for s, r in splits.items()}, "provenance": provenance(recipe)}
    if recipe.dry_run:
        print(json.dumps(facts, indent=2, ensure_ascii=False))
        return facts

    with staged_output(recipe, "generate", resume=True) as tmp:
        # 2. Answers, shard by shard (resumable).
        teacher = Teacher(recipe, load_teacher(recipe, context), tokenizer, context)
        entries = generate_shards(recipe, teacher, items, tmp / "shards", facts)

        # 3. Filters, then the dataset: the input columns + the answer + messages + provenance.
        kept, dropped = keep(recipe, entries)
        facts.update(
            generated=sum(e["how"] in ("direct", "map-reduce") for e in entries),
            from_source=sum(e["how"] == "source" for e in entries),
            map_reduce=sum(e["how"] == "map-reduce" for e in entries),
            truncated=sum(bool(e["truncated"]) for e in entries),
            dropped=dict(dropped),
            kept=len(kept),
        )
        by_split = answer_rows(recipe, kept, splits, facts["provenance"])
        facts["splits"] = {s: len(rows) for s, rows in by_split.items()}
        if not kept:
            raise RecipeError(f"every answer was filtered out ({dict(dropped)}): see the filters", key="prompt")
        table = datasets.DatasetDict({s: datasets.Dataset.from_list(rows) for s, rows in by_split.items() if rows})
        table.save_to_disk(str(tmp))
        for shard in (tmp / "shards").glob("*.jsonl"):  # this run's work files: the dataset now holds the rows
            shard.unlink()
        (tmp / "shards").rmdir()
        finish_dataset(
            tmp,
            stage="generate",
            recipe=recipe,
            dataset=table,
            report=facts,
            facts=card_facts(recipe, facts),
            card_report={**facts, "skipped": dict(dropped)},
            source=recipe.dataset,
        )
    return facts


def answer_rows(recipe: GenerateRecipe, kept: list[dict], splits: dict, provenance: dict) -> dict[str, list[dict]]:
    """{split: rows}: each kept row's input columns + the answer + the chat it makes + its provenance."""
    system = [{"role": "system", "content": render_prompt_source(recipe.system_prompt)}] if recipe.system_prompt else []
    origin = json.dumps(provenance, ensure_ascii=False, sort_keys=True)
    by_split: dict[str, list[dict]] = {s: [] for s in splits}
    for e in kept:
        text = e.get("instruction") or instruction(recipe, e["row"])
        by_split[e["split"]].append(
            {
                **e["row"],
                recipe.output_column: e["answer"],
                "messages": [*chat(system, text), {"role": "assistant", "content": e["answer"]}],
                "provenance": origin if e["how"] != "source" else json.dumps({"machine_generated": False}),
            }
        )
    return by_split


def card_facts(recipe: GenerateRecipe, facts: dict) -> dict:
    p = facts["provenance"]
    sampling = ", ".join(f"{k}={v}" for k, v in p["sampling"].items())
    dropped = ", ".join(f"{k}: {v}" for k, v in facts["dropped"].items()) or "none"
    return {
        "summary": f"**Machine-generated targets.** `{recipe.output_column}` was written by the teacher "
        f"`{p['teacher']}` (revision {p['teacher_revision'] or 'main'}) for {facts['kept']} rows of "
        f"`{recipe.dataset}`: it is a model's output, not a human reference; read it as such.",
        "steps": [
            (
                f"Instruction: `{recipe.prompt}` rendered from the `{recipe.input_column}` column"
                if recipe.prompt
                else f"Input: the chat history in `{recipe.input_column}`; the teacher writes the next assistant turn"
            )
            + (f", system message `{recipe.system_prompt}`" if recipe.system_prompt else "")
            + f", through the teacher's chat template; prompts sha256 `{p['prompts_sha256']}`.",
            f"Decoding: {sampling}; seed {p['seed']} (+ the row index, per batch); batches of {recipe.batch_size}, "
            f"left padding, KV cache; {facts['new_tokens']:,} tokens in {facts['seconds']} s "
            f"({facts['tokens_per_s']} tokens/s).",
            f"Inputs longer than the context: {facts['map_reduce']} summarised map-reduce"
            + (
                f" (`{recipe.chunk_prompt}` per chunk of ≤ {recipe.chunk_tokens} tokens, then `{recipe.merge_prompt}`)"
                if recipe.chunk_prompt
                else " (no map-reduce prompts: long inputs left out)"
            )
            + ".",
            f"Rows that already had a `{recipe.output_column}`: {facts['from_source']} (kept as they are).",
            f"Filters: empty, truncated at {recipe.max_new_tokens} tokens"
            + (" (dropped)" if recipe.drop_truncated else " (kept)")
            + f", fewer than {recipe.min_words} words"
            + (f" or more than {recipe.max_words}" if recipe.max_words else "")
            + (", not French" if recipe.french_only else "")
            + (f", missing {', '.join(recipe.required_fields)}" if recipe.required_fields else "")
            + (", exact duplicates" if recipe.dedup else "")
            + f". Removed: {dropped}; kept {facts['kept']} of "
            f"{facts['rows']}.",
        ],
        "columns": {
            recipe.output_column: "the teacher's answer (machine-generated)",
            "messages": "chat: instruction -> answer, for `llm4all sft` (sequence-level distillation)",
            "provenance": "JSON: teacher, revision, prompts and their sha256, sampling, seed",
            "...": f"the input columns of `{recipe.dataset}`",
        },
        "license": recipe.license,
        "task_categories": ["summarization", "text-generation"],
        "note": "the targets are machine-generated by the teacher named above",
    }
