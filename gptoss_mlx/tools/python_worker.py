"""The python tool's worker: one persistent namespace, run inside the sandbox as `python -I -u`.

Standard library only (it runs with whatever Python the sandbox exposes). Protocol, one JSON object
per line: the parent writes `{"op": "run", "id": N, "code": "...", "limit": CHARS}` or
`{"op": "interrupt", "id": N}` to stdin; the worker answers `{"ready": true}` once at start, then
`{"id": N, "output": "..."}` per run on its original stdout. argv[1] is a JSON config:
`{"nproc": int | null, "drop_to": [uid, gid] | null}`.

Model code sees /dev/null as stdin and writes fd 1 and 2 into one capture file, so the output of
subprocesses and C extensions is caught too and cannot corrupt the protocol.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import json
import linecache
import os
import queue
import resource
import signal
import sys
import tempfile
import threading
import traceback
import types

_THIS_FILE = os.path.abspath(__file__)
_running_id: int | None = None  # the run SIGINT may interrupt; None between runs


def cap_text(data: bytes, size: int, limit: int) -> str:
    """`data` is the whole output (or, when `size` is larger, its head and tail joined). Keep at
    most `limit` characters: the first and last halves, with a note saying what was cut."""
    text = data.decode("utf-8", "replace")
    if size == len(data) and len(text) <= limit:
        return text
    half = max(limit // 2, 1)
    head, tail = text[:half], text[-half:]
    note = (
        f"\n\n[... output truncated: it was {size} bytes; "
        f"only the first and last {half} characters are shown ...]\n\n"
    )
    return head + note + tail


def read_capped(fd: int, limit: int) -> str:
    """Read the capture file behind `fd` without loading more than about 8 x `limit` bytes."""
    size = os.fstat(fd).st_size
    window = 4 * max(limit, 1)  # bytes per side; utf-8 needs at most 4 per character
    if size <= 2 * window:
        return cap_text(os.pread(fd, size, 0), size, limit)
    head = os.pread(fd, window, 0)
    tail = os.pread(fd, window, size - window)
    return cap_text(head + tail, size, limit)


def _on_sigint(signum: int, frame: types.FrameType | None) -> None:
    if _running_id is not None:
        raise KeyboardInterrupt


def _format_exception(exc: BaseException) -> str:
    """The traceback as Python prints it, without the worker's own frames (the exec() call at
    the top, the SIGINT handler at the bottom)."""
    report = traceback.TracebackException.from_exception(exc)
    seen = set()
    todo = [report]
    while todo:
        part = todo.pop()
        if id(part) in seen:
            continue
        seen.add(id(part))
        mine = [f for f in part.stack if f.filename != _THIS_FILE]
        part.stack = traceback.StackSummary.from_list(mine)
        todo += [p for p in (part.__cause__, part.__context__) if p is not None]
    return "".join(report.format())


def _execute(code: str, filename: str, namespace: dict) -> None:
    """Run `code` like a notebook cell: statements, then echo the last expression's value."""
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    tree = ast.parse(code, filename, "exec")
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, filename, "exec"), namespace)
    if last is not None:
        expr = ast.Expression(last.value)
        value = eval(compile(expr, filename, "eval"), namespace)
        sys.displayhook(value)


class Worker:
    def __init__(self, proto_out: int, capture: int) -> None:
        self.proto_out = proto_out
        self.capture = capture
        self.stdout, self.stderr = sys.stdout, sys.stderr
        main = types.ModuleType("__main__")
        main.__dict__["__builtins__"] = builtins
        sys.modules["__main__"] = main  # so pickle and friends find what the model defines
        self.namespace = main.__dict__
        self.runs: queue.Queue[dict] = queue.Queue()

    def send(self, message: dict) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(self.proto_out, data) :]

    def read_requests(self, stream: object) -> None:
        """Reader thread: queue runs, turn interrupts into SIGINT for the main thread."""
        main_thread = threading.main_thread().ident
        for line in stream:  # type: ignore[attr-defined]
            request = json.loads(line)
            if request.get("op") == "run":
                self.runs.put(request)
            elif request.get("op") == "interrupt" and request.get("id") == _running_id:
                signal.pthread_kill(main_thread, signal.SIGINT)  # type: ignore[arg-type]
        os._exit(0)  # the parent is gone

    def run(self, request: dict) -> tuple[str, str | None]:
        """(output, name of the exception the code raised or None)."""
        global _running_id
        sys.stdout, sys.stderr = self.stdout, self.stderr
        os.dup2(self.capture, 1)
        os.dup2(self.capture, 2)
        os.ftruncate(self.capture, 0)
        filename = f"<cell {request['id']}>"
        raised = None
        try:
            _running_id = request["id"]
            _execute(request["code"], filename, self.namespace)
            _running_id = None
        except BaseException as exc:  # noqa: BLE001 (the model's errors are its output)
            _running_id = None
            raised = type(exc).__name__
            sys.stderr.write(_format_exception(exc))
        for stream in (sys.stdout, sys.stderr, self.stdout, self.stderr):
            with contextlib.suppress(Exception):  # the model may have replaced or closed them
                stream.flush()
        return read_capped(self.capture, int(request.get("limit", 16_000))), raised

    def serve(self) -> None:
        self.send({"ready": True})
        while True:
            request = self.runs.get()
            try:
                output, raised = self.run(request)
            except KeyboardInterrupt:  # arrived just after the model's code ended
                output = read_capped(self.capture, int(request.get("limit", 16_000)))
                raised = "KeyboardInterrupt"
            self.send({"id": request["id"], "output": output, "exception": raised})


def _apply_config(config: dict) -> None:
    """Limits that must be set inside the sandbox, then drop root (see sandbox.py)."""
    if config.get("nproc"):
        resource.setrlimit(resource.RLIMIT_NPROC, (config["nproc"], config["nproc"]))
    if config.get("drop_to"):
        uid, gid = config["drop_to"]
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)


def main() -> None:
    _apply_config(json.loads(sys.argv[1]) if len(sys.argv) > 1 else {})
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
    proto_out = os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    fd, path = tempfile.mkstemp(prefix="python-output-")
    os.close(fd)
    # O_APPEND: fds 1 and 2 and any subprocess share the file without overwriting each other.
    capture = os.open(path, os.O_RDWR | os.O_APPEND)
    os.unlink(path)
    signal.signal(signal.SIGINT, _on_sigint)
    worker = Worker(proto_out, capture)
    threading.Thread(target=worker.read_requests, args=(proto_in,), daemon=True).start()
    worker.serve()


if __name__ == "__main__":
    main()
