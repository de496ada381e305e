"""Typed dataset mixtures: one format for every stage.

A mixture is a list of `DatasetSource` (path, name, split, columns, weight, repeat). Each source is
loaded (Hub id, `save_to_disk` folder, Hub parquet-layout folder, or a json/jsonl/parquet/csv file),
reduced to the stage's columns, shuffled with the seed, then subsampled to its share of the total:

    share_i = weight_i / sum(weights)          (of rows for chat stages, of tokens for text stages)
    total   = mixture_size, or min_i(size_i / share_i)  (the largest total needing no repetition)

A source smaller than its share is an error unless it says `repeat: true`. Eval sets are loaded whole.
What was taken from each source is returned as a report (never drop data silently).
"""

import csv
import json
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..errors import RecipeError
from ..fields import DatasetSource
from ..paths import check_path, is_hub_id, local_hub_copy

logger = logging.getLogger(__name__)

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}


# --------------------------------------------------------------------------- static checks (validate)
def peek_columns(src: DatasetSource, key: str) -> set[str] | None:
    """Column names of a local source read from its first record or schema; None when unknown (Hub id)."""
    path = Path(src.path)
    if not path.exists():
        return None
    if path.is_file():
        if src.split != "train":
            raise RecipeError(f"a single file has only the 'train' split (got '{src.split}')", key=f"{key}.split")
        return _file_columns(path, key)
    if (path / "dataset_dict.json").exists():  # DatasetDict.save_to_disk
        splits = _read_json(path / "dataset_dict.json", key).get("splits", [])
        if src.split not in splits:
            raise RecipeError(f"{path} has no split '{src.split}' (splits: {', '.join(splits)})", key=f"{key}.split")
        return _saved_columns(path / src.split, key)
    if (path / "state.json").exists():  # Dataset.save_to_disk: one split
        return _saved_columns(path, key)
    files = sorted(p for p in path.rglob("*.parquet") if src.split in p.name or src.split in p.parent.name)
    if files:
        return _file_columns(files[0], key)
    return None


def _saved_columns(folder: Path, key: str) -> set[str]:
    return set(_read_json(folder / "dataset_info.json", key).get("features") or {})


def _read_json(path: Path, key: str) -> dict:
    """A saved dataset's JSON metadata; unreadable or corrupt: one line naming the file."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecipeError(
            f"{path} is unreadable or not JSON ({exc}): rebuild or re-download the dataset", key=f"{key}.path"
        ) from None
    if not isinstance(value, dict):
        raise RecipeError(f"{path} is not a JSON object: rebuild or re-download the dataset", key=f"{key}.path")
    return value


def _file_columns(path: Path, key: str) -> set[str]:
    try:
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return set(pq.read_schema(path).names)
        if path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                return set(next(csv.reader(f), []))
        with open(path, encoding="utf-8") as f:
            head = f.read(1)
            f.seek(0)
            if head == "[":
                rows = json.load(f)
                return set(rows[0]) if rows else set()
            for lineno, line in enumerate(f, 1):
                if line.strip():
                    try:
                        return set(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise RecipeError(f"{path}:{lineno}: invalid JSON ({exc.msg})", key=f"{key}.path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"cannot read {path}: {exc}", key=f"{key}.path") from None
    raise RecipeError(f"{path} is empty", key=f"{key}.path")


def _renames(src: DatasetSource, needed: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """(renames, kept columns after renaming) for a source."""
    if isinstance(src.columns, dict):
        return dict(src.columns), list(src.columns.values())
    if isinstance(src.columns, list):
        return {}, list(src.columns)
    return {}, list(needed)


def check_sources(sources: Sequence[DatasetSource], key: str, needed: Sequence[str], static: bool) -> None:
    """Paths, weights, splits and the stage's columns of every source, without loading data."""
    for i, src in enumerate(sources):
        k = f"{key}[{i}]"
        check_path(src.path, f"{k}.path", static, hub_ok=True)
        if not src.weight > 0:
            raise RecipeError(f"must be > 0 (got {src.weight})", key=f"{k}.weight")
        if src.streaming and not src.max_rows:
            raise RecipeError("a streamed source needs max_rows (how much of the stream to read)", key=f"{k}.max_rows")
        if src.max_rows is not None and src.max_rows <= 0:
            raise RecipeError(f"must be > 0 (got {src.max_rows})", key=f"{k}.max_rows")
        renames, kept = _renames(src, needed)
        missing = [c for c in needed if c not in kept]
        if missing:
            raise RecipeError(f"the stage needs column(s) {missing}; `columns` does not keep them", key=f"{k}.columns")
        available = peek_columns(src, k)
        if available is not None:
            wanted = list(renames) or kept
            absent = [c for c in wanted if c not in available]
            if absent:
                raise RecipeError(
                    f"{src.path} has no column {absent} (it has: {', '.join(sorted(available))}); "
                    f"rename one with `columns: {{<name>: {absent[0]}}}`",
                    key=f"{k}.columns",
                )


