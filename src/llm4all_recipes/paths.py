"""Where things live: the repository, recipes, outputs, and how a path is told from a Hub id."""

import json
import os
import re
from collections.abc import Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from .errors import RecipeError

PACKAGE_DIR = Path(__file__).resolve().parent
# The package is used from a clone (editable install): recipes and card templates sit at its root.
REPO_ROOT = PACKAGE_DIR.parents[1]
RECIPES_DIR = REPO_ROOT / "recipes"
CHAT_TEMPLATES_DIR = PACKAGE_DIR / "data" / "chat_templates"
OUTPUTS = "outputs"  # produced artefacts (git-ignored); `validate` does not require them to exist yet
BENCHMARK_DATA = (
    "benchmarks",
    "data",
)  # texts the benchmark scripts build (git-ignored), e.g. benchmarks/smollm2.py

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*$")


def is_repo_id(value: str | None) -> bool:
    """A full Hub repo id, `<namespace>/<name>` (what we publish to)."""
    return bool(value) and bool(_REPO_ID.match(value))


def is_hub_id(value: str) -> bool:
    """`name` or `namespace/name` that is not an existing local path."""
    return bool(_HUB_ID.match(value)) and not Path(value).exists() and not value.startswith(".")


def local_hub_dir() -> Path:
    """The local hub folder (`hub publish` with target local): LLM4ALL_HUB_DIR, default ./hub."""
    return Path(os.environ.get("LLM4ALL_HUB_DIR", "hub"))


def local_hub_copy(value: str, repo_type: str = "model") -> str:
    """A `<namespace>/<name>` id published to the local hub folder reads from there (offline as online: the
    local copy is what this machine published); anything else is returned as it is."""
    if is_repo_id(value) and not Path(value).exists():
        local = local_hub_dir() / ("datasets" if repo_type == "dataset" else "") / value
        if local.is_dir():
            return str(local)
    return value


# Output folders that earlier steps of a pipeline will write (set while a pipeline checks its steps).
PLANNED_OUTPUTS: ContextVar[frozenset[str]] = ContextVar("planned_outputs", default=frozenset())


def is_produced(value: str) -> bool:
    """A path under `outputs/` (or the local hub folder), one an earlier pipeline step writes, or a text a benchmark
    script builds under `benchmarks/data/`: made by another command, maybe not yet."""
    parts = Path(os.path.normpath(value)).parts
    planned = PLANNED_OUTPUTS.get()
    return bool(parts) and (
        parts[0] in (OUTPUTS, "hub") or parts[:2] == BENCHMARK_DATA or os.path.abspath(value) in planned
    )


def stage_of(recipe_path: str | os.PathLike) -> str:
    """A recipe's stage is its folder name: recipes/<model>/<stage>/<variant>.yaml."""
    path = Path(recipe_path)
    if path.parent.name == "datasets":
        return "build-dataset"
    if path.name == "pipeline.yaml":
        return "pipeline"
    return path.parent.name


def default_output_dir(recipe_path: str | os.PathLike) -> str | None:
    """outputs/<model>/<stage>/<variant> for recipes/<model>/<stage>/<variant>.yaml, else None."""
    path = Path(os.path.abspath(recipe_path))
    parts = path.with_suffix("").parts
    if "recipes" not in parts:
        return None
    rel = parts[len(parts) - 1 - parts[::-1].index("recipes") + 1 :]
    if len(rel) < 2:
        return None
    return str(Path(OUTPUTS, *rel))


def resolve_in_repo(path: str) -> str:
    """A relative path that does not exist from the working directory is tried from the repo root."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    candidate = REPO_ROOT / path
    return str(candidate) if candidate.exists() else path


def check_path(value: str, key: str, static: bool, *, hub_ok: bool = False) -> None:
    """A local path must exist; in `static` mode (validate) paths under outputs/ may not exist yet."""
    if hub_ok and is_hub_id(value):
        return
    if static and is_produced(value):
        return
    if not os.path.exists(os.path.expanduser(value)):
        what = "not a local path nor a Hub id" if hub_ok else "no such file or folder"
        hint = ""
        if is_produced(value):
            built_by = (
                "a benchmark script (benchmarks/README.md)"
                if Path(value).parts[:2] == BENCHMARK_DATA
                else "another stage"
            )
            hint = f" (produced by {built_by}: run it first)"
        raise RecipeError(f"{what}: {value}{hint}", key=key)


def tmp_dir(output_dir: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(output_dir).rstrip('/')}.tmp")


def check_output_path(output_dir: str | None, key: str = "output_dir") -> None:
    """Refuse an output folder whose replacement could destroy what is not a run's output."""
    if output_dir is None or not str(output_dir).strip():
        raise RecipeError("empty: give the folder the stage writes (e.g. outputs/<model>/<stage>/<variant>)", key=key)
    path = Path(os.path.abspath(os.path.expanduser(str(output_dir))))
    resolved = path.resolve()
    for name, place in (
        ("the working directory", Path.cwd()),
        ("the llm4all-recipes checkout", REPO_ROOT),
        ("your home folder", Path.home()),
    ):
        place = place.resolve()
        if resolved == place or resolved in place.parents:
            what = name if resolved == place else f"a parent of {name}"
            raise RecipeError(
                f"{output_dir!r} is {what}: a stage replaces its output_dir, choose a folder of its own", key=key
            )
    if ".git" in resolved.parts:
        raise RecipeError(f"{output_dir!r} is inside a .git folder", key=key)
    for folder in (path, tmp_dir(path)):
        if folder.exists() and not folder.is_dir():
            raise RecipeError(f"{folder} is a file, not a folder", key=key)
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise RecipeError(f"cannot create {output_dir}: {parent} is a file, not a folder", key=key)


def collect_recipes(targets: Sequence[str]) -> list[Path]:
    """YAML files under the targets, recursively, skipping accelerate_configs/."""
    files: list[Path] = []
    for target in targets:
        path = Path(target)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.y*ml") if "accelerate_configs" not in p.parts)
        elif path.is_file():
            files.append(path)
        else:
            raise RecipeError("no such file or folder", source=str(path))
    return files


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write a file completely or not at all (a kill leaves the previous version, never half a file)."""
    path = Path(path)
    part = path.with_name(f".{path.name}.{os.getpid()}.part")
    with open(part, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, path)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")
