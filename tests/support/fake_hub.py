"""A small Hugging Face Hub on loopback, for upload tests: the four endpoints huggingface_hub's
create_repo + create_commit use when every file is small.

    hub = FakeHub(token="hf_...").start()
    HfApi(endpoint=hub.url, token=...).create_repo(...); ...create_commit(...)
    hub.repos      # {"org/name": {"private": bool}}
    hub.commits    # [{"repo", "summary", "files": {path: bytes}}] : one entry per commit
    hub.requests   # every request: (method, path)
    hub.stop()

Endpoints, with the shapes huggingface_hub 2.x sends and expects:
- POST /api/repos/create {"name", "organization", "visibility"?, "type"} -> {"url"}; 409 when it exists;
- POST /api/validate-yaml {"content"} -> the README's front matter parsed as YAML (400 when it is not);
- POST /api/models/ORG/NAME/preupload/REV {"files": [{"path", "sample", "size"}]} -> every file "regular"
  (so contents travel inside the commit; no LFS or Xet transfer is emulated);
- POST /api/models/ORG/NAME/commit/REV, NDJSON: a header line, then one base64 "file" line per file ->
  {"commitUrl", "commitOid"}.
A request without `Authorization: Bearer <token>` gets 401; an unknown endpoint 404 (recorded).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import yaml

_REPO_PATH = re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/(?P<op>preupload|commit)/(?P<rev>[^/?]+)")


class FakeHub:
    def __init__(self, token: str) -> None:
        self.token = token
        self.repos: dict[str, dict[str, Any]] = {}
        self.commits: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                hub.requests.append(("POST", self.path))
                if self.headers.get("Authorization") != f"Bearer {hub.token}":
                    return self._send(401, {"error": "Invalid credentials"})
                status, reply = hub._handle(self.path, body)
                self._send(status, reply)

            def do_GET(self) -> None:  # noqa: N802
                hub.requests.append(("GET", self.path))
                self._send(404, {"error": "not emulated"})

            def _send(self, status: int, reply: dict[str, Any]) -> None:
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _handle(self, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
        if path == "/api/repos/create":
            payload = json.loads(body)
            repo = f"{payload['organization']}/{payload['name']}"
            if repo in self.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo}"}
            self.repos[repo] = {"private": payload.get("visibility") == "private", "type": payload.get("type")}
            return 200, {"url": f"{self.url}/{repo}"}
        if path == "/api/validate-yaml":
            content = json.loads(body)["content"]
            front = re.match(r"^---\n(.*?)\n---", content, re.S)
            try:
                yaml.safe_load(front.group(1) if front else "")
            except yaml.YAMLError as exc:
                return 400, {"errors": [{"message": str(exc)}]}
            return 200, {"errors": [], "warnings": []}
        match = _REPO_PATH.match(path)
        if match is None or match["repo"] not in self.repos:
            return 404, {"error": f"no such repo or endpoint: {path}"}
        if match["op"] == "preupload":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                                   for f in files]}
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(x["value"] for x in lines if x["key"] == "header")
        files = {x["value"]["path"]: base64.b64decode(x["value"]["content"]) for x in lines if x["key"] == "file"}
        others = [x["key"] for x in lines if x["key"] not in ("header", "file")]
        if others:
            return 400, {"error": f"operations not emulated: {others}"}
        oid = hashlib.sha1(body).hexdigest()
        self.commits.append({"repo": match["repo"], "revision": match["rev"], "summary": header["summary"],
                             "files": files})
        return 200, {"commitUrl": f"{self.url}/{match['repo']}/commit/{oid}", "commitOid": oid}
