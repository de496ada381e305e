"""Build a French dataset from its source layout: simulated SAMU calls (`medkit/simsamu`) or meetings.

    llm4all build-dataset --config recipes/datasets/simsamu.yaml
    llm4all build-dataset --config recipes/datasets/meetings.yaml

Writes `save_to_disk` + dataset card + recipe + build report into output_dir (through `.tmp`, so bad
input leaves nothing behind), then publishes it when `push_to_hub: true`.
"""

import json
import logging
from pathlib import Path

from ..cards import render_dataset_card
from ..configs import BuildDatasetRecipe
from ..data import meetings, simsamu
from ..data.splits import grouped_splits
from ..errors import RecipeError
from ..hub import publish_stage_output
from ..outputs import staged_output, write_run_files

logger = logging.getLogger(__name__)


def fetch_source(recipe: BuildDatasetRecipe) -> str:
    """A local path as is; a Hub dataset id through snapshot_download (simsamu) or datasets (meetings)."""
    if Path(recipe.source).exists() or recipe.builder == "meetings":
        return recipe.source
    from huggingface_hub import snapshot_download

    ignore = None if recipe.download_audio else ["*.m4a", "*.wav", "*.mp3", "*.flac"]
    try:
        return snapshot_download(recipe.source, repo_type="dataset", ignore_patterns=ignore)
    except Exception as exc:  # offline, unknown repo, no access: say which and stop
        raise RecipeError(f"cannot download the Hub dataset {recipe.source}: {exc}", key="source") from None


def text_splits(source: str) -> tuple[dict[str, list[dict]], dict]:
    """A folder of jsonl files (or one file): one split per file, named after it; every row needs `text`."""
    from ..data.meetings import _read_jsonl

    path = Path(source)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise RecipeError(f"no .jsonl file in {source}", key="source")
    splits = {}
    for file in files:
        rows = _read_jsonl(file)
        for lineno, row in enumerate(rows, 1):
            if not isinstance(row.get("text"), str):
                raise RecipeError("a row without a `text` string", source=str(file), line=lineno)
        splits[file.stem] = rows
    return splits, {
        "files": [str(f) for f in files],
        "splits_from": "one split per source file",
        "group": None,
    }


def split_calls(recipe, rows: list[dict], report: dict) -> tuple[dict[str, list[dict]], dict]:
    """simsamu rows into splits by situation. Splits are drawn over *all* calls (`report["situations"]`), so that
    every task variant (per call, per turn, summaries; references or ASR transcripts) puts a call in the same
    split: no situation leaks from one variant's train into another's test."""
    calls = list(report.pop("situations").items())
    parts = grouped_splits([s for _, s in calls], recipe.splits, recipe.seed, recipe.folds, recipe.fold)
    split_of = {calls[i][0]: name for name, idx in parts.items() for i in idx}
    report["group"] = "situation"
    report["splits_from"] = f"{recipe.folds}-fold, fold {recipe.fold}" if recipe.folds else "shares"
    return {name: [r for r in rows if split_of[r["id"].split("#")[0]] == name] for name in parts}, report


def build(recipe: BuildDatasetRecipe, source: str) -> tuple[dict[str, list[dict]], dict]:
    """({split: rows}, report) for the recipe's builder."""
    if recipe.builder == "text":
        return text_splits(source)
    if recipe.builder == "simsamu":
        root = Path(source)
        summaries = Path(recipe.summaries) if recipe.summaries else root / "summaries.jsonl"
        rows, report = simsamu.build_rows(
            root,
            task=recipe.task,
            per_turn=recipe.per_turn,
            summaries=summaries if summaries.is_file() else None,
            skip_speakers=tuple(recipe.skip_speakers),
            punctuation=recipe.punctuation,
        )
        return split_calls(recipe, rows, report)
    count = None
    if recipe.tokenizer_name_or_path:
        from ..models import load_tokenizer

        tokenizer = load_tokenizer(recipe.tokenizer_name_or_path, key="tokenizer_name_or_path")
        count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    by_split, report = meetings.build_rows(
        source,
        layout=recipe.layout,
        task=recipe.task,
        summaries=Path(recipe.summaries) if recipe.summaries else None,
        count_tokens=count,
        chunk_tokens=recipe.chunk_tokens,
        chunk_overlap=recipe.chunk_overlap,
    )
    report["group"] = "meeting"
    if len(by_split) > 1:  # official splits are kept as they are
        report["splits_from"] = "source"
        return by_split, report
    rows = next(iter(by_split.values()))
    groups = [r["id"] for r in rows]
    parts = grouped_splits(groups, recipe.splits, recipe.seed, recipe.folds, recipe.fold)
    report["splits_from"] = f"{recipe.folds}-fold, fold {recipe.fold}" if recipe.folds else "shares"
    return {name: [rows[i] for i in idx] for name, idx in parts.items()}, report


def run(recipe: BuildDatasetRecipe, callbacks=None):
    import datasets

    # 1. Read and check everything; nothing is written before the data is known to be good.
    source = fetch_source(recipe)
    splits, report = build(recipe, source)
    report["splits"] = {name: len(rows) for name, rows in splits.items()}
    report["empty_splits"] = [name for name, rows in splits.items() if not rows]
    if not any(splits.values()):
        raise RecipeError("no row was built (see the skipped counts)", key="source")
    for name in report["empty_splits"]:
        logger.warning("split %r is empty: fewer %ss than splits", name, report["group"])
    dataset = datasets.DatasetDict(
        {name: datasets.Dataset.from_list(rows) for name, rows in splits.items() if rows}
    )
    if recipe.dry_run:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return report

    # 2. save_to_disk + card + recipe + report, through <output_dir>.tmp.
    with staged_output(recipe, "build-dataset") as tmp:
        dataset.save_to_disk(str(tmp))
        lineage = write_run_files(tmp, stage="build-dataset", recipe=recipe, metrics=report, parent=None)
        card = render_dataset_card(recipe=recipe, dataset=dataset, report=report, lineage=lineage)
        (tmp / "README.md").write_text(card, encoding="utf-8")

    # 3. Publish (Hub or local hub folder) when asked.
    report["published"] = publish_stage_output(recipe, "dataset")
    return report
