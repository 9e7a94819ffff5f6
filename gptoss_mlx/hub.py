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
import errno
import fcntl
import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from .errors import (
    BadCheckpointError,
    DownloadError,
    ModelNotFoundError,
    NotEnoughDiskError,
    UserError,
)

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


def free_disk_bytes(path: Path) -> int:
    """Free bytes on the filesystem that holds `path` (or would hold it once created)."""
    fake = os.environ.get("GPTOSS_FAKE_FREE_BYTES")
    if fake:
        return int(fake)
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def _device_of(path: Path) -> int:
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p.stat().st_dev


def human_bytes(n: float) -> str:
    # Binary units, labelled the way Macs are sold ("16 GB" of memory is 16 GiB), so model sizes
    # compare directly with the memory figures users know.
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def check_disk(needs: Iterable[tuple[Path, int, str]]) -> None:
    """Raise NotEnoughDiskError unless each filesystem has room for what will be written to it.

    `needs` holds (directory, bytes, what) triples; directories on one filesystem add up.
    """
    by_dev: dict[int, list[tuple[Path, int, str]]] = {}
    for d, n, what in needs:
        if n > 0:
            by_dev.setdefault(_device_of(d), []).append((d, n, what))
    for items in by_dev.values():
        need = sum(n for _, n, _ in items)
        d = items[0][0]
        free = free_disk_bytes(d)
        if need > free:
            what = " and ".join(w for _, _, w in items)
            hint = (
                "set HF_HOME to a bigger disk"
                if "download" in what
                else "set GPTOSS_HOME to a bigger disk"
            )
            raise NotEnoughDiskError(
                f"not enough disk space for the {what}: {human_bytes(need)} needed in {d} but only "
                f"{human_bytes(free)} free; free up {human_bytes(need - free)} or {hint}"
            )


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


def _is_network_error(e: BaseException) -> bool:
    names = {
        "ConnectError",
        "ConnectTimeout",
        "TimeoutException",
        "NetworkError",
        "ConnectionError",
        "Timeout",
        "ReadTimeout",
        "RemoteProtocolError",
        "OfflineModeIsEnabled",
    }
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if any(c.__name__ in names for c in type(cur).__mro__) or isinstance(cur, ConnectionError):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into one-line errors that say what to do."""
    from huggingface_hub import errors as hfe

    aliases = ", ".join(ALIASES)
    try:
        yield
    except UserError:
        raise
    except hfe.GatedRepoError as e:
        page = f"{hf_endpoint()}/{repo_id}"
        if _has_token():
            raise DownloadError(
                f"{repo_id} is gated and your HF_TOKEN has no access: accept its licence at {page} "
                "with that account (or use a token of an account that has)"
            ) from e
        raise DownloadError(
            f"{repo_id} is gated: accept its licence on the hub ({page}) and set HF_TOKEN"
        ) from e
    except hfe.RevisionNotFoundError as e:
        raise ModelNotFoundError(
            f"revision {revision!r} not found in {repo_id}; check --revision (a branch, tag or commit)"
        ) from e
    except hfe.RepositoryNotFoundError as e:
        raise ModelNotFoundError(
            f"{repo_id} not found on the Hugging Face hub; check the name (aliases: {aliases})"
            + ("" if _has_token() else ", or set HF_TOKEN if it is private")
        ) from e
    except hfe.HFValidationError as e:
        raise UserError(
            f"{repo_id!r} is not a valid hub repo id; use owner/name (aliases: {aliases})"
        ) from e
    except hfe.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            raise DownloadError(
                "the hub rejected HF_TOKEN (401 Unauthorized); check it or unset it"
            ) from e
        raise DownloadError(
            f"the hub answered {status} for {repo_id} ({_first_line(e)}); try again later"
        ) from e
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise NotEnoughDiskError(
                f"the disk filled up while downloading {repo_id}; free some space (or set HF_HOME to a "
                "bigger disk) and run the same command again to resume"
            ) from e
        if _is_network_error(e) or isinstance(e, hfe.LocalEntryNotFoundError):
            raise DownloadError(_unreachable(repo_id)) from e
        raise DownloadError(
            f"download of {repo_id} failed ({_first_line(e)}); run the same command again to resume"
        ) from e
    except Exception as e:
        if _is_network_error(e):
            raise DownloadError(_unreachable(repo_id)) from e
        raise


def _unreachable(repo_id: str) -> str:
    return (
        f"cannot reach the Hugging Face hub at {hf_endpoint()} to get {repo_id}; check your connection "
        "(or set HF_HUB_OFFLINE=1 to use downloaded models only)"
    )


def _has_token() -> bool:
    from huggingface_hub import get_token

    return bool(get_token())


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


def fetch(plan: DownloadPlan, *, progress: bool = True) -> Path:
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
    watcher = _ProgressWatcher(plan) if progress and plan.missing else None
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


def download(repo_id: str, *, revision: str | None = None, progress: bool = True) -> Path:
    """Download (or find, offline) `repo_id`'s loadable files; return the snapshot directory."""
    from .registry import cached_snapshot

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


def _exit_interrupted(*_: object) -> None:
    print(
        "gptoss: download interrupted; run the same command again to resume (what arrived is kept)",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    os._exit(130)


@contextlib.contextmanager
def exit_on_interrupt() -> Iterator[None]:
    """Ctrl-C or SIGTERM during a download exits at once (130).

    Download worker threads (ours and snapshot_download's) cannot be cancelled: after a
    KeyboardInterrupt the process would wait for them to finish their files. A SIGINT handler that
    exits also fires while the main thread is blocked joining them. Written data is already in the
    kernel, so the partial files keep it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _exit_interrupted)
    previous_term = signal.signal(signal.SIGTERM, _exit_interrupted)
    try:
        yield
    except KeyboardInterrupt:
        _exit_interrupted()
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)


class _ProgressWatcher:
    """Rich progress bars fed by the sizes of the cache's blob files as they grow.

    Watching the files instead of hooking huggingface_hub's tqdm bars keeps this independent of
    huggingface_hub's progress internals, which differ between its versions.
    """

    def __init__(self, plan: DownloadPlan, interval: float = 0.2) -> None:
        self.plan = plan
        self.interval = interval
        self.blobs = blobs_dir(plan.repo_id)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._progress = None
        self._tasks: dict[str, int] = {}
        self._total_task = 0
        self._live = sys.stderr.isatty()

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
        missing = plan.missing
        if not self._live:
            print(
                f"Downloading {plan.repo_id} ({len(missing)} file(s), {human_bytes(plan.missing_bytes)})...",
                file=sys.stderr,
                flush=True,
            )
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._total_task = self._progress.add_task(
            f"[bold]{plan.repo_id}",
            total=plan.total_bytes,
            completed=plan.total_bytes - plan.missing_bytes,
        )
        for f in missing:
            if f.path.endswith(".safetensors"):
                self._tasks[f.path] = self._progress.add_task(f"  {f.path}", total=f.size)
        self._progress.start()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _update(self) -> None:
        if self._progress is None:
            return
        done = 0
        for f in self.plan.files:
            n = self._done_bytes(f)
            done += n
            if f.path in self._tasks:
                self._progress.update(self._tasks[f.path], completed=n)
        self._progress.update(self._total_task, completed=done)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self._update()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self._progress is not None:
            with contextlib.suppress(Exception):
                self._update()
            self._progress.stop()
