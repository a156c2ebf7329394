"""`cbert download` against a stand-in of the Hugging Face Hub on loopback (HF_ENDPOINT): the real
huggingface_hub client and code path (repo info, tree listing, HEAD + GET of each file), no mocks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

import cbert

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class Hub:
    """repo id -> {file name: bytes}, served at one commit; records every request it answers."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code: int, body: bytes, headers: dict | None = None, head: bool = False):
                self.send_response(code)
                for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
                    self.send_header(k, v)
                self.end_headers()
                if not head:
                    self.wfile.write(body)

            def _json(self, obj, code=200, headers=None, head=False):
                self._send(code, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})},
                           head)

            def _route(self, head: bool):
                path = unquote(urlparse(self.path).path)
                hub.requests.append(f"{self.command} {path}")
                not_found = {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}
                if path.startswith("/api/models/"):
                    rest = path[len("/api/models/"):]
                    for kind in ("/revision/", "/tree/"):
                        if kind in rest:
                            repo, rev = rest.split(kind, 1)
                            break
                    else:  # /api/models/{repo}: the default branch
                        repo, rev, kind = rest, "main", "/revision/"
                    if repo not in hub.repos:
                        return self._json({"error": "Repository not found"}, 404, not_found, head)
                    if rev not in ("main", COMMIT):
                        return self._json({"error": "Invalid rev id"}, 404, {"X-Error-Code": "RevisionNotFound"},
                                          head)
                    files = hub.repos[repo]
                    if kind == "/revision/":
                        return self._json({"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                                           "siblings": [{"rfilename": f} for f in files]}, head=head)
                    return self._json([{"type": "file", "path": f, "size": len(b), "oid": _git_oid(b)}
                                       for f, b in files.items()], head=head)
                # /{owner}/{name}/resolve/{rev}/{file}
                parts = path.strip("/").split("/")
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, rev, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                    if repo not in hub.repos or name not in hub.repos[repo]:
                        return self._send(404, b"not found", {"X-Error-Code": "EntryNotFound"}, head)
                    body = hub.repos[repo][name]
                    return self._send(200, body, {"ETag": f'"{_git_oid(body)}"', "X-Repo-Commit": COMMIT,
                                                  "Content-Type": "application/octet-stream"}, head)
                return self._send(404, b"no such route", None, head)

            def do_GET(self):
                self._route(head=False)

            def do_HEAD(self):
                self._route(head=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture(scope="module")
def hub(checkpoints):
    folder, _ = checkpoints("head16_pretrain")
    files = {n: (Path(folder) / n).read_bytes() for n in ("config.json", "model.safetensors", "vocab.txt",
                                                          "tokenizer_config.json")}
    files["README.md"] = b"# a fixture repository\n"
    files["flax_model.msgpack"] = b"never downloaded"
    h = Hub({"fixture/tiny-bert": files, "emilyalsentzer/Bio_ClinicalBERT": files})
    yield h, folder
    h.close()


def run(hub_url: str, tmp_path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_ENDPOINT": hub_url, "HF_HOME": str(tmp_path / "hf_home"),
           "HF_HUB_CACHE": str(tmp_path / "hf_cache"), "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_XET": "1", **(env or {})}
    env.pop("HF_TOKEN", None)
    return subprocess.run([sys.executable, "-m", "cbert.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_download_repo_then_prepare(hub, tmp_path):
    h, folder = hub
    h.requests.clear()
    r = run(h.url, tmp_path, "download", "fixture/tiny-bert", str(tmp_path / "out"), "--revision", "main")
    assert r.returncode == 0, r.stderr
    assert "BertForPreTraining" in r.stdout
    assert "Fetching 4 files: 100%" in r.stderr  # huggingface_hub's progress bar
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors", "tokenizer.json"]
    # the real client path: repo info, tree listing, then each wanted file; never the flax weights or the README
    assert "GET /api/models/fixture/tiny-bert/revision/main" in h.requests
    assert any(q.startswith("GET /fixture/tiny-bert/resolve/") and q.endswith("model.safetensors") for q in h.requests)
    assert not any("flax_model" in q or "README" in q for q in h.requests)
    cached = list((tmp_path / "hf_cache").glob("models--fixture--tiny-bert/snapshots/*/model.safetensors"))
    assert len(cached) == 1
    a = cbert.load(tmp_path / "out", backend="numpy").forward([[2, 7, 9, 3]]).last_hidden_state
    b = cbert.load(folder, backend="numpy").forward([[2, 7, 9, 3]]).last_hidden_state
    assert (a == b).all()


def test_preset_resolves_to_its_repository(hub, tmp_path):
    h, _ = hub
    h.requests.clear()
    r = run(h.url, tmp_path, "download", "bio-clinicalbert", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert any(q.startswith("GET /api/models/emilyalsentzer/Bio_ClinicalBERT/") for q in h.requests)
    assert (tmp_path / "out" / "tokenizer.json").is_file()


@pytest.mark.parametrize("args,message", [
    (("no-such-preset",), "unknown preset 'no-such-preset': presets are bio-clinicalbert"),
    (("fixture/missing",), "fixture/missing: no such repository"),
    (("fixture/tiny-bert", "--revision", "v9"), "no revision 'v9'"),
])
def test_download_errors(hub, tmp_path, args, message):
    h, _ = hub
    repo, *rest = args
    r = run(h.url, tmp_path, "download", repo, str(tmp_path / "out"), *rest)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_without_huggingface_hub(hub, tmp_path):
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nclass B:\n    def find_spec(self, name, *a):\n"
        "        if name == 'huggingface_hub': raise ImportError('blocked')\nsys.meta_path.insert(0, B())\n")
    r = run(hub[0].url, tmp_path, "download", "fixture/tiny-bert", str(tmp_path / "out"),
            env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2
    assert 'cbert download needs huggingface_hub' in r.stderr and 'pip install "cbert[hub]"' in r.stderr
