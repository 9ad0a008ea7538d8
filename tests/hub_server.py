"""A small stand-in for the Hugging Face Hub on 127.0.0.1: the endpoints huggingface_hub's
create_repo, create_branch and create_commit use, so the real client does the talking."""

from __future__ import annotations

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "hf_qlcodeTestToken0123456789"


class FakeHub:
    def __init__(self, user: str = "alice"):
        self.user = user
        self.repos: dict[str, dict] = {}  # repo_id -> {"private": bool, "files": {path: bytes}, "branches": set}
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, headers)
        self.drop_commits = 0  # close the connection on this many commit requests (a network failure)
        self.commit_attempts = 0
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def do_POST(self):  # noqa: N802
                hub.requests.append(("POST", self.path, dict(self.headers)))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    return self._send(401, {"error": "Invalid credentials"})
                body = self._body()
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts[:3] == ["api", "repos", "create"]:
                    req = json.loads(body)
                    if req.get("organization") not in (None, hub.user):
                        return self._send(403, {"error": "You don't have the rights to create a model under this namespace"})
                    repo = f"{req.get('organization') or hub.user}/{req['name']}"
                    hub.repos.setdefault(repo, {"private": req.get("visibility") == "private", "files": {}, "branches": {"main"}})
                    return self._send(200, {"url": f"{hub.endpoint}/{repo}", "name": repo})
                if parts[:2] == ["api", "validate-yaml"]:
                    return self._send(200, {"errors": [], "warnings": []})
                if parts[:2] == ["api", "models"] and len(parts) >= 6:
                    repo, action, rev = f"{parts[2]}/{parts[3]}", parts[4], "/".join(parts[5:])
                    if repo not in hub.repos:
                        return self._send(404, {"error": "Repository not found"})
                    if action == "preupload":
                        files = json.loads(body)["files"]
                        return self._send(200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                                          for f in files]})
                    if action == "branch":
                        hub.repos[repo]["branches"].add(rev)
                        return self._send(200, {})
                    if action == "commit":
                        hub.commit_attempts += 1
                        if hub.drop_commits > 0:
                            hub.drop_commits -= 1
                            self.close_connection = True
                            self.connection.close()
                            return None
                        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                        for line in lines:
                            if line["key"] == "file":
                                hub.repos[repo]["files"][line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                        return self._send(200, {"commitUrl": f"{hub.endpoint}/{repo}/commit/0123abc", "commitOid": "0123abc"})
                return self._send(404, {"error": f"unknown endpoint {self.path}"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
