"""The building blocks of recipe dataclasses: `arg()` (a field with its help text) and `DatasetSource` (one
entry of a `datasets:` list), shared by the configs package and the data layer without importing either."""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def arg(default: Any = dataclasses.MISSING, *, help: str, factory: Any = None, **metadata: Any) -> Any:
    """A dataclass field with its `help` (shown by `--help`; `%` escaped for argparse)."""
    metadata["help"] = help.replace("%", "%%")
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class DatasetSource:
    """One entry of a dataset mixture (`datasets:` / `eval_datasets:` lists of a recipe)."""

    path: str = arg(
        help="Hub dataset id, local folder (save_to_disk or Hub parquet layout) or a .json/.jsonl/.parquet/.csv file."
    )
    name: str | None = arg(None, help="Configuration name, for Hub datasets that have several.")
    split: str = arg("train", help="Split to read. A single file only has the 'train' split.")
    columns: list[str] | dict[str, str] | None = arg(
        None,
        help="Columns to keep, or a {source_name: stage_name} mapping that renames then keeps. "
        "Default: the stage's own columns (`messages` for chat stages, `text` for text stages).",
    )
    weight: float = arg(
        1.0,
        help="Share of the training mixture: of rows for chat stages, of tokens for text stages "
        "(weights are normalised). Ignored for eval sets, which are used whole.",
    )
    repeat: bool = arg(False, help="Allow repeating this source when it is too small for its share.")
    streaming: bool = arg(
        False,
        help="Read the dataset as a stream (nothing downloaded in full): for big Hub corpora; needs max_rows.",
    )
    max_rows: int | None = arg(
        None,
        help="Use at most this many rows: the first rows of the shuffled stream (streaming), else a seeded sample.",
    )
    label: str | None = arg(
        None,
        help="Short name of the set in metrics (`eval_<label>_loss`) and reports. Default: the file or dataset "
        "name (plus _<split> unless train). In cpt, old_* / new_* mark the domains of the forgetting report.",
    )

    @property
    def tag(self) -> str:
        """The set's name in metrics and reports: `label`, or one made from the path and split."""
        if self.label:
            return self.label
        stem = Path(self.path.rstrip("/")).name
        for suffix in (".jsonl", ".json", ".parquet", ".csv"):
            stem = stem.removesuffix(suffix)
        return stem if self.split in ("train", stem) else f"{stem}_{self.split}"


def _flat(values: list) -> list:
    return [v for item in values for v in (item if isinstance(item, list) else [item])]


def _to_source(value: Any) -> DatasetSource:
    if isinstance(value, DatasetSource):
        return value
    return DatasetSource(**value) if isinstance(value, dict) else DatasetSource(path=value)


def _to_sources(values: list) -> list[DatasetSource]:
    return [_to_source(v) for v in _flat(values)]
