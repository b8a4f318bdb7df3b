"""A stand-in for the Hugging Face Hub, for tests: the part of its HTTP API that huggingface_hub's
`create_repo`, `upload_folder` and `snapshot_download` call, with repositories kept in memory.

    with HubServer() as hub:                        # listens on 127.0.0.1, a free port
        os.environ["HF_ENDPOINT"] = hub.url
        ...
        hub.files("org/name")                       # what a push left there
        hub.commit("org/name", {"config.json": b"{"})   # break a repo on purpose

Endpoints (repo ids are `org/name`; revisions are URL-quoted, e.g. refs%2Fpr%2F1):

    POST /api/repos/create                          create a model repo (409 if it exists)
    POST /api/validate-yaml                         check a README.md's metadata as the Hub does (below)
    POST /api/models/{repo}/branch/{branch}         create a branch from main (409 if it exists)
    POST /api/models/{repo}/discussions             open a pull request: a new refs/pr/N at main
    GET  /api/models/{repo}/discussions/{num}       that pull request
    GET  /api/models/{repo}[/revision/{rev}]        repo info: commit sha and file list
    GET  /api/models/{repo}/tree/{rev}[/{path}]     file listing (?recursive=true)
    POST /api/models/{repo}/preupload/{rev}         upload mode per file: always "regular" (no LFS)
    POST /api/models/{repo}/commit/{rev}            NDJSON commit: header, file (base64), deletedFile;
                                                    ?create_pr=1 commits to a new refs/pr/N instead
    HEAD /{repo}/resolve/{rev}/{path}               ETag, X-Repo-Commit, Content-Length
    GET  /{repo}/resolve/{rev}/{path}               the file

Errors carry the Hub's X-Error-Code header (RepoNotFound, RevisionNotFound, EntryNotFound), which
huggingface_hub turns into RepositoryNotFoundError, RevisionNotFoundError and EntryNotFoundError.
Writes need an `Authorization: Bearer ...` header (any token); reading a private repo does too.
The metadata check is the part of the Hub's model-card schema that diffagent's cards use: a YAML
mapping; `license` a license id the Hub knows; `pipeline_tag` a task it knows; `tags` a list of
strings; `model-index` a list of {name, results: [{task: {type}, dataset: {name, type}, metrics:
[{type, value}]}]}.
Bounded: loopback only, request bodies up to 64 MiB, at most 256 repos, 10 s socket timeouts.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml

MAX_BODY = 64 * 1024 * 1024
MAX_REPOS = 256
# A few of the Hub's license ids and tasks (the full lists are on the Hub): enough to refuse a typo.
LICENSES = {"apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "gpl-3.0", "openrail",
            "other", "unknown"}
TASKS = {"reinforcement-learning", "robotics", "tabular-classification", "text-generation"}
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.onnx filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_oid(data: bytes) -> str:
    """The git object id of a file: what the Hub returns as a regular file's oid and ETag."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    message: str
    files: dict[str, bytes]


@dataclass
class Repo:
    private: bool
    commits: list[Commit] = field(default_factory=list)
    branches: dict[str, str] = field(default_factory=dict)  # name -> commit oid

    def resolve(self, revision: str) -> Commit | None:
        """The commit a branch name or full commit hash points at."""
        oid = self.branches.get(revision, revision)
        return next((c for c in self.commits if c.oid == oid), None)


