"""A tiny Hugging Face Hub for tests: the real ``huggingface_hub`` client talks to it over HTTP on 127.0.0.1.

Start it, point the client at it (``patch_hf_hub`` does the whole recipe), then use ``HfApi``,
``upload_folder``, ``hf_hub_download``, ``snapshot_download`` or ``ModelCard.push_to_hub`` as on the Hub::

    with HubServer(tmp_path / "hub") as hub:
        patch_hf_hub(monkeypatch, hub.url, token="hf_test")
        HfApi().create_repo("me/model", private=True)

The protocol subset it speaks (standard library only, a ``ThreadingHTTPServer`` in a daemon thread):

* ``GET /api/whoami-v2`` (any ``Authorization: Bearer`` token is valid, 401 without one);
  ``POST /api/validate-yaml`` (every card is valid);
* ``POST /api/repos/create`` (409 when it exists, so ``exist_ok=True`` works), ``DELETE /api/repos/delete``,
  ``PUT /api/{type}s/{repo}/settings`` (visibility only);
* ``GET /api/{type}s/{repo}`` and ``.../revision/{rev}`` (info with ``sha``, ``private``, ``siblings``),
  ``GET .../tree/{rev}[/{path}]`` (``?recursive=``), ``GET .../refs``;
* ``POST .../preupload/{rev}``: always ``uploadMode: "regular"`` (so no LFS/Xet transfer is ever needed,
  binary files included), with the current blob ``oid`` so that the client skips unchanged files;
  ``POST .../commit/{rev}``: NDJSON header + base64 ``file`` / ``deletedFile`` / ``deletedFolder`` lines, the
  ``parentCommit`` checked; ``POST`` / ``DELETE .../branch/{branch}`` (``startingPoint`` honoured);
* ``GET`` / ``HEAD /[datasets/|spaces/]{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``, ``ETag`` (the git
  blob sha1) and ``Content-Length``; ``Range: bytes=a-[b]`` for resumed downloads.

Errors carry the ``X-Error-Code`` the client turns into its exceptions (``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``); a missing or private repo answers 401 without a token and 404 with
one. Every token is the same user (``user``, default ``test-user``), who may write everywhere.

Not implemented: LFS/Xet uploads, tags, pull requests, gated repos, pagination, commit history (a commit sha
resolves only while it is the head of a branch). Files live on disk under
``root/<type>s/<namespace>/<name>/<revision>/`` (the revision URL-quoted so that ``/`` cannot nest); metadata
(visibility, branch heads) lives in memory. New repos start empty (the real Hub adds a ``.gitattributes``).
Requests are not logged: the token is kept only in ``requests[i]["headers"]["authorization"]``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

HUB_HOSTS = frozenset({"huggingface.co", "hf.co", "hub-ci.huggingface.co"})
NO_CREDENTIALS = "Invalid credentials in Authorization header"


def git_blob_sha(data: bytes) -> str:
    """The git object id of a blob: what the Hub reports as a regular file's ``oid`` and ``ETag``."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def read_folder(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


