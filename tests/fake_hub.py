"""A tiny stand-in for the Hugging Face Hub on 127.0.0.1, for tests that must never touch the network.

It answers the few routes the real `huggingface_hub` client (2.x) calls for dataset repos, found by
logging the client's requests:

- `GET  /api/datasets/{org}/{name}/tree/{revision}[/{path}]?recursive=...`  (list_repo_files / list_repo_tree)
- `GET  /api/datasets/{org}/{name}/revision/{revision}`                     (dataset_info, snapshot_download)
- `HEAD /datasets/{org}/{name}/resolve/{revision}/{path}`                    (hf_hub_download: metadata)
- `GET  /datasets/{org}/{name}/resolve/{revision}/{path}`                    (hf_hub_download: content)

and the same for model repos (`/api/models/...`, `/{org}/{name}/resolve/...`), whose files are added with
`add_model_file` (snapshot_download of a model: its info, then each file's HEAD and GET).

File responses carry the headers the client reads: `X-Repo-Commit`, `ETag` and `Content-Length`.
Point `HF_ENDPOINT` at `server.url`, download once into a temporary `HF_HOME`, then re-run with
`HF_HUB_OFFLINE=1` to exercise the client's offline cache path.

`stall_on(substring)` makes content downloads of matching paths block until `release()`: a test can
kill a conversion while it is provably in the middle of its work.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

DATASET, MODEL = "dataset", "model"


class FakeHub:
    """Repos held in memory: `repos` (datasets) and `model_repos`, each {repo_id: {revision: {path: bytes}}}."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}
        self.model_repos: dict[str, dict[str, dict[str, bytes]]] = {}
        self.requests: list[tuple[str, str]] = []
        self._stall_substring: str | None = None
        self._released = threading.Event()
        self.stalled = threading.Event()  # set when a stalled download has started
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ content

    def add_file(self, repo_id: str, path_in_repo: str, data: bytes, revision: str = "main") -> None:
        self.repos.setdefault(repo_id, {}).setdefault(revision, {})[path_in_repo] = data

    def add_local_file(self, repo_id: str, path_in_repo: str, local: Path, revision: str = "main") -> None:
        self.add_file(repo_id, path_in_repo, Path(local).read_bytes(), revision)

    def add_model_file(self, repo_id: str, path_in_repo: str, data: bytes, revision: str = "main") -> None:
        self.model_repos.setdefault(repo_id, {}).setdefault(revision, {})[path_in_repo] = data

    def add_model_folder(self, repo_id: str, folder: Path, revision: str = "main") -> None:
        """Every file under a local folder, at its relative path."""
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            self.add_model_file(repo_id, path.relative_to(folder).as_posix(), path.read_bytes(), revision)

    def _store(self, kind: str) -> dict[str, dict[str, dict[str, bytes]]]:
        return self.model_repos if kind == MODEL else self.repos

    def commit(self, repo_id: str, revision: str, kind: str = DATASET) -> str:
        files = self._store(kind)[repo_id][revision]
        digest = hashlib.sha1(repo_id.encode() + revision.encode())
        for path in sorted(files):
            digest.update(path.encode() + hashlib.sha1(files[path]).digest())
        return digest.hexdigest()

    # ------------------------------------------------------------ control

    def stall_on(self, substring: str) -> None:
        self._stall_substring = substring
        self._released.clear()
        self.stalled.clear()

    def release(self) -> None:
        self._stall_substring = None
        self._released.set()

    def paths_requested(self, method: str | None = None) -> list[str]:
        return [path for m, path in self.requests if method is None or m == method]

    # ------------------------------------------------------------ server

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # keep test output clean
                return None

            def do_HEAD(self) -> None:
                hub._handle(self, head=True)

            def do_GET(self) -> None:
                hub._handle(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ------------------------------------------------------------ routes

    def _handle(self, handler: BaseHTTPRequestHandler, head: bool) -> None:
        method = "HEAD" if head else "GET"
        split = urlsplit(handler.path)
        self.requests.append((method, split.path + (f"?{split.query}" if split.query else "")))
        # Split before unquoting: a revision such as refs%2Fconvert%2Fparquet is one segment.
        parts = [unquote(p) for p in split.path.strip("/").split("/")]
        try:
            if len(parts) >= 6 and parts[:2] == ["api", "datasets"] and parts[4] == "tree":
                repo_id, revision, prefix = f"{parts[2]}/{parts[3]}", parts[5], "/".join(parts[6:])
                self._send_json(
                    handler,
                    self._tree(repo_id, revision, prefix, "recursive=true" in split.query.lower()),
                    head,
                )
            elif len(parts) >= 6 and parts[:2] == ["api", "datasets"] and parts[4] == "revision":
                repo_id, revision = f"{parts[2]}/{parts[3]}", "/".join(parts[5:])
                self._send_json(handler, self._info(repo_id, revision), head)
            elif len(parts) >= 6 and parts[0] == "datasets" and parts[3] == "resolve":
                repo_id, revision, path = f"{parts[1]}/{parts[2]}", parts[4], "/".join(parts[5:])
                self._send_file(handler, repo_id, revision, path, head)
            elif len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "tree":
                repo_id, revision, prefix = f"{parts[2]}/{parts[3]}", parts[5], "/".join(parts[6:])
                recursive = "recursive=true" in split.query.lower()
                self._send_json(handler, self._tree(repo_id, revision, prefix, recursive, MODEL), head)
            elif len(parts) >= 6 and parts[:2] == ["api", "models"] and parts[4] == "revision":
                repo_id, revision = f"{parts[2]}/{parts[3]}", "/".join(parts[5:])
                self._send_json(handler, self._info(repo_id, revision, MODEL), head)
            elif len(parts) >= 5 and parts[2] == "resolve" and parts[0] not in ("api", "datasets"):
                repo_id, revision, path = f"{parts[0]}/{parts[1]}", parts[3], "/".join(parts[4:])
                self._send_file(handler, repo_id, revision, path, head, MODEL)
            else:
                self._send_error(handler, 404, "Not Found", head)
        except KeyError:
            self._send_error(handler, 404, "Repository or revision not found", head, error_code="RepoNotFound")

    def _files(self, repo_id: str, revision: str, kind: str = DATASET) -> dict[str, bytes]:
        revisions = self._store(kind)[repo_id]
        if revision in revisions:
            return revisions[revision]
        for name in revisions:  # a commit hash names the revision it is the commit of
            if self.commit(repo_id, name, kind) == revision:
                return revisions[name]
        raise KeyError(revision)

    def _tree(self, repo_id: str, revision: str, prefix: str, recursive: bool, kind: str = DATASET) -> list[dict]:
        files = self._files(repo_id, revision, kind)
        entries, folders = [], set()
        base = prefix.rstrip("/") + "/" if prefix else ""
        for path in sorted(files):
            if not path.startswith(base):
                continue
            rest = path[len(base) :]
            if "/" in rest and not recursive:
                folders.add(base + rest.split("/")[0])
                continue
            if recursive:
                parts = rest.split("/")
                for i in range(1, len(parts)):
                    folders.add(base + "/".join(parts[:i]))
            data = files[path]
            entries.append({"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": path})
        return [{"type": "directory", "oid": "0" * 40, "size": 0, "path": f} for f in sorted(folders)] + entries

    def _info(self, repo_id: str, revision: str, kind: str = DATASET) -> dict:
        files = self._files(repo_id, revision, kind)
        revisions = self._store(kind)[repo_id]
        name = (
            revision
            if revision in revisions
            else next(r for r in revisions if self.commit(repo_id, r, kind) == revision)
        )
        return {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "author": repo_id.split("/")[0],
            "sha": self.commit(repo_id, name, kind),
            "private": False,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "lastModified": "2024-01-01T00:00:00.000Z",
            "createdAt": "2024-01-01T00:00:00.000Z",
            "siblings": [{"rfilename": path} for path in sorted(files)],
        }

    def _send_json(self, handler: BaseHTTPRequestHandler, payload, head: bool) -> None:
        body = json.dumps(payload).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if not head:
            handler.wfile.write(body)

    def _send_error(self, handler, status: int, message: str, head: bool, error_code: str | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        if error_code:
            handler.send_header("X-Error-Code", error_code)
        handler.send_header("X-Error-Message", message)
        handler.end_headers()
        if not head:
            handler.wfile.write(body)

    def _send_file(self, handler, repo_id: str, revision: str, path: str, head: bool, kind: str = DATASET) -> None:
        files = self._files(repo_id, revision, kind)
        if path not in files:
            self._send_error(handler, 404, "Entry not found", head, error_code="EntryNotFound")
            return
        data = files[path]
        name = revision if revision in self._store(kind)[repo_id] else None
        commit = self.commit(repo_id, name, kind) if name else revision
        if not head and self._stall_substring is not None and self._stall_substring in path:
            self.stalled.set()
            self._released.wait(timeout=120)
        handler.send_response(200)
        handler.send_header("Content-Type", "application/octet-stream")
        handler.send_header("Content-Length", str(len(data)))
        handler.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        handler.send_header("X-Repo-Commit", commit)
        handler.end_headers()
        if not head:
            try:
                handler.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client was killed mid-download
                handler.close_connection = True
