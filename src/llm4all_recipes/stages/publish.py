"""Publish a stage's output folder: a model checkpoint or a dataset (Hub parquet layout).

    llm4all publish --config recipes/tiny-llama/publish/sft-chat.yaml
    llm4all publish --path outputs/datasets/simsamu --repo_id me/simsamu-dialogues --target hub

Private by default; an existing repo or revision is never overwritten without `--overwrite true`;
offline or without a token (`target: auto`), it writes the local hub folder (./hub or $LLM4ALL_HUB_DIR).
"""

from pathlib import Path

from ..configs import PublishRecipe
from ..hub import IGNORE_PATTERNS, is_dataset_folder, local_repo_dir, publish, resolve_target

VISIBILITY = {True: "private", False: "public", None: "private if new; an existing repo keeps its visibility"}


def run(recipe: PublishRecipe, callbacks=None):
    repo_type = None if recipe.repo_type == "auto" else recipe.repo_type
    if recipe.dry_run:
        kind = repo_type or ("dataset" if is_dataset_folder(recipe.path) else "model")
        where = resolve_target(recipe.target)
        dest = (
            f"https://huggingface.co/{'datasets/' if kind == 'dataset' else ''}{recipe.repo_id}"
            if where == "hub"
            else str(local_repo_dir(recipe.repo_id, kind))
        )
        files = sorted(
            p
            for p in Path(recipe.path).rglob("*")
            if p.is_file()
            and not any(
                p.match(pat) or any(part.startswith("checkpoint-") for part in p.parts) for pat in IGNORE_PATTERNS
            )
        )
        print(f"# would publish {kind} {recipe.path} -> {dest} ({VISIBILITY[recipe.private]})")
        for p in files:
            print(f"#   {p.relative_to(recipe.path)}  {p.stat().st_size} bytes")
        return {"target": where, "location": dest}
    published = publish(
        recipe.path,
        recipe.repo_id,
        repo_type=repo_type,
        private=recipe.private,
        overwrite=recipe.overwrite,
        target=recipe.target,
        revision=recipe.revision,
        commit_message=recipe.commit_message,
    )
    print(f"published {published.repo_type} {published.repo_id} -> {published.location}")
    return {"target": published.target, "location": published.location}
