"""Files and disks: atomic writes (nothing the user made is left half-written) and free space."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import NotEnoughDiskError
from .units import human_bytes


def atomic_write_text(path: Path | str, text: str, encoding: str = "utf-8") -> None:
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


PARTIAL_SUFFIX = ".partial"
WRITER_FILE = ".gptoss-writer"  # inside a partial: holds its writer's pid, flock'ed while it lives
_UNLOCKED_GRACE_SECONDS = 600  # a partial without a writer file this old is an older version's


@contextlib.contextmanager
def atomic_directory(dst: Path | str, force: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `dst`; on success it replaces `dst`, on error it is removed.

    The sibling holds WRITER_FILE, locked while this process writes, so that a later run can
    prove a leftover partial's writer is gone (remove_stale_partials)."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=PARTIAL_SUFFIX, dir=dst.parent))
    writer = None
    try:
        writer = open(tmp / WRITER_FILE, "w")  # noqa: SIM115 (held open: the lock lives with it)
        fcntl.flock(writer, fcntl.LOCK_EX | fcntl.LOCK_NB)
        writer.write(f"{os.getpid()}\n")
        writer.flush()
        yield tmp
        writer.close()
        writer = None
        os.unlink(tmp / WRITER_FILE)
        if dst.exists():
            if not force:
                raise FileExistsError(dst)
            old = dst.with_name(f".{dst.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(dst, old)
            os.replace(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dst)
    except BaseException:
        if writer is not None:
            writer.close()
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


def _writer_alive(partial: Path) -> bool:
    """True while the process that made `partial` still holds its lock (or may: no proof yet)."""
    try:
        fh = open(partial / WRITER_FILE)  # noqa: SIM115
    except FileNotFoundError:
        try:
            age = time.time() - partial.stat().st_mtime
        except FileNotFoundError:
            return False
        return age < _UNLOCKED_GRACE_SECONDS
    except OSError:
        return True  # unreadable: not ours to judge
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        return False


def leftover_partials(parent: Path | str) -> list[Path]:
    """Partial directories atomic_directory left in `parent` whose writer is gone."""
    parent = Path(parent)
    try:
        entries = list(parent.iterdir())
    except OSError:
        return []
    return sorted(
        p
        for p in entries
        if p.name.startswith(".")
        and p.name.endswith(PARTIAL_SUFFIX)
        and p.is_dir()
        and not p.is_symlink()
        and not _writer_alive(p)
    )


def remove_stale_partials(parent: Path | str) -> list[Path]:
    """Delete leftover_partials(parent); return what was removed."""
    gone = leftover_partials(parent)
    for p in gone:
        shutil.rmtree(p, ignore_errors=True)
    return [p for p in gone if not p.exists()]


def tree_size(path: Path, *, follow_links: bool = False) -> int:
    """Bytes of the files under `path`; `follow_links` counts what symlinks point at (the hub
    cache's snapshots link to its blobs)."""
    size = os.stat if follow_links else os.lstat
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += size(os.path.join(root, name)).st_size
    return total
