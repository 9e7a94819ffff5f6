"""The operating-system sandbox around the python tool's worker: which one this machine has, and
the argv, environment and resource limits that start the worker inside it.

Linux: bubblewrap (`bwrap`). macOS: `/usr/bin/sandbox-exec` with a deny-by-default Seatbelt
profile modelled on Codex's base policy. Without either, python is refused unless the user asks for
the unsafe mode (no isolation, limits and the clean environment still apply).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gptoss_mlx.errors import UserError

from . import seatbelt

SANDBOX_EXEC = "/usr/bin/sandbox-exec"  # the only one Codex trusts, too
NOBODY = 65534
WORKER = Path(__file__).with_name("python_worker.py")


class SandboxUnavailableError(UserError):
    """No OS sandbox can be set up and the unsafe mode was not asked for."""


@dataclass(frozen=True)
class Limits:
    memory: int = 4 * 2**30  # RLIMIT_AS on Linux; the RSS watchdog's cap on macOS
    cpu_seconds: int = 3600  # for the worker's whole life; a restart starts over
    open_files: int = 1024
    file_size: int = 2**30
    processes: int = 64  # processes and threads the model's code may have at once


@dataclass
class Launch:
    """Everything needed to start one worker."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path
    preexec: Callable[[], None]
    mode: str
    watchdog: bool  # macOS ignores RLIMIT_AS, so the parent watches the RSS instead
    chown_to: tuple[int, int] | None = None  # scratch owner when root drops to nobody


def bwrap_path(bwrap: str | None = None) -> str | None:
    """The bubblewrap binary to use: `bwrap` if given (a missing path means none), else PATH."""
    if bwrap is not None:
        return bwrap if os.access(bwrap, os.X_OK) else None
    return shutil.which("bwrap")


