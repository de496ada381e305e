"""The `text` dataset builder (build-dataset): a folder of jsonl files, one split per file, every row a `text`
document (continued-pretraining and calibration text)."""

import json
from pathlib import Path
from typing import Any

from ..errors import RecipeError


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise RecipeError(f"corrupt JSON ({exc.msg})", source=str(path), line=lineno) from None
    return rows


def build(recipe, source: str) -> tuple[dict[str, list[dict]], dict]:
    """A folder of jsonl files (or one file): one split per file, named after it; every row needs `text`."""
    path = Path(source)
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    if not files:
        raise RecipeError(f"no .jsonl file in {source}", key="source")
    splits = {}
    for file in files:
        rows = read_jsonl(file)
        for lineno, row in enumerate(rows, 1):
            if not isinstance(row.get("text"), str):
                raise RecipeError("a row without a `text` string", source=str(file), line=lineno)
        splits[file.stem] = rows
    return splits, {
        "files": [str(f) for f in files],
        "splits_from": "one split per source file",
        "group": None,
    }


def card_facts(recipe, report: dict[str, Any]) -> dict[str, Any]:
    """What the dataset card says of these rows: summary, processing steps, columns."""
    return {
        "summary": "French text, one document per row, one split per source file.",
        "steps": [f"Read {', '.join(f'`{f}`' for f in report['files'])}: each file is a split named after it."],
        "columns": {"text": "a document", "id": "its id in the source file"},
        "license": recipe.license,
        "task_categories": ["text-generation"],
        "note": "",
    }