# --------------------------------------------------------------------------- loading
def load_source(src: DatasetSource, key: str, needed: Sequence[str], seed: int = 0):
    """Load one source as a `datasets.Dataset` restricted to its kept columns (at most `max_rows` rows)."""
    import datasets

    path = Path(local_hub_copy(src.path, "dataset"))
    try:
        if src.streaming:
            if path.is_file():
                stream = datasets.load_dataset(
                    FILE_BUILDERS[path.suffix], data_files=str(path), split="train", streaming=True
                )
            else:
                stream = datasets.load_dataset(str(path), src.name, split=src.split, streaming=True)
            stream = stream.shuffle(seed=seed, buffer_size=10_000).take(src.max_rows)
            ds = datasets.Dataset.from_list(list(stream))
        elif path.is_file():
            builder = FILE_BUILDERS.get(path.suffix)
            if builder is None:
                raise RecipeError(
                    f"unsupported file type {path.suffix} (use {', '.join(FILE_BUILDERS)})", key=f"{key}.path"
                )
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        elif path.is_dir() and ((path / "dataset_dict.json").exists() or (path / "state.json").exists()):
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if src.split not in ds:
                    raise RecipeError(
                        f"{path} has no split '{src.split}' (splits: {', '.join(ds)})", key=f"{key}.split"
                    )
                ds = ds[src.split]
        else:  # a Hub repo, or its copy in the local hub folder (the Hub's parquet layout)
            ds = datasets.load_dataset(str(path), src.name, split=src.split)
    except RecipeError:
        raise
    except Exception as exc:  # datasets raises many types; the user needs the source and the reason
        if path.is_file() and FILE_BUILDERS.get(path.suffix) == "json" and (bad := first_bad_json_line(path)):
            raise RecipeError(f"{path}:{bad[0]}: invalid JSON ({bad[1]})", key=f"{key}.path") from None
        where = "local" if path.exists() else ("Hub" if is_hub_id(src.path) else "local")
        raise RecipeError(f"cannot load {where} dataset {src.path}: {exc}".strip(), key=f"{key}.path") from None
    renames, kept = _renames(src, needed)
    absent = [c for c in (list(renames) or kept) if c not in ds.column_names]
    if absent:
        raise RecipeError(
            f"{src.path} has no column {absent} (it has: {', '.join(ds.column_names)})", key=f"{key}.columns"
        )
    if renames:
        ds = ds.rename_columns(renames)
    ds = ds.select_columns(kept)
    check_column_types(ds, src.path, key)
    if src.max_rows is not None and len(ds) > src.max_rows:
        ds = ds.shuffle(seed=seed).select(range(src.max_rows))
    return ds


def first_bad_json_line(path: Path) -> tuple[int, str] | None:
    """(line number, reason) of the first line of a jsonl file that is not a JSON object, or None."""
    if path.suffix == ".json":
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                return lineno, f"{exc.msg}, column {exc.colno}"
            if not isinstance(row, dict):
                return lineno, f"a {type(row).__name__}, not an object"
    return None


def check_column_types(ds, source: str, key: str) -> None:
    """The stage columns hold what the stages read: `text` strings, `messages` lists of {role, content}."""
    from datasets import LargeList, List, Value

    feature = ds.features.get("text")
    if feature is not None and not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
        raise RecipeError(f"column 'text' of {source} holds {feature}, not strings", key=f"{key}.path")
    if feature is not None and (nulls := ds.data.column("text").null_count):
        first = _first_true(ds.data.column("text").is_null())
        raise RecipeError(
            f"row {first + 1} of {source} has no text (missing or null; {nulls} such rows)", key=f"{key}.path"
        )
    feature = ds.features.get("messages")
    if feature is not None and not isinstance(feature, List | LargeList | list):
        raise RecipeError(f"column 'messages' of {source} holds {feature}, not lists of messages", key=f"{key}.path")
    if feature is not None:
        check_messages(ds, source, key)


ROLES = ("system", "user", "assistant", "tool")


def check_messages(ds, source: str, key: str) -> None:
    """Every message is a {role, content} mapping with a known role and text content (the chat templates read
    both; a missing one used to surface as a jinja2 error deep in tokenization)."""
    for row, conversation in enumerate(ds["messages"], 1):
        for i, message in enumerate(conversation or [], 1):
            role = message.get("role") if isinstance(message, dict) else None
            if role not in ROLES:
                raise RecipeError(
                    f"row {row} of {source}: message {i} has role {role!r}, not one of {', '.join(ROLES)}",
                    key=f"{key}.path",
                )
            if not isinstance(message.get("content"), str):
                raise RecipeError(
                    f"row {row} of {source}: message {i} ({role}) has no text content "
                    f"(content: {message.get('content')!r})",
                    key=f"{key}.path",
                )


