"""Downloads from the Hugging Face hub: only the files gptoss loads, a disk-space check first,
rich progress, one-line errors, and weights that resume where a killed run stopped.
huggingface_hub is imported inside functions (start-up time).

huggingface_hub (2.x) names its partial files per process and deletes them on failure, so a killed
download would start its files from zero. The large (LFS) files are therefore fetched here, before
snapshot_download, into the cache's own layout: `blobs/<sha256>.gptoss-partial` grows with Range
requests across runs, is checked against its size and sha256, then renamed to `blobs/<sha256>`.
snapshot_download finds those blobs present, only links them into the snapshot, and fetches the
small files itself.

Environment read at call time (so tests and callers can change it): HF_ENDPOINT, HF_HOME,
HF_HUB_CACHE, HF_HUB_OFFLINE, HF_TOKEN (read by huggingface_hub itself), and
GPTOSS_FAKE_FREE_BYTES (pretend the disk has that many free bytes; for tests).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from ..errors import (
    BadCheckpointError,
    DownloadError,
    ModelNotFoundError,
    UserError,
)
from ..fsutil import check_disk
from .cache import (
    ALIASES,
    ALLOW_PATTERNS,
    IGNORE_PATTERNS,
    REPO_ID_RE,
    STALE_PARTIAL_SECONDS,
    DownloadPlan,
    RemoteFile,
    blobs_dir,
    cached_snapshot,
    hf_cache_dir,
    hf_endpoint,
    is_offline,
    partial_path,
    wanted_files,
)
from .errors import hub_errors
from .transfer import _fetch_large_files


def plan_download(repo_id: str, revision: str | None = None) -> DownloadPlan:
    """Ask the hub which files (and how many bytes) a download needs, and which are already here."""
    from huggingface_hub import HfApi

    rev = revision or "main"
    with hub_errors(repo_id, rev):
        info = HfApi(endpoint=hf_endpoint()).model_info(repo_id, revision=rev, files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings or []}
    files = []
    for name in wanted_files(siblings):
        s = siblings[name]
        etag = s.lfs.sha256 if s.lfs is not None else (s.blob_id or "")
        files.append(RemoteFile(name, int(s.size or 0), etag))
    if not any(f.path == "config.json" for f in files) or not any(
        f.path.endswith(".safetensors") for f in files
    ):
        raise ModelNotFoundError(
            f"{repo_id} has no config.json and .safetensors weights at its root: not a model gptoss can run "
            f"(aliases: {', '.join(ALIASES)})"
        )
    _check_is_gpt_oss(repo_id, str(info.sha))
    plan = DownloadPlan(repo_id, rev, str(info.sha), files)
    blobs = blobs_dir(repo_id)
    for f in files:
        if (plan.snapshot_dir / f.path).exists() or (f.etag and (blobs / f.etag).exists()):
            plan.present.add(f.path)
        elif f.is_lfs:
            with contextlib.suppress(OSError):
                done = partial_path(repo_id, f).stat().st_size
                if done <= f.size:
                    plan.resumable[f.path] = done
    return plan


def _check_is_gpt_oss(repo_id: str, commit: str) -> None:
    """Fetch config.json first: a wrong repo fails before gigabytes arrive, and so does a gated
    one (gated repos list their files to anyone)."""
    from huggingface_hub import hf_hub_download

    with hub_errors(repo_id, commit):
        path = hf_hub_download(
            repo_id,
            "config.json",
            revision=commit,
            cache_dir=str(hf_cache_dir()),
            endpoint=hf_endpoint(),
        )
    try:
        model_type = json.loads(Path(path).read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    if model_type != "gpt_oss":
        raise BadCheckpointError(
            f"{repo_id} is not a gpt-oss model (model_type {model_type!r}); gptoss runs openai/gpt-oss-20b, "
            "openai/gpt-oss-120b and their MLX conversions"
        )


def _remove_stale_partials(plan: DownloadPlan) -> None:
    """Delete huggingface_hub's own partial files that a killed download left behind (small files
    now, large ones from older gptoss versions): it names them per process, so they are never
    resumed and would only hold disk space. Our resumable partials do not match."""
    blobs = blobs_dir(plan.repo_id)
    now = time.time()
    for f in plan.missing:
        if not f.etag:
            continue
        for p in blobs.glob(f"{f.etag}*.incomplete"):
            with contextlib.suppress(OSError):
                if now - p.stat().st_mtime > STALE_PARTIAL_SECONDS:
                    p.unlink()


def fetch(plan: DownloadPlan, *, progress: DownloadProgress | None = None) -> Path:
    """Download the planned files into the huggingface_hub cache and return the snapshot folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )

    _remove_stale_partials(plan)
    bars_were_on = not are_progress_bars_disabled()
    disable_progress_bars()  # ours replace them
    watcher = _ProgressWatcher(plan, progress) if progress and plan.missing else None
    try:
        if watcher:
            watcher.start()
        with hub_errors(plan.repo_id, plan.revision):
            _fetch_large_files(plan)
            path = snapshot_download(
                plan.repo_id,
                revision=plan.revision,
                cache_dir=str(hf_cache_dir()),
                allow_patterns=ALLOW_PATTERNS,
                ignore_patterns=IGNORE_PATTERNS,
                endpoint=hf_endpoint(),
            )
    finally:
        if watcher:
            watcher.stop()
        if bars_were_on:
            enable_progress_bars()
    snapshot = Path(path)
    missing = [f.path for f in plan.files if not (snapshot / f.path).exists()]
    if missing:
        raise DownloadError(
            f"download of {plan.repo_id} is incomplete ({', '.join(missing[:3])} missing); "
            "run the same command again to resume"
        )
    return snapshot


