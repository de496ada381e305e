"""The test Hub (tests/hub_server.py) answers the real `huggingface_hub` client: repos, uploads, downloads."""

import json
from pathlib import Path

import pytest
from conftest import HUB_TOKEN as TOKEN
from hub_server import HubServer, patch_hf_hub
from huggingface_hub import HfApi, ModelCard, constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalTokenNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import get_session, hf_raise_for_status


def requests_to(hub, method, path_part):
    return [r for r in hub.requests if r["method"] == method and path_part in r["path"]]


def make_model_folder(folder):
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("hello hub\n")
    (folder / "config.json").write_text(json.dumps({"hidden_size": 8, "name": "tiny"}))
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 400)  # ~100 KB, every byte value
    return folder


def test_create_private_repo_sends_flag_and_token(hub):
    api = HfApi()
    url = api.create_repo("test-user/secret", private=True)
    assert url.repo_id == "test-user/secret" and url.startswith(hub.url)
    (create,) = requests_to(hub, "POST", "/api/repos/create")
    assert create["json"]["visibility"] == "private"  # this client sends `visibility`, not `private: true`
    assert create["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert hub.repo("test-user/secret") == {"private": True, "branches": ["main"]}
    assert api.repo_info("test-user/secret").private is True
    with pytest.raises(RepositoryNotFoundError):  # a private repo is invisible without a token
        api.repo_info("test-user/secret", token=False)
    # No namespace: the server puts the repo under the token's user, like the Hub.
    assert api.create_repo("public-one").repo_id == "test-user/public-one"
    assert hub.repo("test-user/public-one")["private"] is False


def test_upload_folder_then_snapshot_download(hub, tmp_path):
    folder = make_model_folder(tmp_path / "model")
    api = HfApi()
    api.create_repo("me/tiny")
    info = api.upload_folder(repo_id="me/tiny", folder_path=folder, commit_message="Upload tiny")
    expected = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert hub.files("me/tiny") == expected
    assert info.oid == api.repo_info("me/tiny").sha and info.repo_url.repo_id == "me/tiny"
    (preupload,) = requests_to(hub, "POST", "/preupload/main")
    assert {f["path"] for f in preupload["json"]["files"]} == set(expected)
    (commit,) = requests_to(hub, "POST", "/commit/main")
    assert commit["json"][0] == {"key": "header", "value": {"summary": "Upload tiny", "description": ""}}
    # The binary file went inline (base64 "file" line) too: the client accepts "regular" for any file.
    assert {line["key"] for line in commit["json"][1:]} == {"file"}

    local = snapshot_download("me/tiny", cache_dir=tmp_path / "cache")
    assert {p.name: p.read_bytes() for p in Path(local).iterdir()} == expected
    one = hf_hub_download("me/tiny", "model.safetensors", revision=info.oid, local_dir=tmp_path / "one")
    assert Path(one).read_bytes() == expected["model.safetensors"]

    # Uploading the same folder again is a no-op: preupload reports the current blob ids.
    api.upload_folder(repo_id="me/tiny", folder_path=folder)
    assert len(requests_to(hub, "POST", "/commit/")) == 1
    api.delete_file("notes.txt", repo_id="me/tiny")
    assert sorted(api.list_repo_files("me/tiny")) == ["config.json", "model.safetensors"]


def test_existence_checks(hub, tmp_path):
    api = HfApi()
    api.create_repo("me/exists")
    api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id="me/exists")
    assert api.repo_exists("me/exists")
    assert not api.repo_exists("me/missing")
    assert not api.repo_exists("me/exists", repo_type="dataset")
    assert api.revision_exists("me/exists", "main")
    assert not api.revision_exists("me/exists", "nope")
    assert api.file_exists("me/exists", "config.json")
    assert not api.file_exists("me/exists", "weights.bin")
    with pytest.raises(RevisionNotFoundError):
        api.repo_info("me/exists", revision="nope")


