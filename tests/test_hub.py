"""Publishing with hub.publish(): the local hub folder, and the real huggingface_hub client against the
loopback Hub server (private repos, no silent overwrite, revisions, dataset parquet layout, no token leak)."""

import json
from pathlib import Path

import datasets
import pytest
from conftest import HUB_TOKEN

from llm4all_recipes.cli import main
from llm4all_recipes.data.mixture import load_source
from llm4all_recipes.errors import RecipeError
from llm4all_recipes.fields import DatasetSource
from llm4all_recipes.hub import publish, resolve_target


@pytest.fixture
def model_folder(tmp_path):
    folder = tmp_path / "model"
    (folder / "checkpoint-10").mkdir(parents=True)
    (folder / "checkpoint-10" / "optimizer.pt").write_bytes(b"x" * 100)
    (folder / "model.safetensors").write_bytes(b"\0" * 50_000)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# a model\n")
    return folder


@pytest.fixture
def dataset_folder(tmp_path):
    folder = tmp_path / "ds"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"text": f"t{i}"} for i in range(7)]),
            "test": datasets.Dataset.from_list([{"text": "x"}]),
        }
    ).save_to_disk(str(folder))
    (folder / "README.md").write_text("---\nlicense: mit\n---\n# data\n")
    return folder


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM4ALL_HUB_DIR", str(tmp_path / "localhub"))
    return tmp_path / "localhub"


