"""Publish a stage output folder: to a Hub repo, or to the local hub folder.

    publish("outputs/tiny-llama/sft/chat", "me/tiny-llama-sft")          # a model
    publish("outputs/datasets/simsamu", "me/simsamu-dialogues")          # a dataset (Hub parquet layout)

- **Hub** (`target: hub`, or `auto` with a token and the network): `create_repo` (private unless
  `private=False`) + `upload_folder`. An existing repo, or an existing `revision` branch, is never
  overwritten unless `overwrite=True`.
- **Local hub folder** (`target: local`, or `auto` offline / without a token): the same files under
  `$LLM4ALL_HUB_DIR` (default `./hub`) as `<namespace>/<name>` for models and `datasets/<namespace>/<name>`
  for datasets, mirroring Hub URLs; the mixture loader reads both layouts.

Datasets (`save_to_disk` folders) are exported to the Hub's parquet layout, `data/<split>-NNNNN-of-NNNNN.parquet`,
next to their card, recipe and lineage. Checkpoints and other resume-only files are not published. The
token is read by huggingface_hub (`HF_TOKEN` or `hf auth login`) and never logged or written.
"""

import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import RecipeError
from .paths import is_hub_id, is_repo_id, local_hub_dir

logger = logging.getLogger(__name__)

IGNORE_PATTERNS = [
    "checkpoint-*",
    "checkpoint-*/*",
    "eval_before.json",
    "training_args.bin",
    "runs/*",
    "*.tmp",
    "incomplete",
    "incomplete/*",
    ".llm4all*",
]
SHARD_BYTES = 500 * 2**20  # parquet shards of at most ~500 MB, as the Hub's own converter does


@dataclass
class Published:
    target: str  # "hub" or "local"
    repo_id: str
    repo_type: str
    location: str  # URL or folder
    revision: str | None = None