class HubError(Exception):
    """An error reply: status, X-Error-Code and message."""

    def __init__(self, status: int, code: str | None, message: str, repo_commit: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.repo_commit = status, code, message, repo_commit


class HubServer:
    """An in-memory Hub on 127.0.0.1; a context manager that serves from a daemon thread."""

    def __init__(self, port: int = 0):
        self.repos: dict[str, Repo] = {}
        self.requests: deque[tuple[str, str]] = deque(maxlen=1000)  # (method, path) of recent requests
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler_for(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "HubServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), name="hub-server",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket: later requests get 'connection refused'. Idempotent."""
        if self._thread is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- the store, also used by tests to inspect or damage repos ------------------------------
    def create(self, repo_id: str, private: bool = False) -> None:
        with self._lock:
            if repo_id in self.repos:
                raise HubError(409, None, "You already created this model repo")
            if len(self.repos) >= MAX_REPOS:
                raise HubError(429, None, f"this test server holds at most {MAX_REPOS} repos")
            self.repos[repo_id] = Repo(private)
        self.commit(repo_id, {".gitattributes": GITATTRIBUTES}, "initial commit")

    def commit(self, repo_id: str, changes: dict[str, bytes | None], message: str = "edit",
               branch: str = "main") -> str:
        """Add (bytes) or delete (None) files on `branch`; returns the new commit's oid."""
        with self._lock:
            repo = self._repo(repo_id)
            parent = repo.resolve(branch) if repo.branches else None
            if repo.branches and parent is None:
                raise HubError(404, "RevisionNotFound", f"Invalid rev id: {branch}")
            files = dict(parent.files) if parent else {}
            for path, data in changes.items():
                if data is None:
                    files.pop(path, None)
                else:
                    files[path] = data
            digest = hashlib.sha1(json.dumps([parent.oid if parent else None, message, len(repo.commits),
                                              sorted((p, git_blob_oid(d)) for p, d in files.items())]).encode())
            commit = Commit(digest.hexdigest(), message, files)
            repo.commits.append(commit)
            repo.branches[branch] = commit.oid
            return commit.oid

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        with self._lock:
            return dict(self._commit(self._repo(repo_id), revision).files)

    def _repo(self, repo_id: str) -> Repo:
        repo = self.repos.get(repo_id)
        if repo is None:
            raise HubError(404, "RepoNotFound", f"Repository Not Found for url: {repo_id}")
        return repo

    @staticmethod
    def _commit(repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit


def metadata_errors(metadata: dict) -> list[str]:
    """What the Hub's validator would say about a model card's metadata (the part described above)."""
    errors = []
    if "license" in metadata and metadata["license"] not in LICENSES:
        errors.append(f"license: {metadata['license']!r} is not a license id the Hub knows")
    if "pipeline_tag" in metadata and metadata["pipeline_tag"] not in TASKS:
        errors.append(f"pipeline_tag: {metadata['pipeline_tag']!r} is not a task the Hub knows")
    tags = metadata.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        errors.append("tags: must be a list of strings")
    for model in metadata.get("model-index", []):
        results = model.get("results") if isinstance(model, dict) else None
        if not isinstance(model, dict) or not isinstance(model.get("name"), str) or not isinstance(results, list):
            errors.append("model-index: each entry needs a name and a list of results")
            continue
        for result in results:
            task, dataset = result.get("task", {}), result.get("dataset", {})
            metrics = result.get("metrics")
            if (not isinstance(task, dict) or "type" not in task or not isinstance(dataset, dict)
                    or not {"name", "type"} <= set(dataset) or not isinstance(metrics, list)
                    or not all(isinstance(m, dict) and {"type", "value"} <= set(m) for m in metrics)):
                errors.append("model-index: a result needs task.type, dataset.name and dataset.type, and metrics "
                              "with a type and a value")
    return errors


def _handler_for(hub: HubServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        timeout = 10  # a stalled client cannot hold a thread forever

        def log_message(self, *args) -> None:  # keep pytest output clean
            pass

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_HEAD(self) -> None:
            self._dispatch("HEAD")

        def do_POST(self) -> None:
            self._dispatch("POST")

        # --- plumbing ---------------------------------------------------------------------------
        def _dispatch(self, method: str) -> None:
            split = urlsplit(self.path)
            hub.requests.append((method, split.path))
            # Split before unquoting: a quoted revision such as refs%2Fpr%2F1 is one segment.
            parts = [unquote(p) for p in split.path.strip("/").split("/")]
            query = {k: v[-1] for k, v in parse_qs(split.query).items()}
            try:
                body = self._read_body()
                self._route(method, parts, query, body)
            except HubError as err:
                self._send_error(err)

        def _read_body(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                raise HubError(413, None, f"request body over {MAX_BODY} bytes")
            return self.rfile.read(length) if length else b""

        def _authorized(self) -> bool:
            return self.headers.get("Authorization", "").startswith("Bearer ")

        def _require_auth(self) -> None:
            if not self._authorized():
                raise HubError(401, None, "Invalid username or password.")

        def _readable(self, repo_id: str) -> Repo:
            repo = hub._repo(repo_id)
            if repo.private and not self._authorized():
                raise HubError(401, "RepoNotFound", f"Repository Not Found for url: {repo_id}")
            return repo

        def _send(self, status: int, payload: bytes, content_type: str, headers: dict[str, str] | None = None,
                  body: bool = True) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if body:
                self.wfile.write(payload)

        def _send_json(self, obj, status: int = 200) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def _send_error(self, err: HubError) -> None:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            if err.repo_commit:
                headers["X-Repo-Commit"] = err.repo_commit
            self._send(err.status, json.dumps({"error": err.message}).encode(), "application/json", headers,
                       body=self.command != "HEAD")

        # --- the API ------------------------------------------------------------------------------
        def _route(self, method: str, parts: list[str], query: dict[str, str], body: bytes) -> None:
            if method == "POST" and parts == ["api", "repos", "create"]:
                return self._create_repo(body)
            if method == "POST" and parts == ["api", "validate-yaml"]:
                return self._validate_yaml(body)
            if method == "POST" and parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "branch":
                return self._create_branch(f"{parts[2]}/{parts[3]}", parts[5])
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id, action, rest = f"{parts[2]}/{parts[3]}", parts[4:5], parts[5:]
                if method == "GET" and not action:
                    return self._repo_info(repo_id, "main")
                if method == "GET" and action == ["revision"] and len(rest) == 1:
                    return self._repo_info(repo_id, rest[0])
                if method == "GET" and action == ["tree"] and rest:
                    recursive = query.get("recursive", "").lower() == "true"
                    return self._tree(repo_id, rest[0], "/".join(rest[1:]), recursive)
                if method == "POST" and action == ["preupload"] and len(rest) == 1:
                    return self._preupload(repo_id, rest[0], body)
                if method == "POST" and action == ["discussions"] and not rest:
                    return self._open_pull_request(repo_id)
                if method == "GET" and action == ["discussions"] and len(rest) == 1:
                    return self._pull_request(repo_id, int(rest[0]))
                if method == "POST" and action == ["commit"] and len(rest) == 1:
                    return self._create_commit(repo_id, rest[0], body, query.get("create_pr") == "1")
            if method in ("GET", "HEAD") and len(parts) >= 5 and parts[2] == "resolve":
                return self._resolve(f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:]), method == "GET")
            raise HubError(404, None, f"this test server does not implement {method} /{'/'.join(parts)}")

        def _create_repo(self, body: bytes) -> None:
            self._require_auth()
            payload = json.loads(body)
            if payload.get("type", "model") != "model":
                raise HubError(400, None, "this test server holds model repos only")
            repo_id = f"{payload['organization']}/{payload['name']}"
            private = payload.get("visibility") == "private" or bool(payload.get("private"))
            try:
                hub.create(repo_id, private)
            except HubError as err:
                if err.status == 409:
                    self._send(409, json.dumps({"error": err.message, "url": f"{hub.url}/{repo_id}"}).encode(),
                               "application/json")
                    return
                raise
            self._send_json({"url": f"{hub.url}/{repo_id}", "name": repo_id})

        def _validate_yaml(self, body: bytes) -> None:
            # JSON, or a form as huggingface_hub sent it before 1.0 (the Hub takes both)
            form = self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded")
            content = parse_qs(body.decode())["content"][-1] if form else json.loads(body)["content"]
            errors = []
            if content.startswith("---\n"):
                front, sep, _ = content[4:].partition("\n---")
                try:
                    metadata = yaml.safe_load(front) if sep else None
                    if not sep or not isinstance(metadata, dict):
                        errors.append("the front matter must be a YAML mapping between --- lines")
                    else:
                        errors += metadata_errors(metadata)
                except yaml.YAMLError as err:
                    errors.append(f"invalid YAML: {err}")
            self._send_json({"errors": [{"message": e} for e in errors], "warnings": []}, 400 if errors else 200)

        def _create_branch(self, repo_id: str, branch: str) -> None:
            self._require_auth()
            repo = hub._repo(repo_id)
            with hub._lock:
                if branch in repo.branches:
                    raise HubError(409, None, f"Reference already exists: refs/heads/{branch}")
                repo.branches[branch] = repo.branches["main"]
            self._send_json({})

        def _repo_info(self, repo_id: str, revision: str) -> None:
            repo = self._readable(repo_id)
            commit = hub._commit(repo, revision)
            self._send_json({"id": repo_id, "modelId": repo_id, "sha": commit.oid, "private": repo.private,
                             "siblings": [{"rfilename": path} for path in sorted(commit.files)]})

        def _tree(self, repo_id: str, revision: str, prefix: str, recursive: bool) -> None:
            commit = hub._commit(self._readable(repo_id), revision)
            base = f"{prefix}/" if prefix else ""
            entries, folders = [], set()
            for path in sorted(commit.files):
                if not path.startswith(base):
                    continue
                rest = path[len(base):]
                if "/" in rest and not recursive:
                    folders.add(base + rest.split("/")[0])
                    continue
                for i, _ in enumerate(rest.split("/")[:-1]):  # the folders on the way, when recursive
                    folders.add(base + "/".join(rest.split("/")[:i + 1]))
                data = commit.files[path]
                entries.append({"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": path})
            entries += [{"type": "directory", "oid": hashlib.sha1(f.encode()).hexdigest(), "size": 0, "path": f}
                        for f in sorted(folders)]
            self._send_json(entries)

        def _preupload(self, repo_id: str, revision: str, body: bytes) -> None:
            self._require_auth()
            commit = hub._commit(hub._repo(repo_id), revision)
            files = []
            for item in json.loads(body)["files"]:
                existing = commit.files.get(item["path"])
                files.append({"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
                              "oid": git_blob_oid(existing) if existing is not None else None})
            self._send_json({"files": files, "commitOid": commit.oid})

        def _open_pull_request(self, repo_id: str) -> None:
            self._require_auth()
            repo = hub._repo(repo_id)
            with hub._lock:
                number = 1 + sum(name.startswith("refs/pr/") for name in repo.branches)
                repo.branches[f"refs/pr/{number}"] = repo.branches["main"]
            self._send_json({"num": number})

        def _pull_request(self, repo_id: str, number: int) -> None:
            hub._commit(self._readable(repo_id), f"refs/pr/{number}")  # 404s for a pull request never opened
            self._send_json({"title": "pull request", "num": number, "createdAt": "2026-01-01T00:00:00.000Z",
                             "status": "draft", "repo": {"name": repo_id, "type": "model"}, "isPullRequest": True,
                             "events": [], "changes": {"base": "refs/heads/main"}, "filesWithConflicts": []})

        def _create_commit(self, repo_id: str, revision: str, body: bytes, create_pr: bool) -> None:
            self._require_auth()
            repo = hub._repo(repo_id)
            base = hub._commit(repo, revision)  # 404s before anything is changed
            message, changes = "", {}
            for line in body.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                key, value = item["key"], item["value"]
                if key == "header":
                    message = value["summary"]
                elif key == "file":
                    changes[value["path"]] = base64.b64decode(value["content"])
                elif key == "deletedFile":
                    changes[value["path"]] = None
                else:
                    raise HubError(400, None, f"this test server does not support {key!r} commit operations")
            pr_url = None
            if create_pr:  # the change goes to a new refs/pr/N that starts at the revision, as on the Hub
                with hub._lock:
                    number = 1 + sum(name.startswith("refs/pr/") for name in repo.branches)
                    revision = f"refs/pr/{number}"
                    repo.branches[revision] = base.oid
                pr_url = f"{hub.url}/{repo_id}/discussions/{number}"
            oid = hub.commit(repo_id, changes, message, branch=revision)
            self._send_json({"commitUrl": f"{hub.url}/{repo_id}/commit/{oid}", "commitOid": oid,
                             "pullRequestUrl": pr_url})

        def _resolve(self, repo_id: str, revision: str, path: str, with_body: bool) -> None:
            commit = hub._commit(self._readable(repo_id), revision)
            data = commit.files.get(path)
            if data is None:
                raise HubError(404, "EntryNotFound", f"{path} does not exist on {revision}", repo_commit=commit.oid)
            self._send(200, data, "application/octet-stream",
                       {"ETag": f'"{git_blob_oid(data)}"', "X-Repo-Commit": commit.oid}, body=with_body)

    return Handler