def _first_true(mask) -> int:
    import pyarrow.compute as pc

    return pc.index(mask, True).as_py()


def build_mixture(
    sources: Sequence[DatasetSource],
    *,
    needed: Sequence[str],
    seed: int,
    size: int | None = None,
    count_tokens: Callable[[Any], list[int]] | None = None,
    key: str = "datasets",
):
    """Mix sources by weight; returns (dataset, report). Weights count tokens when `count_tokens` is given."""
    import datasets

    unit = "tokens" if count_tokens is not None else "rows"
    loaded, sizes, lengths = [], [], []
    for i, src in enumerate(sources):
        ds = load_source(src, f"{key}[{i}]", needed, seed).shuffle(seed=seed)
        if len(ds) == 0:
            raise RecipeError(f"{src.path} (split {src.split}) is empty", key=f"{key}[{i}]")
        lens = count_tokens(ds) if count_tokens else [1] * len(ds)
        loaded.append(ds)
        lengths.append(lens)
        sizes.append(sum(lens))
    weights = [s.weight / sum(s.weight for s in sources) for s in sources]
    total = size if size is not None else min(n / w for n, w in zip(sizes, weights))
    parts, report = [], []
    for i, (src, ds, lens, n, w) in enumerate(zip(sources, loaded, lengths, sizes, weights)):
        target = max(1, math.floor(w * total + 1e-9))
        copies = 1
        if n < target:
            if not src.repeat:
                raise RecipeError(
                    f"{src.path} has {n} {unit} but its share ({w:.1%} of {int(total)}) needs {target}; "
                    "add `repeat: true`, lower its weight or lower mixture_size",
                    key=f"{key}[{i}]",
                )
            copies = math.ceil(target / n)
            ds = datasets.concatenate_datasets([ds] + [ds.shuffle(seed=seed + c) for c in range(1, copies)])
            lens = lens * copies
        taken, acc = 0, 0
        while taken < len(lens) and acc < target:
            acc += lens[taken]
            taken += 1
        parts.append(ds.select(range(taken)))
        report.append(
            {
                "source": src.path,
                "split": src.split,
                "available_" + unit: n,
                "used_" + unit: acc,
                "available_rows": len(lens) // copies,
                "used_rows": taken,
                "repeated": copies > 1,
                "share": None,
            }
        )
    used = sum(r["used_" + unit] for r in report)
    for r in report:
        r["share"] = round(r["used_" + unit] / used, 4)
    for r in report:
        logger.info(
            "mixture: %s[%s] %d/%d %s (share %.1f%%)%s",
            r["source"],
            r["split"],
            r["used_" + unit],
            r["available_" + unit],
            unit,
            100 * r["share"],
            " repeated" if r["repeated"] else "",
        )
    mixed = datasets.concatenate_datasets(parts).shuffle(seed=seed) if len(parts) > 1 else parts[0]
    return mixed, report


def load_eval_sets(sources: Sequence[DatasetSource], *, needed: Sequence[str], key: str = "eval_datasets") -> dict:
    """Each eval source whole, by label (file stem, or stem_split)."""
    out = {}
    for i, src in enumerate(sources):
        label = src.tag
        if label in out:
            label = f"{label}_{i}"
        ds = load_source(src, f"{key}[{i}]", needed)
        if len(ds) == 0:
            raise RecipeError(f"{src.path} (split {src.split}) is empty", key=f"{key}[{i}]")
        out[label] = ds
    return out


def text_token_counter(tokenizer, column: str = "text") -> Callable[[Any], list[int]]:
    """Token count of each row of a text column (+1 for the EOS appended when packing)."""

    def count(ds) -> list[int]:
        counted = ds.map(
            lambda batch: {"_n": [len(ids) + 1 for ids in tokenizer(batch[column])["input_ids"]]},
            batched=True,
            remove_columns=ds.column_names,
            desc="Counting tokens",
        )
        return counted["_n"]

    return count


def load_data(recipe: Any, tokenizer=None, *, evals: bool = True):
    """(train dataset, {label: eval dataset}, mixture report) of a recipe's `datasets` / `eval_datasets`
    (`evals=False`: the stage reads its eval sets itself, e.g. kd's held-out text for chat distillation).

    Text stages weight sources by tokens (counted with `tokenizer`), chat stages by rows.
    """
    text = "text" in recipe.COLUMNS
    train, report = build_mixture(
        recipe.datasets,
        needed=recipe.COLUMNS,
        seed=recipe.seed if getattr(recipe, "data_seed", None) is None else recipe.data_seed,
        size=recipe.mixture_size,
        count_tokens=text_token_counter(tokenizer) if text else None,
    )
    held_out = load_eval_sets(recipe.eval_datasets, needed=recipe.COLUMNS) if evals else {}
    return train, held_out, report