def is_dataset_folder(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


AUDIO_FILES = ["*.m4a", "*.wav", "*.mp3", "*.flac"]


def local_source(source: str) -> Path:
    """A data source as a local path: itself when it exists (or is not a Hub id), else a Hub dataset's snapshot
    (audio included)."""
    if Path(source).exists() or not is_hub_id(source):
        return Path(source)
    return Path(download_dataset(source))


def download_dataset(repo_id: str, *, audio: bool = True, key: str = "source") -> str:
    """The local copy of a Hub dataset repo's files (snapshot_download; its audio files only if `audio`). Offline,
    an unknown repo or no access: a RecipeError on `key`."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, repo_type="dataset", ignore_patterns=None if audio else AUDIO_FILES)
    except Exception as exc:  # offline, unknown repo, no access: say which and stop
        raise RecipeError(f"cannot download the Hub dataset {repo_id}: {exc}", key=key) from None


def resolve_target(target: str) -> str:
    """`auto` means the Hub when a token is available and the network is not disabled, else the local folder."""
    if target != "auto":
        return target
    from huggingface_hub import constants, get_token

    return "hub" if get_token() and not constants.is_offline_mode() else "local"


def export_parquet(folder: Path, dest: Path) -> dict[str, int]:
    """A save_to_disk dataset as Hub parquet shards under dest/data/; returns {split: rows}."""
    import datasets

    loaded = datasets.load_from_disk(str(folder))
    splits = loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
    rows = {}
    for split, ds in splits.items():
        shards = max(1, math.ceil(ds.data.nbytes / SHARD_BYTES))
        for i in range(shards):
            path = dest / "data" / f"{split}-{i:05d}-of-{shards:05d}.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.shard(shards, i, contiguous=True).to_parquet(str(path))
        rows[split] = len(ds)
    for name in ("README.md", "recipe.yaml", "metrics.json", "lineage.json", "build_report.json"):
        if (folder / name).is_file():
            shutil.copy2(folder / name, dest / name)
    return rows


RESERVED_NAMESPACES = (
    "datasets",
    "spaces",
    "models",
)  # URL prefixes on the Hub (and in the local hub folder)


def local_repo_dir(repo_id: str, repo_type: str) -> Path:
    """`<hub>/<namespace>/<name>` for a model, `<hub>/datasets/<namespace>/<name>` for a dataset (the Hub's URLs)."""
    return local_hub_dir() / ("datasets" if repo_type == "dataset" else "") / repo_id


def publish(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    repo_type: str | None = None,
    private: bool | None = None,
    overwrite: bool = False,
    target: str = "auto",
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
) -> Published:
    """Publish `folder`. `private`: None makes a new repo private and leaves an existing one as it is; True/False
    sets the visibility, of an existing repo too."""
    folder = Path(folder)
    if not folder.is_dir():
        raise RecipeError(f"nothing to publish: {folder} is not a folder (run its stage first)", key="path")
    if not is_repo_id(repo_id):
        raise RecipeError(f"expected <namespace>/<name>, got {repo_id!r}", key="repo_id")
    repo_type = repo_type or ("dataset" if is_dataset_folder(folder) else "model")
    if repo_id.split("/")[0] in RESERVED_NAMESPACES:
        raise RecipeError(
            f"{repo_id!r}: '{repo_id.split('/')[0]}' is not a namespace (the Hub reserves it)", key="repo_id"
        )
    where = resolve_target(target)
    if where == "hub":
        from huggingface_hub import constants

        if constants.is_offline_mode():
            raise RecipeError(
                "cannot publish to the Hub: offline mode is on (HF_HUB_OFFLINE); publish with --target local, "
                "or unset HF_HUB_OFFLINE",
                key="target",
            )
    with tempfile.TemporaryDirectory(prefix="llm4all-publish-") as staging:
        content = folder
        if repo_type == "dataset" and is_dataset_folder(folder):
            content = Path(staging)
            export_parquet(folder, content)
        if where == "local":
            return _publish_local(content, repo_id, repo_type, overwrite)
        return _publish_hub(content, repo_id, repo_type, private, overwrite, revision, commit_message, token)


def _publish_local(content: Path, repo_id: str, repo_type: str, overwrite: bool) -> Published:
    """Copy into a hidden staging folder of the hub folder, then rename: only the repo's own folder is replaced."""
    dest = local_repo_dir(repo_id, repo_type)
    if dest.exists() and not overwrite:
        raise RecipeError(f"{dest} already exists; pass --overwrite true to replace it", key="repo_id")
    if dest.exists() and not dest.is_dir():
        raise RecipeError(f"{dest} is a file, not a published repo", key="repo_id")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".llm4all-publish-", dir=local_hub_dir()))  # never a valid repo name
    try:
        shutil.copytree(content, staging / "repo", ignore=shutil.ignore_patterns(*IGNORE_PATTERNS))
        if dest.exists():
            os.replace(dest, staging / "replaced")
        os.replace(staging / "repo", dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info("published %s %s to the local hub folder %s", repo_type, repo_id, dest)
    return Published("local", repo_id, repo_type, str(dest))


def _publish_hub(
    content: Path,
    repo_id: str,
    repo_type: str,
    private: bool | None,
    overwrite: bool,
    revision: str | None,
    message: str | None,
    token: str | None,
) -> Published:
    import httpx
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(token=token)
    try:
        exists = api.repo_exists(repo_id, repo_type=repo_type)
        if revision is None and exists and not overwrite:
            raise RecipeError(
                f"Hub {repo_type} repo {repo_id} already exists; pass --overwrite true to push a new commit to it",
                key="repo_id",
            )
        if (
            revision is not None
            and exists
            and api.revision_exists(repo_id, revision, repo_type=repo_type)
            and not overwrite
        ):
            raise RecipeError(
                f"revision {revision!r} of {repo_id} already exists; pass --overwrite true", key="revision"
            )
        url = api.create_repo(repo_id, repo_type=repo_type, private=private is not False, exist_ok=True)
        if exists and private is not None and api.repo_info(repo_id, repo_type=repo_type).private != private:
            api.update_repo_settings(repo_id, repo_type=repo_type, private=private)
            logger.warning("%s is now %s", repo_id, "private" if private else "public")
        if revision is not None:
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        api.upload_folder(
            folder_path=str(content),
            repo_id=repo_id,
            repo_type=repo_type,
            revision=revision,
            commit_message=message or f"Upload {repo_type} with llm4all-recipes",
            ignore_patterns=IGNORE_PATTERNS,
        )
    except HfHubHTTPError as exc:
        raise RecipeError(f"the Hub refused the upload of {repo_id}: {exc}", key="repo_id") from None
    except (httpx.HTTPError, OSError) as exc:
        raise RecipeError(f"cannot reach the Hub to publish {repo_id}: {exc}", key="repo_id") from None
    logger.info("published %s %s to %s%s", repo_type, repo_id, url, f" (revision {revision})" if revision else "")
    return Published("hub", repo_id, repo_type, str(url), revision)


def publish_stage_output(recipe, repo_type: str) -> str | None:
    """After a stage: publish its output_dir when the recipe says `push_to_hub: true` (main process only).

    Returns where it went (URL or folder), or None.
    """
    if not recipe.push_to_hub:
        return None
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return None
    repo_id = recipe.hub_dataset_id if repo_type == "dataset" else recipe.hub_model_id
    published = publish(
        recipe.output_dir,
        repo_id,
        repo_type=repo_type,
        private=recipe.hub_private_repo,
        overwrite=recipe.hub_overwrite,
        target=recipe.hub_target,
        token=getattr(recipe, "hub_token", None),
    )
    return published.location