@functools.lru_cache(maxsize=8)
def _bwrap_probe(binary: str) -> tuple[bool, str, bool]:
    """Try a trivial sandbox once: (works, reason if not, supports --size)."""
    argv = [binary, "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        helptext = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, str(err), False
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        return False, lines[-1] if lines else f"exit code {done.returncode}", False
    return True, "", "--size" in helptext.stdout


@functools.lru_cache(maxsize=2)
def _seatbelt_probe(binary: str) -> tuple[bool, str]:
    argv = [binary, "-p", "(version 1)(allow default)", "/usr/bin/true"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as err:
        return False, str(err)
    lines = done.stderr.strip().splitlines()
    return done.returncode == 0, lines[-1] if lines else f"exit code {done.returncode}"


def sandbox_status(*, bwrap: str | None = None, platform: str = sys.platform) -> tuple[str, str]:
    """(mode, one line) for `gptoss doctor`: "bubblewrap", "sandbox-exec" or "none" with the
    reason and the fix."""
    if platform == "darwin":
        if not os.access(SANDBOX_EXEC, os.X_OK):
            return (
                "none",
                f"{SANDBOX_EXEC} is missing; pass --python-unsafe to run python unsandboxed",
            )
        works, reason = _seatbelt_probe(SANDBOX_EXEC)
        if not works:  # e.g. already inside another sandbox, which Seatbelt does not nest in
            return "none", f"{SANDBOX_EXEC} refused ({reason}); pass --python-unsafe"
        return "sandbox-exec", f"macOS Seatbelt ({SANDBOX_EXEC}), deny-by-default profile"
    if not platform.startswith("linux"):
        return "none", f"no sandbox on {platform}; pass --python-unsafe to run python unsandboxed"
    binary = bwrap_path(bwrap)
    if binary is None:
        return "none", (
            "bubblewrap (bwrap) is not installed; install it (apt install bubblewrap) "
            "or pass --python-unsafe"
        )
    works, reason, _ = _bwrap_probe(binary)
    if not works:
        return "none", (
            f"{binary} cannot create a sandbox here ({reason}); allow unprivileged user "
            "namespaces or pass --python-unsafe"
        )
    return "bubblewrap", f"bubblewrap ({binary}): read-only system, private /tmp, no home"


def require_sandbox(*, unsafe: bool, bwrap: str | None = None, platform: str = sys.platform) -> str:
    """The mode to use, or SandboxUnavailableError with the reason and the fix."""
    mode, line = sandbox_status(bwrap=bwrap, platform=platform)
    if mode != "none":
        return mode
    if unsafe:
        return "none"
    raise SandboxUnavailableError(f"python tool: no sandbox available: {line}")


def sandbox_env(scratch: Path, tmpdir: Path) -> dict[str, str]:
    """An allow-list: nothing from the parent's environment but the language."""
    return {
        "PATH": os.pathsep.join(
            [str(Path(sys.executable).parent), "/usr/local/bin", "/usr/bin", "/bin"]
        ),
        "LANG": os.environ.get("LANG") or "C.UTF-8",
        "HOME": str(scratch),
        "TMPDIR": str(tmpdir),
        "PYTHONIOENCODING": "utf-8",
        "MPLBACKEND": "Agg",
    }


def python_roots() -> list[Path]:
    """Directories the worker's Python needs to read: its install and its venv."""
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    roots.add(str(Path(sys.executable).resolve().parent.parent))
    paths = {Path(r) for r in roots} | {Path(r).resolve() for r in roots}
    return _outermost(paths)


def home_dirs() -> list[Path]:
    """Where users' private files live: hidden inside the Linux sandbox."""
    homes = {Path("/home"), Path("/root"), Path.home()}
    with contextlib.suppress(KeyError):
        homes.add(Path(pwd.getpwuid(os.getuid()).pw_dir))
    homes = {h.resolve() for h in homes if h.is_dir()}
    return [h for h in _outermost(homes) if h != Path("/")]


def _outermost(paths: set[Path]) -> list[Path]:
    """`paths` without those inside another one, sorted."""
    ordered = sorted(paths, key=lambda p: len(p.parts))
    kept: list[Path] = []
    for path in ordered:
        if not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return sorted(kept)


def make_preexec(limits: Limits, platform: str = sys.platform) -> Callable[[], None]:
    """Per-process limits, set in the child before it execs the sandbox. RLIMIT_NPROC is set by
    the worker itself: only inside the sandbox's user namespace does it count just its own
    processes (outside it counts every process the user runs)."""
    import resource

    def preexec() -> None:
        soft = limits.cpu_seconds
        resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + 5))  # SIGXCPU, then SIGKILL
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size, limits.file_size))
        if platform.startswith("linux"):  # macOS ignores or rejects RLIMIT_AS
            resource.setrlimit(resource.RLIMIT_AS, (limits.memory, limits.memory))

    return preexec


def _mountpoint_dirs(target: Path, hidden: Sequence[Path]) -> list[str]:
    """bwrap creates missing mount points with mode 0700; create them 0755 so the worker can
    still walk to a bind inside a hidden directory after dropping root."""
    parents = [h for h in hidden if target.is_relative_to(h) and target != h]
    if not parents:
        return []
    base = max(parents, key=lambda p: len(p.parts))
    args: list[str] = []
    for depth in range(len(base.parts) + 1, len(target.parts)):
        args += ["--perms", "0755", "--dir", str(Path(*target.parts[:depth]))]
    return args


