"""A fake Hugging Face hub on 127.0.0.1, speaking what huggingface_hub 2.x calls for
`model_info`, `snapshot_download` and `hf_hub_download`:

- GET  /api/models/{repo}[/revision/{rev}][?blobs=true]   repo info with siblings (+ sizes, LFS)
- GET  /api/models/{repo}/tree/{rev}[/{path}]             recursive tree listing
- HEAD /{repo}/resolve/{rev}/{file}                       ETag, X-Repo-Commit, Content-Length;
                                                          LFS files: 302 to the CDN with
                                                          X-Linked-Etag / X-Linked-Size
- GET  /{repo}/resolve/{rev}/{file}                       the bytes (Range -> 206), or the 302
- GET  /cdn/{sha256} (on a second server, another origin)  LFS bytes, Range -> 206

Like the real hub, the CDN is another origin: huggingface_hub then takes the file metadata from
the redirect itself and drops the Authorization header for the download.

Failure switches: a gated repo answers 401 (no token) or 403 (wrong token) with X-Error-Code
GatedRepo; an unknown repo 404 RepoNotFound; `cut_once[file] = n` closes the connection after n
bytes of that file once; `stall[file] = n` stops sending after n bytes until `release()`;
`ignore_range = True` answers every Range request with 200 and the whole file, as some CDNs do.
Every request is recorded in `requests` for assertions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from .conftest import run_gptoss

LFS_SUFFIXES = (".safetensors", ".bin", ".gguf")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class RepoFile:
    path: str
    data: bytes

    @property
    def lfs(self) -> bool:
        return self.path.endswith(LFS_SUFFIXES)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def pointer(self) -> bytes:
        return (
            f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {len(self.data)}\n"
        ).encode()

    @property
    def blob_id(self) -> str:
        """Git OID: of the LFS pointer for LFS files (as on the hub), else of the content."""
        return git_blob_sha1(self.pointer if self.lfs else self.data)


@dataclass
class Repo:
    repo_id: str
    files: dict[str, RepoFile]
    gated: bool = False
    sha: str = ""

    def __post_init__(self) -> None:
        if not self.sha:
            h = hashlib.sha1(self.repo_id.encode())
            for p in sorted(self.files):
                h.update(p.encode() + self.files[p].blob_id.encode())
            self.sha = h.hexdigest()


@dataclass
class Request:
    server: str  # "hub" or "cdn"
    method: str
    path: str
    headers: dict[str, str]
    status: int = 0
    sent: int = 0  # body bytes written

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


def repo_from_dir(
    repo_id: str, src: Path, extra: dict[str, bytes] | None = None, gated: bool = False
) -> Repo:
    """A repo holding the files under `src` (hidden ones excepted) plus `extra` files."""
    files = {}
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src).as_posix()
        if p.is_file() and not any(part.startswith(".") for part in rel.split("/")):
            files[rel] = RepoFile(rel, p.read_bytes())
    for path, data in (extra or {}).items():
        files[path] = RepoFile(path, data)
    return Repo(repo_id, files, gated=gated)


def gpt_oss_decoys(seed: bytes = b"x") -> dict[str, bytes]:
    """The other files of openai/gpt-oss-20b that a loader must not fetch."""
    weights = hashlib.sha256(seed).digest() * 2048  # 64 KiB
    return {
        "original/config.json": b'{"num_hidden_layers": 2}\n',
        "original/dtypes.json": b"{}\n",
        "original/model.safetensors": weights,
        "metal/model.bin": weights[::-1],
        "README.md": b"# gpt-oss\n",
        "LICENSE": b"Apache-2.0\n",
        "USAGE_POLICY": b"be nice\n",
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
    }


class FakeHub:
    def __init__(self, token: str = "hf_good_token") -> None:
        self.repos: dict[str, Repo] = {}
        self.token = token
        self.requests: list[Request] = []
        self.cut_once: dict[str, int] = {}
        self.stall: dict[str, int] = {}
        self.ignore_range = False
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._hub = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("hub"))
        self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("cdn"))
        for srv in (self._hub, self._cdn):
            srv.daemon_threads = True

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> FakeHub:
        for srv in (self._hub, self._cdn):
            threading.Thread(target=srv.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._released.set()
        for srv in (self._hub, self._cdn):
            srv.shutdown()
            srv.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._hub.server_address[1]}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._cdn.server_address[1]}"

    def add(self, repo: Repo) -> Repo:
        self.repos[repo.repo_id] = repo
        return repo

    def release(self) -> None:
        self._released.set()

    # -- assertions helpers ----------------------------------------------------------------------
    def file_requests(self, filename: str, method: str = "GET") -> list[Request]:
        """GETs that transferred `filename` (on the hub or, for LFS files, on the CDN)."""
        out = []
        for r in list(self.requests):
            if r.method != method:
                continue
            on_hub = r.server == "hub" and "/resolve/" in r.path and r.path.endswith("/" + filename)
            on_cdn = r.server == "cdn" and r.path.split("?")[0].endswith("/" + filename)
            if on_hub or on_cdn:
                out.append(r)
        return out

    def bytes_sent(self, filename: str) -> int:
        return sum(r.sent for r in self.file_requests(filename))

    # -- HTTP ----------------------------------------------------------------------------------------
    def _handler(self, server: str) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # keep test output clean
                pass

            def do_HEAD(self) -> None:
                self._dispatch("HEAD")

            def do_GET(self) -> None:
                self._dispatch("GET")

            def _dispatch(self, method: str) -> None:
                rec = Request(
                    server, method, self.path, {k.lower(): v for k, v in self.headers.items()}
                )
                with hub._lock:
                    hub.requests.append(rec)
                self.rec = rec
                try:
                    if server == "cdn":
                        hub._cdn_get(self, method)
                    else:
                        hub._hub_request(self, method)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def reply(
                self,
                status: int,
                body: bytes = b"",
                headers: dict[str, str] | None = None,
                content_type: str = "application/json",
                send_body: bool = True,
            ) -> None:
                self.rec.status = status
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                if "Content-Length" not in (headers or {}):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if send_body and body:
                    self.wfile.write(body)
                    self.rec.sent += len(body)

            def error(
                self, status: int, code: str, message: str, headers: dict[str, str] | None = None
            ) -> None:
                h = {"X-Error-Message": message, **(headers or {})}
                if code:
                    h["X-Error-Code"] = code
                self.reply(
                    status,
                    json.dumps({"error": message}).encode(),
                    h,
                    send_body=self.command != "HEAD",
                )

        return Handler

    def _auth_error(self, h: BaseHTTPRequestHandler, repo: Repo) -> bool:
        """Gated repos need the right token; answer like the hub does and return True if refused.
        A token starting with "hf_invalid" is rejected everywhere, as an unknown token is."""
        if self._bad_token(h):
            return True
        if not repo.gated:
            return False
        auth = h.headers.get("Authorization", "")
        if auth == f"Bearer {self.token}":
            return False
        msg = f"Access to model {repo.repo_id} is restricted. You must have access to it and be authenticated to access it. Please log in."
        h.error(403 if auth else 401, "GatedRepo", msg)  # type: ignore[attr-defined]
        return True

    def _bad_token(self, h: BaseHTTPRequestHandler) -> bool:
        if h.headers.get("Authorization", "").startswith("Bearer hf_invalid"):
            h.error(401, "", "Invalid credentials in Authorization header")  # type: ignore[attr-defined]
            return True
        return False

    def _find_repo(self, h: BaseHTTPRequestHandler, repo_id: str) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            h.error(404, "RepoNotFound", "Repository not found")  # type: ignore[attr-defined]
        return repo

    def _check_rev(self, h: BaseHTTPRequestHandler, repo: Repo, rev: str) -> bool:
        if rev in ("main", repo.sha):
            return True
        h.error(404, "RevisionNotFound", f"Invalid rev id: {rev}")  # type: ignore[attr-defined]
        return False

    def _hub_request(self, h: BaseHTTPRequestHandler, method: str) -> None:
        url = urlsplit(h.path)
        path = unquote(url.path)
        query = parse_qs(url.query)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path)
        if m and method == "GET":
            repo = self._find_repo(h, m.group(1))
            if (
                repo is None
                or self._bad_token(h)
                or not self._check_rev(h, repo, m.group(2) or "main")
            ):
                return
            blobs = query.get("blobs", [""])[0].lower() in ("1", "true")
            h.reply(200, json.dumps(self._info(repo, blobs)).encode())  # type: ignore[attr-defined]
            return
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
        if m and method == "GET":
            repo = self._find_repo(h, m.group(1))
            if repo is None or not self._check_rev(h, repo, m.group(2)):
                return
            h.reply(200, json.dumps(self._tree(repo, m.group(3) or "")).encode())  # type: ignore[attr-defined]
            return
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            repo = self._find_repo(h, m.group(1))
            if (
                repo is None
                or self._auth_error(h, repo)
                or not self._check_rev(h, repo, m.group(2))
            ):
                return
            f = repo.files.get(m.group(3))
            if f is None:
                h.error(
                    404,
                    "EntryNotFound",
                    f'{m.group(3)} does not exist on "main"',  # type: ignore[attr-defined]
                    {"X-Repo-Commit": repo.sha},
                )
                return
            common = {"X-Repo-Commit": repo.sha, "ETag": f'"{f.blob_id}"', "Accept-Ranges": "bytes"}
            if f.lfs:
                location = f"{self.cdn_url}/cdn/{f.sha256}/{f.path}?expires=never"
                h.reply(
                    302,
                    b"",
                    {
                        **common,
                        "Location": location,  # type: ignore[attr-defined]
                        "X-Linked-Etag": f'"{f.sha256}"',
                        "X-Linked-Size": str(len(f.data)),
                    },
                )
                return
            self._send_file(h, method, f, common)
            return
        h.error(404, "NotFound", f"fake hub: no route for {method} {path}")  # type: ignore[attr-defined]

    def _cdn_get(self, h: BaseHTTPRequestHandler, method: str) -> None:
        m = re.fullmatch(r"/cdn/([0-9a-f]{64})/(.+)", unquote(urlsplit(h.path).path))
        f = None
        if m:
            f = next(
                (
                    f
                    for r in self.repos.values()
                    for f in r.files.values()
                    if f.sha256 == m.group(1)
                ),
                None,
            )
        if f is None:
            h.reply(404, b"NoSuchKey", content_type="text/plain")  # type: ignore[attr-defined]
            return
        self._send_file(h, method, f, {"ETag": f'"{f.sha256}"', "Accept-Ranges": "bytes"})

    def _send_file(
        self, h: BaseHTTPRequestHandler, method: str, f: RepoFile, headers: dict[str, str]
    ) -> None:
        data, start, status = f.data, 0, 200
        rng = None if self.ignore_range else h.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng.strip())
            if not m or int(m.group(1)) >= len(data):
                h.reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})  # type: ignore[attr-defined]
                return
            start = int(m.group(1))
            end = int(m.group(2)) + 1 if m.group(2) else len(data)
            data, status = data[start:end], 206
            headers = {
                **headers,
                "Content-Range": f"bytes {start}-{start + len(data) - 1}/{len(f.data)}",
            }
        headers = {**headers, "Content-Length": str(len(data))}
        rec = h.rec  # type: ignore[attr-defined]
        rec.status = status
        h.send_response(status)
        h.send_header("Content-Type", "application/octet-stream")
        for k, v in headers.items():
            h.send_header(k, v)
        h.end_headers()
        if method == "HEAD":
            return
        with self._lock:
            cut = self.cut_once.pop(f.path, None) if start == 0 else None
            stall = self.stall.get(f.path) if start == 0 else None
        limit = cut if cut is not None else stall
        if limit is not None and limit < len(data):
            h.wfile.write(data[:limit])
            h.wfile.flush()
            rec.sent += limit
            if stall is not None:
                while not self._released.wait(0.05):
                    pass
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            h.close_connection = True
            return
        # Chunked writes so a client cut or a slow reader behaves like a real transfer.
        for i in range(0, len(data), 64 * 1024):
            chunk = data[i : i + 64 * 1024]
            h.wfile.write(chunk)
            rec.sent += len(chunk)

    def _info(self, repo: Repo, blobs: bool) -> dict:
        siblings = []
        for f in repo.files.values():
            s: dict = {"rfilename": f.path}
            if blobs:
                s["size"] = len(f.data)
                s["blobId"] = f.blob_id
                if f.lfs:
                    s["lfs"] = {
                        "sha256": f.sha256,
                        "size": len(f.data),
                        "pointerSize": len(f.pointer),
                    }
            siblings.append(s)
        return {
            "_id": repo.sha[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": repo.sha,
            "lastModified": "2025-08-05T00:00:00.000Z",
            "private": False,
            "gated": "manual" if repo.gated else False,
            "disabled": False,
            "library_name": "transformers",
            "tags": ["transformers", "safetensors", "gpt_oss"],
            "siblings": siblings,
        }

    def _tree(self, repo: Repo, under: str) -> list[dict]:
        entries: list[dict] = []
        dirs = sorted({p.rsplit("/", 1)[0] for p in repo.files if "/" in p})
        for d in dirs:
            if d.startswith(under):
                entries.append(
                    {"type": "directory", "oid": git_blob_sha1(d.encode()), "size": 0, "path": d}
                )
        for f in repo.files.values():
            if not f.path.startswith(under):
                continue
            e: dict = {"type": "file", "oid": f.blob_id, "size": len(f.data), "path": f.path}
            if f.lfs:
                e["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": len(f.pointer)}
            entries.append(e)
        return entries


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


# -- running the real CLI against it ---------------------------------------------------------------


def cli_env(home: Path, hub: FakeHub | None = None, **extra: str) -> dict[str, str]:
    """A clean environment for a `gptoss` subprocess: its own HF_HOME, GPTOSS_HOME and XDG dirs."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGING", "GPTOSS_", "XDG_"))
    }
    env.update(
        HF_HOME=str(home / "hf"),
        GPTOSS_HOME=str(home / "gptoss"),
        XDG_CONFIG_HOME=str(home / "config"),
        XDG_STATE_HOME=str(home / "state"),
        XDG_CACHE_HOME=str(home / "cache"),
        HF_HUB_DISABLE_TELEMETRY="1",
        NO_COLOR="1",
        COLUMNS="250",
        TERM="dumb",
    )
    if hub is not None:
        env["HF_ENDPOINT"] = hub.url
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: float = 180, input: str | None = None):
    return run_gptoss(*args, env=env, stdin=input, timeout=timeout)


def popen_cli(args: list[str], env: dict[str, str]):
    return subprocess.Popen(
        [sys.executable, "-m", "gptoss_mlx", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


__all__ = [
    "FakeHub",
    "Repo",
    "RepoFile",
    "Request",
    "cli_env",
    "gpt_oss_decoys",
    "popen_cli",
    "repo_from_dir",
    "run_cli",
    "wait_for",
]