class HubError(Exception):
    """An error answer: `code` goes to `X-Error-Code`, `extra` into the JSON body next to `error`."""

    def __init__(self, status: int, message: str, code: str | None = None, headers=None, extra=None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers, self.extra = headers or {}, extra or {}


class HubServer:
    def __init__(self, root: Path, user: str = "test-user"):
        self.root = Path(root)
        self.user = user
        self.url = ""
        # Every request: {"method", "path", "query", "headers" (lowercase names), "json", "status"}.
        self.requests: list[dict] = []
        # (repo_type, repo_id) -> {"private", "branches": {name: head sha}, "createdAt", "lastModified"}
        self._repos: dict[tuple[str, str], dict] = {}
        self._lock = threading.RLock()
        self._commits = 0
        self._httpd: ThreadingHTTPServer | None = None

    def start(self) -> HubServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"hub": self}))
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # Test helpers ------------------------------------------------------------------------------------------
    def add_repo(self, repo_id: str, folder: Path, repo_type="model", private=False, revision="main") -> None:
        """Create the repo if needed; make branch `revision` hold exactly the files of a local folder."""
        files, key = read_folder(Path(folder)), (repo_type, repo_id)
        with self._lock:
            if key not in self._repos:
                self._create(key, private)
            self._repos[key]["private"] = private
            self._write(key, revision, files)

    def files(self, repo_id: str, repo_type="model", revision="main") -> dict[str, bytes]:
        """Files of a revision (a branch, or a branch head sha); KeyError for an unknown repo or revision."""
        key = (repo_type, repo_id)
        with self._lock:
            try:
                return self._files(key, self._resolve(self._repos[key], revision)[0])
            except HubError:
                raise KeyError(revision) from None

    def repo(self, repo_id: str, repo_type="model") -> dict:
        meta = self._repos[(repo_type, repo_id)]
        return {"private": meta["private"], "branches": sorted(meta["branches"])}

    # Storage: a repo is keyed by (repo_type, repo_id) -------------------------------------------------------
    def _dir(self, key: tuple[str, str], branch: str) -> Path:
        return self.root / f"{key[0]}s" / key[1] / quote(branch, safe="")

    def _files(self, key: tuple[str, str], branch: str) -> dict[str, bytes]:
        return read_folder(self._dir(key, branch))

    def _write(self, key: tuple[str, str], branch: str, files: dict[str, bytes]) -> str:
        """Replace a branch's files: a new commit, whose sha is returned."""
        base = self._dir(key, branch)
        shutil.rmtree(base, ignore_errors=True)
        base.mkdir(parents=True)
        for path, data in files.items():
            (base / path).parent.mkdir(parents=True, exist_ok=True)
            (base / path).write_bytes(data)
        self._commits += 1
        sha = hashlib.sha1(f"{key}@{branch}#{self._commits}:{time.time()}".encode()).hexdigest()
        self._repos[key]["branches"][branch] = sha
        self._repos[key]["lastModified"] = _now()
        return sha

    def _create(self, key: tuple[str, str], private: bool) -> None:
        self._repos[key] = {"private": private, "branches": {}, "createdAt": _now()}
        self._write(key, "main", {})

    def _repo_url(self, key: tuple[str, str]) -> str:
        return f"{self.url}/{'' if key[0] == 'model' else key[0] + 's/'}{key[1]}"

    def _lookup(self, key: tuple[str, str], authed: bool) -> dict:
        meta = self._repos.get(key)
        if meta is None or (meta["private"] and not authed):
            raise HubError(404 if authed else 401, "Repository not found", "RepoNotFound")
        return meta

    @staticmethod
    def _resolve(meta: dict, revision: str) -> tuple[str, str]:
        """A branch name, or a branch head sha (7 characters at least) -> (branch, sha)."""
        if revision in meta["branches"]:
            return revision, meta["branches"][revision]
        for branch, sha in meta["branches"].items():
            if len(revision) >= 7 and sha.startswith(revision):
                return branch, sha
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    # Routing: each returns (status, headers, JSON-able or bytes), or raises HubError ------------------------
    def _route(self, method: str, path: str, query: dict, headers: dict, body):
        # Split, then unquote: a quoted revision ("refs%2Fpr%2F1") or tree path stays one part.
        parts = [unquote(p) for p in path.strip("/").split("/")]
        authed = headers.get("authorization", "").startswith("Bearer ")
        with self._lock:
            if parts[0] != "api":
                return self._resolve_file(method, parts, headers, authed)
            if parts[1:] == ["whoami-v2"] and method == "GET":
                if not authed:
                    raise HubError(401, NO_CREDENTIALS)
                user = {"type": "user", "name": self.user, "fullname": self.user, "orgs": []}
                user["auth"] = {
                    "type": "access_token",
                    "accessToken": {"displayName": "test", "role": "write"},
                }
                return 200, {}, user
            if parts[1:] == ["validate-yaml"] and method == "POST":
                return 200, {}, {"errors": [], "warnings": []}
            if parts[1:2] == ["repos"] and len(parts) == 3:
                return self._repos_api(method, parts[2], body or {}, authed)
            if len(parts) >= 4 and parts[1] in ("models", "datasets", "spaces"):
                key = (parts[1][:-1], f"{parts[2]}/{parts[3]}")
                return self._repo_api(method, key, parts[4:], query, body or {}, authed)
        raise HubError(404, f"Not implemented by the test hub: {method} {path}")

    def _repos_api(self, method: str, action: str, body: dict, authed: bool):
        if not authed:
            raise HubError(401, NO_CREDENTIALS)
        key = (body.get("type") or "model", f"{body.get('organization') or self.user}/{body['name']}")
        if action == "create" and method == "POST":
            if key in self._repos:
                raise HubError(409, f"You already created this {key[0]} repo", extra={"url": self._repo_url(key)})
            self._create(key, private=body.get("private") is True or body.get("visibility") == "private")
            return 200, {}, {"url": self._repo_url(key), "name": key[1]}
        if action == "delete" and method == "DELETE":
            self._lookup(key, authed)
            del self._repos[key]
            shutil.rmtree(self.root / f"{key[0]}s" / key[1], ignore_errors=True)
            return 200, {}, {}
        raise HubError(404, f"Not implemented by the test hub: {method} /api/repos/{action}")

    def _repo_api(self, method: str, key: tuple[str, str], rest: list, query: dict, body: dict, authed: bool):
        meta = self._lookup(key, authed)
        action, arg = (rest[0], "/".join(rest[1:])) if rest else (None, "")
        if method == "GET" and action in (None, "revision"):
            branch, sha = self._resolve(meta, arg or "main")
            info = {"id": key[1], "author": key[1].split("/")[0], "sha": sha, "private": meta["private"]}
            info.update(gated=False, disabled=False, tags=[], downloads=0, likes=0, siblings=[])
            info.update(createdAt=meta["createdAt"], lastModified=meta["lastModified"])
            for path, data in self._files(key, branch).items():
                info["siblings"].append({"rfilename": path, "size": len(data), "blobId": git_blob_sha(data)})
            return 200, {}, info
        if method == "GET" and action == "tree" and rest[1:]:
            files = self._files(key, self._resolve(meta, rest[1])[0])
            return 200, {}, _tree(files, "/".join(rest[2:]), query)
        if method == "GET" and action == "refs":
            heads = meta["branches"].items()
            refs = [{"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha} for name, sha in heads]
            return 200, {}, {"branches": refs, "converts": [], "tags": [], "pullRequests": []}
        if not authed:  # everything below writes
            raise HubError(401, NO_CREDENTIALS, "RepoNotFound")
        if method == "PUT" and action == "settings":
            if "visibility" in body or "private" in body:
                meta["private"] = body.get("visibility", "private" if body.get("private") else "public") == "private"
            return 200, {}, {}
        if query.get("create_pr"):
            raise HubError(400, "Pull requests are not supported by the test hub")
        if method == "POST" and action == "preupload" and arg:
            branch, sha = self._resolve(meta, arg)
            current = self._files(key, branch)
            files = []
            for f in body["files"]:
                oid = git_blob_sha(current[f["path"]]) if f["path"] in current else None
                files.append({"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": oid})
            return 200, {}, {"files": files, "commitOid": sha}
        if method == "POST" and action == "commit" and arg:
            return self._commit(key, meta, arg, body)
        if method == "POST" and action == "branch" and arg:
            if arg in meta["branches"]:
                raise HubError(409, f"Reference already exists: refs/heads/{arg}")
            source, sha = self._resolve(meta, body.get("startingPoint") or "main")
            shutil.copytree(self._dir(key, source), self._dir(key, arg))
            meta["branches"][arg] = sha
            return 200, {}, {}
        if method == "DELETE" and action == "branch" and arg:
            branch, _ = self._resolve(meta, arg)
            del meta["branches"][branch]
            shutil.rmtree(self._dir(key, branch))
            return 200, {}, {}
        if method == "PUT" and action == "settings":
            if "private" in body or "visibility" in body:
                meta["private"] = body.get("private") is True or body.get("visibility") == "private"
            return 200, {}, {}
        raise HubError(404, f"Not implemented by the test hub: {method} {action}")

    def _commit(self, key: tuple[str, str], meta: dict, revision: str, lines: list):
        branch, sha = self._resolve(meta, revision)
        header = next((line["value"] for line in lines if line["key"] == "header"), {})
        if header.get("parentCommit") and not sha.startswith(header["parentCommit"]):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = self._files(key, branch)
        for line in lines:
            op, value = line["key"], line["value"]
            path = value.get("path", "").strip("/")
            if op != "header" and (not path or ".." in path.split("/")):
                raise HubError(400, f"Invalid path: {path!r}")
            if op == "file":
                content = value["content"]
                files[path] = base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
            elif op == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif op == "deletedFolder":
                doomed = [p for p in files if p.startswith(path + "/")]
                if not doomed:
                    raise HubError(404, "A folder with this name doesn't exist", "EntryNotFound")
                for p in doomed:
                    del files[p]
            elif op != "header":  # lfsFile: never asked for, since preupload always answers "regular"
                raise HubError(400, f"Unsupported commit operation {op!r}: the test hub takes regular files")
        sha = self._write(key, branch, files)
        commit_url = f"{self._repo_url(key)}/commit/{sha}"
        return 200, {}, {"success": True, "commitOid": sha, "commitUrl": commit_url, "hookOutput": ""}

    def _resolve_file(self, method: str, parts: list, headers: dict, authed: bool):
        repo_type = parts[0][:-1] if parts[0] in ("datasets", "spaces") else "model"
        parts = parts if repo_type == "model" else parts[1:]
        if method not in ("GET", "HEAD") or len(parts) < 5 or parts[2] != "resolve":
            raise HubError(404, "Not found")
        key, path = (repo_type, f"{parts[0]}/{parts[1]}"), "/".join(parts[4:])
        branch, sha = self._resolve(self._lookup(key, authed), parts[3])
        file = self._dir(key, branch) / path
        if ".." in path.split("/") or not file.is_file():
            raise HubError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": sha})
        data = file.read_bytes()
        out = {
            "X-Repo-Commit": sha,
            "ETag": f'"{git_blob_sha(data)}"',
            "Content-Type": "application/octet-stream",
        }
        if m := re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("range", "")):
            start, end = int(m[1]), min(int(m[2] or len(data) - 1), len(data) - 1)
            out["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, out, data[start : end + 1]
        return 200, out, data


def _tree(files: dict[str, bytes], prefix: str, query: dict) -> list[dict]:
    """Entries under `prefix`: its direct children, or with ?recursive=true every file and folder below it."""
    recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
    base = f"{prefix}/" if prefix else ""
    entries: dict[str, dict] = {}
    for path, data in files.items():
        if not path.startswith(base):
            continue
        segments = path[len(base) :].split("/")
        for depth in range(1, len(segments) if recursive else min(2, len(segments))):
            folder = base + "/".join(segments[:depth])
            entries[folder] = {"type": "directory", "oid": git_blob_sha(folder.encode()), "path": folder}
        if recursive or len(segments) == 1:
            entries[path] = {"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": path}
    if prefix and not entries:
        raise HubError(404, f"{prefix} does not exist", "EntryNotFound")
    return [entries[key] for key in sorted(entries)]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every response carries a Content-Length
    disable_nagle_algorithm = True  # headers and body are separate writes: avoid 40 ms delayed-ACK stalls
    hub: HubServer

    def log_message(self, format, *args) -> None:  # silent: never print requests (nor tokens)
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        self.rfile.readline()
        return b"".join(chunks)

    def _handle(self) -> None:
        url, raw = urlsplit(self.path), self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        body = None
        try:
            if "ndjson" in headers.get("content-type", ""):
                body = [json.loads(line) for line in raw.splitlines() if line.strip()]
            elif raw:
                body = json.loads(raw)
        except ValueError:
            pass
        query = parse_qs(url.query)
        entry = {"method": self.command, "path": url.path, "query": query, "headers": headers, "json": body}
        self.hub.requests.append(entry)
        try:
            status, out, payload = self.hub._route(self.command, url.path, query, headers, body)
        except HubError as e:
            status, payload = e.status, {"error": e.message, **e.extra}
            out = {**e.headers, "X-Error-Message": e.message}
            if e.code:
                out["X-Error-Code"] = e.code
        except Exception as e:  # a bug of the test hub: answer 500 rather than leave the client hanging
            status, out, payload = 500, {}, {"error": f"{type(e).__name__}: {e}"}
        entry["status"] = status
        if not isinstance(payload, bytes):
            payload, out["Content-Type"] = json.dumps(payload).encode(), "application/json"
        self.send_response(status)
        for key, value in out.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _handle


def patch_hf_hub(monkeypatch, url: str, token: str | None = "hf_test_token") -> None:
    """Point this process's `huggingface_hub` (already imported) at `url`: online, without Xet, with `token`.

    ``HF_ENDPOINT`` alone is not enough once ``huggingface_hub`` is imported: it was copied into
    ``constants.ENDPOINT``, ``constants.HUGGINGFACE_CO_URL_TEMPLATE`` (``hf_hub_download``) and the
    module-level ``hf_api.api`` behind ``create_repo``, ``upload_folder``, ... (an ``HfApi()`` built earlier
    keeps its own endpoint); ``HF_HUB_OFFLINE`` / ``HF_HUB_DISABLE_XET`` were read into constants, and
    ``datasets.config`` (imported here if installed) has copies. ``RepoCard.validate`` hard-codes
    ``https://huggingface.co``, so the shared httpx client is swapped for one that reroutes the Hub's hosts
    here. Everything goes through `monkeypatch`, hence is undone after the test.
    """
    import httpx
    from huggingface_hub import constants, hf_api
    from huggingface_hub.utils import _http

    env = {"HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", token)
    template = "/{repo_id}/resolve/{revision}/{filename}"
    for name, value in {"ENDPOINT": url, "HUGGINGFACE_CO_URL_TEMPLATE": url + template}.items():
        monkeypatch.setattr(constants, name, value)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hf_api.api, "endpoint", url)
    try:  # imported now, so that its copies are patched here and restored after the test
        from datasets import config
    except ImportError:  # datasets is not installed
        config = None
    if config is not None:
        monkeypatch.setattr(config, "HF_ENDPOINT", url)
        monkeypatch.setattr(config, "HUB_DATASETS_URL", url + "/datasets/{repo_id}/resolve/{revision}/{path}")
        monkeypatch.setattr(config, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(config, "HF_DATASETS_OFFLINE", False)

    target = httpx.URL(url)

    class RerouteHubHosts(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            if request.url.host in HUB_HOSTS:
                request.url = request.url.copy_with(scheme=target.scheme, host=target.host, port=target.port)
                request.headers["Host"] = target.netloc.decode()
            return super().handle_request(request)

    def client_factory() -> httpx.Client:  # as huggingface_hub's default one, plus the rerouting
        hooks = {"request": [_http.hf_request_event_hook]}
        transport = RerouteHubHosts()
        return httpx.Client(transport=transport, event_hooks=hooks, follow_redirects=True, timeout=None)

    monkeypatch.setattr(_http, "_GLOBAL_CLIENT_FACTORY", client_factory)
    monkeypatch.setattr(_http, "_GLOBAL_CLIENT", None)