def bwrap_argv(
    binary: str,
    *,
    scratch: Path,
    network: bool,
    as_root: bool,
    memory: int,
    tmpfs_size: bool = True,
) -> list[str]:
    """Read-only system, a private /tmp and /dev/shm, users' homes hidden except the Python
    install, the scratch dir writable and the working directory, new namespaces."""
    size = ["--size", str(max(memory // 4, 64 * 2**20))] if tmpfs_size else []
    argv = [binary, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    argv += ["--perms", "1777", *size, "--tmpfs", "/tmp"]
    argv += ["--perms", "1777", *size, "--tmpfs", "/dev/shm"]
    homes = [h for h in home_dirs() if not h.is_relative_to("/tmp")]
    for home in homes:
        argv += ["--perms", "0755", "--tmpfs", str(home)]
    hidden = [Path("/tmp"), *homes]
    for root in _outermost({*python_roots(), WORKER.parent.resolve()}):
        if any(root.is_relative_to(h) for h in hidden):
            argv += [*_mountpoint_dirs(root, hidden), "--ro-bind", str(root), str(root)]
    argv += [*_mountpoint_dirs(scratch, hidden), "--bind", str(scratch), str(scratch)]
    for home in homes:  # writes to a hidden home fail loudly instead of vanishing
        argv += ["--remount-ro", str(home)]
    if as_root:
        # Root is exempt from RLIMIT_NPROC even in a user namespace, so root gets no user
        # namespace; the worker drops to nobody with these two capabilities, which then vanish.
        argv += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        argv += ["--unshare-net"] if not network else []
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--unshare-all"] + (["--share-net"] if network else [])
    argv += ["--die-with-parent", "--new-session", "--chdir", str(scratch), "--"]
    return argv


def user_process_count(platform: str = sys.platform) -> int:
    """How many processes (threads on Linux) this user runs: RLIMIT_NPROC counts them all when
    there is no user namespace, so the worker's cap is set this much higher."""
    uid = str(os.getuid())
    cmd = ["ps", "-U", uid, "-o", "pid="]
    if platform.startswith("linux"):
        cmd = ["ps", "-L", "-U", uid, "-o", "lwp="]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 4096
    return len(done.stdout.split())


def build_launch(
    mode: str,
    *,
    scratch: Path,
    tmpdir: Path,
    network: bool,
    limits: Limits,
    bwrap: str | None = None,
    platform: str = sys.platform,
) -> Launch:
    """How to start one worker in `mode` ("bubblewrap", "sandbox-exec" or "none")."""
    config: dict[str, object] = {"nproc": limits.processes}
    chown_to = None
    prefix: list[str] = []
    if mode == "bubblewrap":
        binary = bwrap_path(bwrap)
        if binary is None:
            raise SandboxUnavailableError(
                "python tool: bubblewrap (bwrap) disappeared; reinstall it"
            )
        as_root = os.geteuid() == 0
        if as_root:
            config["drop_to"] = [NOBODY, NOBODY]
            chown_to = (NOBODY, NOBODY)
        prefix = bwrap_argv(
            binary,
            scratch=scratch,
            network=network,
            as_root=as_root,
            memory=limits.memory,
            tmpfs_size=_bwrap_probe(binary)[2],
        )
        tmpdir = Path("/tmp")
    else:
        config["nproc"] = limits.processes + user_process_count(platform)
        if mode == "sandbox-exec":
            readable = [*python_roots(), WORKER.parent.resolve()]
            writable = [scratch.resolve(), tmpdir.resolve()]
            prefix = seatbelt.argv(readable=readable, writable=writable, network=network)
    worker = [sys.executable, "-I", "-u", str(WORKER), json.dumps(config)]
    return Launch(
        argv=prefix + worker,
        env=sandbox_env(scratch, tmpdir),
        cwd=scratch,
        preexec=make_preexec(limits, platform),
        mode=mode,
        watchdog=platform == "darwin",
        chown_to=chown_to,
    )


class MemoryWatchdog:
    """Kills a process group whose resident memory passes `limit` bytes (macOS, where
    RLIMIT_AS does not work); on unified memory a runaway tool must never evict the model."""

    def __init__(self, pgid: int, limit: int, interval: float = 0.25) -> None:
        self.pgid, self.limit, self.interval = pgid, limit, interval
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="python-rss-watchdog", daemon=True)

    def start(self) -> MemoryWatchdog:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def rss(self) -> int:
        """Resident bytes of every process in the group."""
        try:
            done = subprocess.run(
                ["ps", "-A", "-o", "pgid=,rss="], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return 0
        total = 0
        for line in done.stdout.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == str(self.pgid) and parts[1].isdigit():
                total += int(parts[1]) * 1024
        return total

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            if self.rss() > self.limit:
                self.fired = True
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pgid, signal.SIGKILL)
                return