def test_local_model_publish_skips_checkpoints_and_refuses_overwrite(model_folder, local_hub):
    published = publish(model_folder, "me/tiny", target="local")
    dest = local_hub / "me" / "tiny"
    assert published.location == str(dest)
    assert sorted(p.name for p in dest.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    with pytest.raises(RecipeError, match="already exists"):
        publish(model_folder, "me/tiny", target="local")
    publish(model_folder, "me/tiny", target="local", overwrite=True)


def test_local_dataset_publish_is_the_hub_parquet_layout(dataset_folder, local_hub):
    publish(dataset_folder, "me/data", target="local")
    dest = local_hub / "datasets" / "me" / "data"
    assert sorted(p.name for p in (dest / "data").iterdir()) == [
        "test-00000-of-00001.parquet",
        "train-00000-of-00001.parquet",
    ]
    assert (dest / "README.md").is_file()
    loaded = load_source(DatasetSource(path=str(dest), split="train"), "datasets[0]", ["text"])
    assert sorted(loaded["text"]) == sorted(f"t{i}" for i in range(7))


def test_auto_target(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", "/nonexistent-home")  # no stored token either
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", "/nonexistent-home/token")
    assert resolve_target("auto") == "local"
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert resolve_target("auto") == "local"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert resolve_target("auto") == "hub"


def test_hub_publish_private_no_overwrite_revisions(hub, model_folder):
    publish(model_folder, "me/tiny", target="hub")
    assert hub.repo("me/tiny")["private"] is True
    create = next(r for r in hub.requests if r["path"] == "/api/repos/create")
    assert create["json"].get("private") is True or create["json"].get("visibility") == "private"
    assert create["headers"]["authorization"] == f"Bearer {HUB_TOKEN}"
    files = hub.files("me/tiny")
    assert set(files) == {"README.md", "config.json", "model.safetensors"}  # no checkpoint-*
    assert files["model.safetensors"] == (model_folder / "model.safetensors").read_bytes()
    with pytest.raises(RecipeError, match="already exists"):
        publish(model_folder, "me/tiny", target="hub")
    (model_folder / "config.json").write_text('{"model_type": "llama", "v": 2}')
    publish(model_folder, "me/tiny", target="hub", overwrite=True)
    assert b'"v": 2' in hub.files("me/tiny")["config.json"]
    publish(model_folder, "me/tiny", target="hub", revision="v0.1")
    assert "v0.1" in hub.repo("me/tiny")["branches"]
    with pytest.raises(RecipeError, match=r"revision 'v0\.1'") as exc:
        publish(model_folder, "me/tiny", target="hub", revision="v0.1")
    assert exc.value.key == "revision"
    publish(model_folder, "me/public", target="hub", private=False)
    assert hub.repo("me/public")["private"] is False


def test_publish_command_pushes_a_built_dataset_without_leaking_the_token(hub, tmp_path, recipe_file, capsys, caplog):
    out = tmp_path / "simsamu"
    build = recipe_file(
        f"builder: simsamu\nsource: tests/fixtures/simsamu\noutput_dir: {out}\npush_to_hub: true\n"
        "hub_dataset_id: me/simsamu\nhub_target: hub\n",
        stage="datasets",
        name="simsamu.yaml",
    )
    assert main(["build-dataset", "--config", build]) == 0
    files = hub.files("me/simsamu", repo_type="dataset")
    assert {"README.md", "recipe.yaml", "lineage.json", "metrics.json"} <= set(files)
    assert any(f.startswith("data/train-") and f.endswith(".parquet") for f in files)
    card = files["README.md"].decode()
    rows = {s["name"]: s["num_examples"] for s in _front_matter(card)["dataset_info"]["splits"]}
    local = datasets.load_from_disk(str(out))
    assert rows == {s: len(local[s]) for s in local}
    assert hub.repo("me/simsamu", repo_type="dataset")["private"] is True
    # the same folder again, through `llm4all publish` with only command-line keys: refused, then allowed
    assert main(["publish", "--path", str(out), "--repo_id", "me/simsamu", "--target", "hub"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (
        main(
            [
                "publish",
                "--path",
                str(out),
                "--repo_id",
                "me/simsamu",
                "--target",
                "hub",
                "--overwrite",
                "true",
            ]
        )
        == 0
    )
    # the token is sent to the server, and written nowhere else
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "hub" not in p.relative_to(tmp_path).parts[:1]]
    assert not any(HUB_TOKEN.encode() in p.read_bytes() for p in written)
    assert not any(HUB_TOKEN.encode() in content for content in files.values())
    captured = capsys.readouterr()
    assert HUB_TOKEN not in captured.out + captured.err + caplog.text


def test_publish_recipe_errors(recipe_file, tmp_path, capsys):
    path = recipe_file(f"path: {tmp_path / 'nothing'}\nrepo_id: me/x\n", stage="publish", name="p.yaml")
    assert main(["publish", "--config", path]) == 2
    assert "key 'path': no such file or folder" in capsys.readouterr().err
    (tmp_path / "folder").mkdir()
    path = recipe_file(f"path: {tmp_path / 'folder'}\nrepo_id: not a repo\n", stage="publish", name="q.yaml")
    assert main(["publish", "--config", path]) == 2
    assert "key 'repo_id': expected <namespace>/<name>" in capsys.readouterr().err


def test_push_to_hub_needs_a_repo_id(recipe_file, capsys):
    path = recipe_file(
        "builder: simsamu\nsource: tests/fixtures/simsamu\npush_to_hub: true\n",
        stage="datasets",
        name="s.yaml",
    )
    assert main(["build-dataset", "--config", path]) == 2
    assert "key 'hub_dataset_id': required when publishing" in capsys.readouterr().err


def test_publish_dry_run_lists_files(model_folder, local_hub, capsys):
    assert (
        main(
            [
                "publish",
                "--path",
                str(model_folder),
                "--repo_id",
                "me/m",
                "--target",
                "local",
                "--dry_run",
                "true",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "model.safetensors" in out and "optimizer.pt" not in out and "(private if new" in out
    assert not (local_hub / "me" / "m").exists()


def _front_matter(card: str) -> dict:
    import yaml

    return yaml.safe_load(card.split("---")[1])


def test_sft_push_to_hub_publishes_model_with_card(tiny_model, recipe_file, tmp_path, local_hub):
    path = recipe_file(
        f"model_name_or_path: {tiny_model}\noutput_dir: {tmp_path / 'sft'}\n"
        "datasets:\n  - path: tests/fixtures/chat/train.jsonl\nmax_steps: 1\nmax_length: 256\n"
        "push_to_hub: true\nhub_model_id: me/tiny-chat\nhub_target: local\n"
    )
    assert main(["sft", "--config", path]) == 0
    dest = local_hub / "me" / "tiny-chat"
    assert (dest / "model.safetensors").is_file() and not list(dest.glob("checkpoint-*"))
    lineage = json.loads((dest / "lineage.json").read_text())["stages"]
    assert lineage[-1]["hub_repo_id"] == "me/tiny-chat"
    assert "me/tiny-chat" in (dest / "README.md").read_text()
    assert Path(tmp_path / "sft").is_dir()  # the stage output stays where it was


def test_local_publish_never_touches_a_neighbour(model_folder, dataset_folder, local_hub, capsys):
    publish(dataset_folder, "llm4all/data", target="local")
    (local_hub / "ns" / "x.tmp").mkdir(parents=True)  # a real repo named x.tmp
    (local_hub / "ns" / "x.tmp" / "README.md").write_text("repo x.tmp")
    # a model repo whose namespace is `datasets` would be the datasets folder itself
    argv = [
        "publish",
        "--path",
        str(model_folder),
        "--repo_id",
        "datasets/llm4all",
        "--repo_type",
        "model",
        "--target",
        "local",
        "--overwrite",
        "true",
    ]
    assert main(argv) == 2
    assert "'datasets' is not a namespace" in capsys.readouterr().err
    assert (local_hub / "datasets" / "llm4all" / "data" / "README.md").is_file()
    publish(model_folder, "ns/x", target="local")
    publish(model_folder, "ns/x", target="local", overwrite=True)
    assert (local_hub / "ns" / "x.tmp" / "README.md").read_text() == "repo x.tmp"
    assert sorted(p.name for p in local_hub.iterdir()) == ["datasets", "ns"]  # no staging folder left behind
    assert sorted(p.name for p in (local_hub / "ns").iterdir()) == ["x", "x.tmp"]


def test_overwrite_keeps_the_visibility_unless_asked(hub, model_folder):
    publish(model_folder, "test-user/pub", target="hub", private=False)
    assert hub.repo("test-user/pub")["private"] is False
    publish(model_folder, "test-user/pub", target="hub", overwrite=True)  # private unset: stays public
    assert hub.repo("test-user/pub")["private"] is False
    publish(model_folder, "test-user/pub", target="hub", overwrite=True, private=True)
    assert hub.repo("test-user/pub")["private"] is True
    publish(model_folder, "test-user/new", target="hub")  # a new repo: private by default
    assert hub.repo("test-user/new")["private"] is True


def test_publish_to_the_hub_while_offline_is_one_line(model_folder, monkeypatch, capsys):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    argv = ["publish", "--path", str(model_folder), "--repo_id", "me/m", "--target", "hub"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "offline mode is on" in err[0] and "--target local" in err[0]


def test_repo_ids_read_from_the_local_hub_folder(tiny_model, dataset_folder, local_hub, monkeypatch):
    """`me/name` published with target local is read by its Hub id (models, tokenizers, dataset sources);
    an id that was not published there is left to the Hub."""
    import torch

    from llm4all_recipes.models import load_model, load_tokenizer

    publish(tiny_model, "me/tiny", target="local")
    publish(dataset_folder, "me/data", target="local")
    model = load_model("me/tiny")
    assert torch.equal(model.lm_head.weight, load_model(str(tiny_model)).lm_head.weight)
    assert load_tokenizer("me/tiny")("bonjour")["input_ids"]
    loaded = load_source(DatasetSource(path="me/data", split="test"), "datasets[0]", ["text"])
    assert loaded["text"] == ["x"]
    with pytest.raises(RecipeError, match="cannot load"):
        load_source(DatasetSource(path="me/nothing", split="train"), "datasets[0]", ["text"])