def download(
    repo_id: str, *, revision: str | None = None, progress: DownloadProgress | None = None
) -> Path:
    """Download (or find, offline) `repo_id`'s loadable files; return the snapshot directory."""
    if not REPO_ID_RE.match(repo_id):
        raise UserError(
            f"{repo_id!r} is not a hub repo id; use owner/name (aliases: {', '.join(ALIASES)})"
        )
    if is_offline():
        found = cached_snapshot(repo_id, revision or "main")
        if found is None:
            raise DownloadError(
                f"HF_HUB_OFFLINE is set and {repo_id} is not downloaded; unset HF_HUB_OFFLINE to download it"
            )
        return found
    plan = plan_download(repo_id, revision)
    check_disk([(hf_cache_dir(), plan.missing_bytes, f"download of {repo_id}")])
    return fetch(plan, progress=progress)


class DownloadProgress(Protocol):
    """Where download progress goes (the UI draws it): the files still missing with their sizes,
    then bytes arrived per file and in all, about five times a second."""

    def start(
        self, repo_id: str, missing: Sequence[tuple[str, int]], total: int, done: int
    ) -> None: ...

    def update(self, done_by_file: Mapping[str, int], done: int) -> None: ...

    def stop(self) -> None: ...


class _ProgressWatcher:
    """Progress fed by the sizes of the cache's blob files as they grow.

    Watching the files instead of hooking huggingface_hub's tqdm bars keeps this independent of
    huggingface_hub's progress internals, which differ between its versions.
    """

    def __init__(self, plan: DownloadPlan, sink: DownloadProgress, interval: float = 0.2) -> None:
        self.plan = plan
        self.sink = sink
        self.interval = interval
        self.blobs = blobs_dir(plan.repo_id)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _done_bytes(self, f: RemoteFile) -> int:
        if f.path in self.plan.present or (f.etag and (self.blobs / f.etag).exists()):
            return f.size
        best = 0
        if f.etag:
            partials = [
                partial_path(self.plan.repo_id, f),
                *self.blobs.glob(f"{f.etag}*.incomplete"),
            ]
            for p in partials:
                with contextlib.suppress(OSError):
                    best = max(best, p.stat().st_size)
        return min(best, f.size)

    def start(self) -> None:
        plan = self.plan
        missing = [(f.path, f.size) for f in plan.missing]
        self.sink.start(
            plan.repo_id, missing, plan.total_bytes, plan.total_bytes - plan.missing_bytes
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _update(self) -> None:
        by_file = {f.path: self._done_bytes(f) for f in self.plan.files}
        self.sink.update(by_file, sum(by_file.values()))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self._update()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        with contextlib.suppress(Exception):
            self._update()
        self.sink.stop()
