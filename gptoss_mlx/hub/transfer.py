"""Resumable transfer of the large (LFS) files: `blobs/<sha256>.gptoss-partial` grows with Range
requests across runs, is checked against its size and sha256, then renamed to `blobs/<sha256>`."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from ..errors import (
    DownloadError,
)
from .cache import (
    BLOB_WORKERS,
    NETWORK_RETRIES,
    DownloadPlan,
    RemoteFile,
    blobs_dir,
    hf_cache_dir,
    hf_endpoint,
    partial_path,
    repo_cache_dir,
)
from .errors import _is_network_error


def _fetch_large_files(plan: DownloadPlan) -> None:
    """Download the plan's missing LFS files into blobs/, a few at once, resuming partials."""
    files = [f for f in plan.missing if f.is_lfs]
    if not files:
        return
    blobs_dir(plan.repo_id).mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=min(BLOB_WORKERS, len(files))) as pool:
        futures = [pool.submit(_fetch_blob, plan, f, stop) for f in files]
        try:
            for future in as_completed(futures):
                future.result()
        finally:
            # A failure (or Ctrl-C outside the CLI) stops the running files at their next chunk
            # and the queued ones before they start.
            stop.set()
            pool.shutdown(cancel_futures=True)


class _Mismatch(Exception):
    """The bytes received are not the file the hub lists."""


def _fetch_blob(plan: DownloadPlan, f: RemoteFile, stop: threading.Event) -> None:
    from huggingface_hub import hf_hub_url
    from huggingface_hub.utils import build_hf_headers

    blob = blobs_dir(plan.repo_id) / f.etag
    url = hf_hub_url(plan.repo_id, f.path, revision=plan.commit, endpoint=hf_endpoint())
    # identity: Range offsets then count the bytes stored on disk.
    headers = {**build_hf_headers(), "Accept-Encoding": "identity"}
    with _exclusive(plan.repo_id, f):
        if blob.exists():
            return
        with _Partial(partial_path(plan.repo_id, f), f.size) as part:
            try:
                _receive(part, url, headers, stop)
                if part.done < f.size:
                    return  # stopped: keep the partial for the next run
                if part.sha256() != f.etag:
                    raise _Mismatch("its sha256 differs from the hub's")
            except _Mismatch as e:
                part.discard()
                raise DownloadError(
                    f"the download of {f.path} from {plan.repo_id} is damaged ({e}); deleted it: "
                    "run the same command again to download it afresh"
                ) from None
        os.replace(part.path, blob)


@contextlib.contextmanager
def _exclusive(repo_id: str, f: RemoteFile) -> Iterator[None]:
    """Refuse a second process appending to the same partial file (it would corrupt it)."""
    lock = hf_cache_dir() / ".locks" / repo_cache_dir(repo_id).name / f"{f.etag}.gptoss.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DownloadError(
                f"another download of {repo_id} is writing {f.path}; let it finish (or stop it) "
                "and run the same command again"
            ) from None
        yield


class _Partial:
    """The bytes of one file received so far, hashed as they arrive."""

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self.received = 0  # bytes written by this run
        self._file = open(path, "ab")  # noqa: SIM115 (closed by __exit__ or discard)
        self.done = os.fstat(self._file.fileno()).st_size
        if self.done > size:
            self.restart()
        else:
            with open(path, "rb") as existing:
                self._sha = hashlib.file_digest(existing, "sha256")

    def __enter__(self) -> _Partial:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def restart(self) -> None:
        self._file.truncate(0)
        self.done = 0
        self._sha = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        if self.done + len(chunk) > self.size:
            raise _Mismatch(f"the hub sent more than the {self.size} bytes it lists")
        self._file.write(chunk)
        self._file.flush()  # in the kernel now: a killed process keeps it
        self._sha.update(chunk)
        self.done += len(chunk)
        self.received += len(chunk)

    def sha256(self) -> str:
        return self._sha.hexdigest()

    def discard(self) -> None:
        self._file.close()
        self.path.unlink(missing_ok=True)


def _receive(part: _Partial, url: str, headers: dict[str, str], stop: threading.Event) -> None:
    """Fill `part` from `url`, resuming with a Range request after a cut connection."""
    fruitless = 0
    while part.done < part.size and not stop.is_set():
        before = part.received
        error: Exception | None = None
        try:
            _get(part, url, headers, stop)
        except Exception as e:
            if not _is_network_error(e):
                raise
            error = e
        fruitless = 0 if part.received > before else fruitless + 1
        if fruitless > NETWORK_RETRIES:
            if error is not None:
                raise error
            raise DownloadError(
                f"the hub keeps stopping short while sending {url}; run the same command again "
                "later to resume"
            )
        if error is not None:
            time.sleep(1)


def _get(part: _Partial, url: str, headers: dict[str, str], stop: threading.Event) -> None:
    """One GET of the rest of the file (redirects to the CDN followed), appended to `part`."""
    from huggingface_hub import constants
    from huggingface_hub.utils import hf_raise_for_status, http_stream_backoff

    if part.done:
        headers = {**headers, "Range": f"bytes={part.done}-"}
    with http_stream_backoff(
        "GET",
        url,
        headers=headers,
        timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
        retry_on_exceptions=(),  # cut connections resume from part.done instead
        retry_on_status_codes=(408, 429),
    ) as r:
        if r.status_code == 416 or (r.status_code == 206 and _range_start(r.headers) != part.done):
            part.restart()  # the partial does not fit the server's file: start over
            return
        hf_raise_for_status(r)
        if r.status_code == 200:
            part.restart()  # no Range sent, or the server ignored it: this is the whole file
        elif r.status_code != 206:
            raise DownloadError(f"the hub answered {r.status_code} for {url}; try again later")
        for chunk in r.iter_bytes():
            part.write(chunk)
            if stop.is_set():
                return


def _range_start(headers: Mapping[str, str]) -> int | None:
    m = re.match(r"bytes (\d+)-", headers.get("Content-Range", ""))
    return int(m.group(1)) if m else None
