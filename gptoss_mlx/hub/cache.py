"""The huggingface_hub cache as gptoss uses it: which files, where they live, what a download
plan holds, and the snapshots already there. Environment is read at call time (HF_ENDPOINT,
HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE)."""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint.contents import is_complete

ALIASES = {"20b": "openai/gpt-oss-20b", "120b": "openai/gpt-oss-120b"}

# What the loader reads, at the repo root only.
ALLOW_PATTERNS = [
    "config.json",
    "generation_config.json",
    "tokenizer*.json",
    "special_tokens_map.json",
    "chat_template*",
    "*.safetensors",
    "model.safetensors.index.json",
]
# The openai repos keep other copies of the weights in original/ and metal/; fnmatch's `*`
# crosses "/", so "*.safetensors" alone would match original/model.safetensors too.
IGNORE_PATTERNS = ["*/*"]

DEFAULT_ENDPOINT = "https://huggingface.co"
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
REPO_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
STALE_PARTIAL_SECONDS = 600
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
PARTIAL_SUFFIX = ".gptoss-partial"
BLOB_WORKERS = 3  # large files downloaded at once
NETWORK_RETRIES = 5  # in-run resumes in a row that receive nothing, before giving up


def repo_id_for(spec: str) -> str | None:
    """The hub repo id an alias ("20b", "gpt-oss-20b") or a repo id stands for; None otherwise."""
    s = spec.strip()
    if s.lower() in ALIASES:
        return ALIASES[s.lower()]
    for repo in ALIASES.values():
        if s.lower() == repo.split("/")[1]:
            return repo
    if REPO_ID_RE.match(s) and ".." not in s and not s.endswith((".", "-")):
        return s
    return None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def is_offline() -> bool:
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(
        os.environ.get("TRANSFORMERS_OFFLINE")
    )


def hf_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hf_cache_dir() -> Path:
    """huggingface_hub's cache, resolved the way huggingface_hub resolves it."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.environ[var])).expanduser()
    home = os.environ.get("HF_HOME")
    if home:
        return Path(os.path.expandvars(home)).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "huggingface" / "hub"


def repo_cache_dir(repo_id: str) -> Path:
    return hf_cache_dir() / ("models--" + repo_id.replace("/", "--"))


def blobs_dir(repo_id: str) -> Path:
    return repo_cache_dir(repo_id) / "blobs"


def wanted_files(paths: Iterable[str]) -> list[str]:
    """The repo files gptoss downloads (same matching as huggingface_hub's allow/ignore patterns)."""
    return [
        p
        for p in paths
        if any(fnmatch.fnmatchcase(p, a) for a in ALLOW_PATTERNS)
        and not any(fnmatch.fnmatchcase(p, i) for i in IGNORE_PATTERNS)
    ]


@dataclass(frozen=True)
class RemoteFile:
    path: str
    size: int
    etag: str  # the blob name in the cache: sha256 for LFS files, the git blob id otherwise

    @property
    def is_lfs(self) -> bool:
        return bool(SHA256_RE.fullmatch(self.etag))


def partial_path(repo_id: str, f: RemoteFile) -> Path:
    """Where a large file grows until it is complete and verified; later runs resume it."""
    return blobs_dir(repo_id) / (f.etag + PARTIAL_SUFFIX)


@dataclass
class DownloadPlan:
    repo_id: str
    revision: str
    commit: str
    files: list[RemoteFile]
    present: set[str] = field(default_factory=set)
    resumable: dict[str, int] = field(default_factory=dict)  # path -> bytes a killed run left

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def missing(self) -> list[RemoteFile]:
        return [f for f in self.files if f.path not in self.present]

    @property
    def missing_bytes(self) -> int:
        """Bytes still to transfer (and to find room for on disk)."""
        return sum(f.size - self.resumable.get(f.path, 0) for f in self.missing)

    @property
    def snapshot_dir(self) -> Path:
        return repo_cache_dir(self.repo_id) / "snapshots" / self.commit

    @property
    def weights_bytes(self) -> int:
        return sum(f.size for f in self.files if f.path.endswith(".safetensors"))


def _snapshot_candidates(repo_id: str, revision: str) -> list[Path]:
    repo_dir = repo_cache_dir(repo_id)
    snaps = repo_dir / "snapshots"
    if not snaps.is_dir():
        return []
    commit = revision if COMMIT_RE.match(revision) else None
    ref = repo_dir / "refs" / revision
    if commit is None and ref.is_file():
        commit = ref.read_text().strip()
    out = [snaps / commit] if commit else []
    if revision == "main":
        # A model downloaded with --revision has no refs/main; any complete snapshot will do.
        others = [p for p in snaps.iterdir() if p.is_dir() and p not in out]
        out += sorted(others, key=lambda p: p.stat().st_mtime, reverse=True)
    return out


def cached_snapshot(repo_id: str, revision: str = "main") -> Path | None:
    """A complete snapshot of `repo_id` in the huggingface_hub cache, or None (no network)."""
    return next((p for p in _snapshot_candidates(repo_id, revision) if is_complete(p)), None)


def _incomplete_snapshot(repo_id: str) -> Path | None:
    return next((p for p in _snapshot_candidates(repo_id, "main") if p.is_dir()), None)
