"""Build a French dataset from its source layout: simulated SAMU calls (`medkit/simsamu`) or meetings.

    llm4all build-dataset --config recipes/datasets/simsamu.yaml
    llm4all build-dataset --config recipes/datasets/meetings.yaml

Writes `save_to_disk` + dataset card + recipe + build report into output_dir (through `.tmp`, so bad
input leaves nothing behind), then publishes it when `push_to_hub: true`.
"""

import json
import logging
from pathlib import Path

from ..configs import BuildDatasetRecipe
from ..data import meetings, simsamu, text
from ..errors import RecipeError
from ..hub import download_dataset
from ..outputs import finish_dataset, staged_output

logger = logging.getLogger(__name__)

BUILDERS = {"text": text, "simsamu": simsamu, "meetings": meetings}  # each: build(recipe, source), card_facts


def fetch_source(recipe: BuildDatasetRecipe) -> str:
    """A local path as is; a Hub dataset id through snapshot_download (simsamu) or datasets (meetings)."""
    if Path(recipe.source).exists() or recipe.builder == "meetings":
        return recipe.source
    return download_dataset(recipe.source, audio=recipe.download_audio)


def run(recipe: BuildDatasetRecipe, callbacks=None):
    import datasets

    # 1. Read and check everything; nothing is written before the data is known to be good.
    source = fetch_source(recipe)
    builder = BUILDERS[recipe.builder]
    splits, report = builder.build(recipe, source)
    report["splits"] = {name: len(rows) for name, rows in splits.items()}
    report["empty_splits"] = [name for name, rows in splits.items() if not rows]
    if not any(splits.values()):
        raise RecipeError("no row was built (see the skipped counts)", key="source")
    for name in report["empty_splits"]:
        logger.warning("split %r is empty: fewer %ss than splits", name, report["group"])
    dataset = datasets.DatasetDict({name: datasets.Dataset.from_list(rows) for name, rows in splits.items() if rows})
    if recipe.dry_run:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return report

    # 2. save_to_disk + card + recipe + report, through <output_dir>.tmp; then published when asked.
    with staged_output(recipe, "build-dataset") as tmp:
        dataset.save_to_disk(str(tmp))
        finish_dataset(
            tmp,
            stage="build-dataset",
            recipe=recipe,
            dataset=dataset,
            report=report,
            facts=builder.card_facts(recipe, report),
        )
    return report
