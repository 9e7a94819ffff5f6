"""gpt-oss's stateful `python` tool: one persistent worker per chat, inside the OS sandbox.

The worker (python_worker.py) keeps one namespace across calls, like the Jupyter notebook the
model was trained with. A call that runs too long (or that the user cancels) is interrupted with
SIGINT first, which keeps the state; if it does not stop within the grace period the worker is
killed and restarted, and the model is told that its state was lost.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from gptoss_mlx.paths import data_dir

from .base import Tool, ToolResult
from .sandbox import (
    Launch,
    Limits,
    MemoryWatchdog,
    SandboxUnavailableError,
    build_launch,
    require_sandbox,
)

__all__ = ["NO_OUTPUT", "PythonTool", "SandboxUnavailableError", "scratch_dir"]

NO_OUTPUT = (
    "[WARN] No output available. Use print() to output anything to stdout to receive the output"
)
STARTUP_SECONDS = 30.0
_EOF = object()


def scratch_dir(chat_id: str) -> Path:
    """The chat's python working directory (created): data_dir()/python/<chat_id>."""
    if not chat_id or Path(chat_id).name != chat_id or chat_id in (".", ".."):
        raise ValueError(f"not a chat id: {chat_id!r}")
    path = data_dir() / "python" / chat_id
    path.mkdir(parents=True, exist_ok=True)
    return path


class _Worker:
    """One running worker process and the thread that reads its answers."""

    def __init__(self, launch: Launch, memory_limit: int) -> None:
        if launch.chown_to is not None:  # root runs the worker as nobody (see sandbox.py)
            os.chown(launch.cwd, *launch.chown_to)
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 (open while the worker lives)
        self.proc = subprocess.Popen(
            launch.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            cwd=launch.cwd,
            env=launch.env,
            preexec_fn=launch.preexec,  # noqa: PLW1509 (only setrlimit calls)
            start_new_session=True,  # the terminal's Ctrl-C is ours to forward, not the worker's
        )
        self.lines: queue.Queue[Any] = queue.Queue()
        threading.Thread(target=self._read, name="python-worker-reader", daemon=True).start()
        self.watchdog = None
        if launch.watchdog:
            self.watchdog = MemoryWatchdog(self.proc.pid, memory_limit).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.lines.put(json.loads(line))
        self.lines.put(_EOF)

    def send(self, message: dict[str, Any]) -> bool:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(message) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            return False
        return True

    def receive(self, timeout: float) -> Any:
        """The next answer, `_EOF` when the worker is gone, None when nothing came in time."""
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            return None

    def kill(self) -> None:
        if self.watchdog is not None:
            self.watchdog.stop()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.kill()  # bwrap: its sandbox dies with it (--die-with-parent, PID namespace)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout, self.stderr):
            with contextlib.suppress(OSError):
                stream.close()  # type: ignore[union-attr]

    def why_dead(self, memory_limit: int) -> str:
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:  # it closed its answer pipe but lives on
            self.kill()
            return "stopped answering"
        if self.watchdog is not None and self.watchdog.fired:
            return f"used more than the {memory_limit / 2**30:g} GiB memory limit and was killed"
        if code == -signal.SIGXCPU:
            return "used up its CPU time limit and was killed"
        if code < 0:
            return f"was killed by {signal.Signals(-code).name}"
        tail = self._stderr_tail()
        return f"exited with code {code}" + (f" ({tail})" if tail else "")

    def _stderr_tail(self) -> str:
        self.stderr.seek(0)
        lines = self.stderr.read().decode("utf-8", "replace").strip().splitlines()
        return lines[-1] if lines else ""