def test_create_repo_twice(hub):
    api = HfApi()
    api.create_repo("me/twice", repo_type="dataset")
    with pytest.raises(HfHubHTTPError) as error:
        api.create_repo("me/twice", repo_type="dataset")
    assert error.value.response.status_code == 409
    assert api.create_repo("me/twice", repo_type="dataset", exist_ok=True).repo_id == "me/twice"
    api.delete_repo("me/twice", repo_type="dataset")
    assert not api.repo_exists("me/twice", repo_type="dataset")


def test_branches_and_refs(hub, tmp_path):
    api = HfApi()
    api.create_repo("me/branchy")
    api.upload_file(path_or_fileobj=b"v1", path_in_repo="weights.bin", repo_id="me/branchy")
    api.create_branch("me/branchy", branch="dev")
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="weights.bin", repo_id="me/branchy", revision="dev")
    refs = api.list_repo_refs("me/branchy")
    assert {ref.name for ref in refs.branches} == {"main", "dev"}
    assert hub.repo("me/branchy")["branches"] == ["dev", "main"]
    assert hub.files("me/branchy", revision="dev") == {"weights.bin": b"v2"}
    path = hf_hub_download("me/branchy", "weights.bin", revision="main", cache_dir=tmp_path / "cache")
    assert Path(path).read_bytes() == b"v1"
    with pytest.raises(HfHubHTTPError) as error:
        api.create_branch("me/branchy", branch="dev")
    assert error.value.response.status_code == 409
    api.create_branch("me/branchy", branch="dev", exist_ok=True)


def test_model_card_push_to_hub(hub):
    HfApi().create_repo("me/carded")
    content = "---\nlicense: apache-2.0\nlanguage: fr\n---\n\n# Carded\n\nA tiny model.\n"
    ModelCard(content).push_to_hub("me/carded")
    assert hub.files("me/carded")["README.md"].decode() == content
    # `ModelCard.validate` posts to https://huggingface.co itself: rerouted here, like the client's own check.
    assert len(requests_to(hub, "POST", "/api/validate-yaml")) == 2
    assert ModelCard.load("me/carded").data.license == "apache-2.0"


def test_seeded_dataset_snapshot(hub, tmp_path):
    folder = tmp_path / "data"
    for rel, text in {
        "README.md": "# data\n",
        "train/part-0.jsonl": '{"a": 1}\n',
        "train/sub/x.txt": "x",
    }.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
    hub.add_repo("org/data", folder, repo_type="dataset", private=True)
    local = snapshot_download("org/data", repo_type="dataset", local_dir=tmp_path / "local")
    got = {p.relative_to(local).as_posix(): p.read_text() for p in (tmp_path / "local").rglob("*") if p.is_file()}
    got = {k: v for k, v in got.items() if not k.startswith(".cache/")}
    assert got == {k: v.decode() for k, v in hub.files("org/data", repo_type="dataset").items()}
    assert set(got) == {"README.md", "train/part-0.jsonl", "train/sub/x.txt"}
    top = [e.path for e in HfApi().list_repo_tree("org/data", repo_type="dataset")]
    assert top == ["README.md", "train"]


def test_whoami_needs_a_token(hub, monkeypatch):
    assert HfApi().whoami()["name"] == "test-user"
    response = get_session().get(f"{hub.url}/api/whoami-v2")
    assert response.status_code == 401
    with pytest.raises(HfHubHTTPError):
        hf_raise_for_status(response)
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(LocalTokenNotFoundError):  # the client refuses before sending anything
        HfApi().whoami()


def test_patch_is_undone(tmp_path):
    before = (constants.ENDPOINT, constants.HF_HUB_OFFLINE, constants.HUGGINGFACE_CO_URL_TEMPLATE)
    with HubServer(tmp_path / "hub") as server, pytest.MonkeyPatch.context() as mp:
        patch_hf_hub(mp, server.url, token=None)
        assert server.url == constants.ENDPOINT and not constants.is_offline_mode()
        with pytest.raises(HfHubHTTPError):  # token=None: anonymous, so the server refuses to create
            HfApi().create_repo("me/anon")
        assert "authorization" not in server.requests[-1]["headers"]
    assert before == (constants.ENDPOINT, constants.HF_HUB_OFFLINE, constants.HUGGINGFACE_CO_URL_TEMPLATE)
