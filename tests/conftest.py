"""Offline, isolated test session: the Hub is off, caches live in a temporary folder, the working
directory is the repository root (recipes use repo-relative paths), and the tiny default model is
built once per session from the shipped recipe.
"""

import os
import tempfile
from pathlib import Path

# Before any Hugging Face library is imported: no network, private caches.
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="llm4all-tests-"))
os.environ.update(
    HF_HOME=str(_SESSION_TMP / "hf_home"),
    HF_HUB_OFFLINE="1",
    HF_DATASETS_OFFLINE="1",
    HF_HUB_DISABLE_TELEMETRY="1",
    TOKENIZERS_PARALLELISM="false",
    WANDB_DISABLED="true",
    LLM4ALL_HUB_DIR=str(_SESSION_TMP / "hub"),
)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402

import pytest  # noqa: E402
from hub_server import HubServer, patch_hf_hub  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HUB_TOKEN = "hf_fake_token_for_tests"
FIXTURES = REPO / "tests" / "fixtures"
os.chdir(REPO)


@pytest.fixture(scope="session")
def session_tmp() -> Path:
    return _SESSION_TMP


@pytest.fixture(scope="session")
def tiny_model(session_tmp) -> Path:
    """The embedded default, built once from recipes/tiny-llama/tiny-model/base.yaml (as `llm4all tiny-model`)."""
    from llm4all_recipes.cli import main

    out = session_tmp / "tiny-model"
    assert main(["tiny-model", "--output_dir", str(out)]) == 0
    return out


@pytest.fixture(scope="session")
def compressed_model(tiny_model, session_tmp) -> Path:
    """The tiny default compressed by recipes/tiny-llama/compress/whitening-60.yaml (60 %, whitening)."""
    from llm4all_recipes.cli import main

    out = session_tmp / "compress-w60"
    config = "recipes/tiny-llama/compress/whitening-60.yaml"
    assert (
        main(
            [
                "compress",
                "--config",
                config,
                "--model_name_or_path",
                str(tiny_model),
                "--output_dir",
                str(out),
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="session")
def distilled_model(compressed_model, session_tmp) -> Path:
    """That student healed by recipes/tiny-llama/feature-distill/whitening-60.yaml (a shorter token budget)."""
    from llm4all_recipes.cli import main

    out = session_tmp / "feature-distill-w60"
    config = "recipes/tiny-llama/feature-distill/whitening-60.yaml"
    argv = [
        "--model_name_or_path",
        str(compressed_model),
        "--output_dir",
        str(out),
        "--tokens_per_block",
        "131072",
        # the recipe's 1e-3 is measured on french-bench; on this 1M-parameter toy whitening is already near the
        # blocks' optimum and 1e-3 keeps every initial state: 1e-4 exercises blocks that improve
        "--learning_rate",
        "1e-4",
    ]
    assert main(["feature-distill", "--config", config, *argv]) == 0
    return out


@pytest.fixture(scope="session")
def svd80_compressed(tiny_model, session_tmp) -> Path:
    """The healing chain's student: recipes/tiny-llama/compress/svd-80.yaml (plain SVD, 80 %: ~1.3x perplexity)."""
    from llm4all_recipes.cli import main

    out = session_tmp / "compress-svd80"
    argv = [
        "--config",
        "recipes/tiny-llama/compress/svd-80.yaml",
        "--model_name_or_path",
        str(tiny_model),
        "--output_dir",
        str(out),
    ]
    assert main(["compress", *argv]) == 0
    return out


@pytest.fixture(scope="session")
def svd80_distilled(svd80_compressed, session_tmp) -> Path:
    from llm4all_recipes.cli import main

    out = session_tmp / "feature-distill-svd80"
    argv = [
        "--config",
        "recipes/tiny-llama/feature-distill/svd-80.yaml",
        "--model_name_or_path",
        str(svd80_compressed),
        "--output_dir",
        str(out),
        "--tokens_per_block",
        "131072",
    ]
    assert main(["feature-distill", *argv]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_metrics(tiny_model) -> dict:
    return json.loads((tiny_model / "metrics.json").read_text())


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A `HubServer` on 127.0.0.1 (files under tmp/hub), this process's `huggingface_hub` pointed at it.

    `HF_ENDPOINT` alone does not work here: `huggingface_hub` is already imported, and it copied the endpoint
    into `constants.ENDPOINT`, `constants.HUGGINGFACE_CO_URL_TEMPLATE` (used by `hf_hub_download`) and the
    module-level `hf_api.api` behind `create_repo`, `upload_folder`, ...; the conftest's `HF_HUB_OFFLINE=1`
    is likewise frozen in `constants.HF_HUB_OFFLINE` (and in `datasets.config`). `patch_hf_hub` sets the env
    vars (`HF_ENDPOINT`, `HF_HUB_OFFLINE=0`, `HF_HUB_DISABLE_XET=1`, `HF_TOKEN`) *and* those copies, and swaps
    the shared httpx client for one that reroutes `huggingface.co` to the server (`ModelCard.validate`
    hard-codes it), all through `monkeypatch`. Downloads use a per-test `cache_dir` / `local_dir`, so that
    nothing is shared through the session's HF cache. (`HfApi(endpoint=hub.url)` alone is not enough either:
    offline mode blocks every request in the client's httpx event hook, whatever the endpoint.)
    """
    with HubServer(tmp_path / "hub") as server:
        patch_hf_hub(monkeypatch, server.url, token=HUB_TOKEN)
        yield server


@pytest.fixture
def recipe_file(tmp_path):
    """Write a recipe under tmp/recipes/<model>/<stage>/<name> (so its stage and output_dir derive from it)."""

    def write(text: str, stage: str = "sft", name: str = "test.yaml") -> str:
        path = tmp_path / "recipes" / "m" / stage / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return str(path)

    return write


@pytest.fixture(scope="session")
def tiny_whisper(session_tmp) -> Path:
    """A tiny random Whisper (model + processor) from recipes/tiny-whisper/tiny-model/base.yaml."""
    from llm4all_recipes.cli import main

    out = session_tmp / "tiny-whisper"
    assert main(["tiny-model", "--config", "recipes/tiny-whisper/tiny-model/base.yaml", "--output_dir", str(out)]) == 0
    return out