class PythonTool(Tool):
    """The `python` recipient. `call("", code)` runs `code` in the chat's persistent namespace."""

    name = "python"

    def __init__(
        self,
        workdir: Path,
        *,
        timeout: float = 120.0,
        network: bool = False,
        unsafe: bool = False,
        memory_limit: int = 4 * 2**30,
        output_limit: int = 16_000,
        grace: float = 5.0,
        limits: Limits | None = None,
        bwrap: str | None = None,
    ) -> None:
        """Raises SandboxUnavailableError when no sandbox works here and `unsafe` is False.
        `bwrap`: the bubblewrap binary (default: found on PATH)."""
        self.workdir = Path(workdir).resolve()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.timeout, self.grace, self.network = timeout, grace, network
        self.output_limit = output_limit
        self.limits = limits or Limits(memory=memory_limit)
        self.mode = require_sandbox(unsafe=unsafe, bwrap=bwrap)
        self.needs_approval = self.mode == "none"  # unsafe: the user approves every run
        self._bwrap = bwrap
        self._tmpdir: Path | None = None
        self._worker: _Worker | None = None
        self._ids = 0
        self._lock = threading.Lock()

    def instruction(self) -> str:
        """harmony's python tool text, with the real timeout, directory and network."""
        from openai_harmony import ToolNamespaceConfig  # only the prompt needs it, not the worker

        text = ToolNamespaceConfig.python().description
        text = _swap(text, "after 120.0 seconds", f"after {float(self.timeout)} seconds")
        text = _swap(text, "'/mnt/data'", f"'{self.workdir}'")
        net = "enabled" if self.network else "disabled"
        unknown = "Internet access for this session is UNKNOWN. Depends on the cluster."
        return _swap(text, unknown, f"Internet access for this session is {net}.")

    def call(
        self, function: str, arguments: str, *, cancel: threading.Event | None = None
    ) -> ToolResult:
        code = _code_from(arguments)
        started = time.monotonic()
        with self._lock:
            text, error, lost, summary = self._run(code, cancel)
        seconds = time.monotonic() - started
        details = {"code": code, "output": text, "seconds": seconds}
        return ToolResult(text, error=error, summary=summary, details=details, state_lost=lost)

    def close(self) -> None:
        with self._lock:
            self._stop_worker()
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None

    def _start_worker(self) -> _Worker | str:
        """A ready worker, or the one-line reason it could not start."""
        if self._tmpdir is None and self.mode != "bubblewrap":  # bwrap has its own private /tmp
            self._tmpdir = Path(tempfile.mkdtemp(prefix="gptoss-python-"))
        tmpdir = self._tmpdir or Path("/tmp")
        launch = build_launch(
            self.mode,
            scratch=self.workdir,
            tmpdir=tmpdir,
            network=self.network,
            limits=self.limits,
            bwrap=self._bwrap,
        )
        try:
            worker = _Worker(launch, self.limits.memory)
        except OSError as err:
            return f"could not start ({err})"
        answer = worker.receive(STARTUP_SECONDS)
        if isinstance(answer, dict) and answer.get("ready"):
            return worker
        reason = "did not start in time" if answer is None else worker.why_dead(self.limits.memory)
        worker.kill()
        return reason

    def _stop_worker(self) -> None:
        if self._worker is not None:
            self._worker.kill()
            self._worker = None

    def _run(self, code: str, cancel: threading.Event | None) -> tuple[str, bool, bool, str]:
        """(text, error, state_lost, summary) for one call."""
        if cancel is not None and cancel.is_set():
            return "[ERROR] Interrupted by the user before the code ran.", True, False, "cancelled"
        if self._worker is None:
            started = self._start_worker()
            if isinstance(started, str):
                return f"[ERROR] The Python sandbox {started}.", True, True, "failed to start"
            self._worker = started
        self._ids += 1
        run_id, worker = self._ids, self._worker
        answer, why = _EOF, ""
        if worker.send({"op": "run", "id": run_id, "code": code, "limit": self.output_limit}):
            answer, why = self._await(worker, run_id, cancel)
        if answer is _EOF:
            reason = worker.why_dead(self.limits.memory)
            self._stop_worker()
            text = f"[ERROR] The Python process {reason}; it was restarted and its state lost."
            return text, True, True, "crashed"
        if answer is None:  # did not stop after SIGINT: kill it
            self._stop_worker()
            text = f"[ERROR] {why}; the Python session was restarted and its state lost."
            return text, True, True, "killed"
        return _compose(answer, why)

    def _await(
        self, worker: _Worker, run_id: int, cancel: threading.Event | None
    ) -> tuple[Any, str]:
        """Wait for run `run_id`'s answer, interrupting it on timeout or cancel. Returns the
        answer (or `_EOF`, or None when it ignored the interrupt) and why it was interrupted."""
        deadline = time.monotonic() + self.timeout
        why, interrupted_at = "", 0.0
        while True:
            answer = worker.receive(0.05)
            if answer is _EOF or (isinstance(answer, dict) and answer.get("id") == run_id):
                return answer, why
            now = time.monotonic()
            if not why:
                if cancel is not None and cancel.is_set():
                    why = "Interrupted by the user"
                elif now >= deadline:
                    why = f"Execution timed out after {self.timeout:g} s"
                if why:
                    interrupted_at = now
                    worker.send({"op": "interrupt", "id": run_id})
            elif now >= interrupted_at + self.grace:
                return None, why


def _compose(answer: dict[str, Any], why: str) -> tuple[str, bool, bool, str]:
    output = str(answer.get("output", ""))
    exception = answer.get("exception")
    if why:
        sep = "" if not output or output.endswith("\n") else "\n"
        note = f"[ERROR] {why} and was interrupted; the session's variables are kept."
        return output + sep + note, True, False, "interrupted"
    if not output:
        return NO_OUTPUT, False, False, "no output"
    if exception:
        return output, True, False, str(exception)
    lines = output.count("\n") + (not output.endswith("\n"))
    return output, False, False, f"{lines} line{'s' if lines != 1 else ''} of output"


def _code_from(arguments: str) -> str:
    """The code: raw text as harmony sends it, or `{"code": "..."}` as some clients wrap it."""
    stripped = arguments.strip()
    if stripped.startswith("{") and '"code"' in stripped:
        with contextlib.suppress(ValueError):
            data = json.loads(stripped)
            if isinstance(data, dict) and set(data) == {"code"} and isinstance(data["code"], str):
                return data["code"]
    return arguments


def _swap(text: str, old: str, new: str) -> str:
    if old not in text:
        raise RuntimeError(f"openai_harmony's python tool text changed: {old!r} is gone")
    return text.replace(old, new)
