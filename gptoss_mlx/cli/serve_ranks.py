"""`gptoss serve` across ranks: under mlx.launch rank 0 serves HTTP and the others follow in step
(server/lockstep.py); with --hostfile, `gptoss serve` starts the ranks itself through mlx.launch."""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from ..errors import UserError

LAUNCH_ONLY = ("hostfile", "backend", "api_key")  # options that go to mlx.launch, not the ranks


def rank_options(ctx: Any) -> list[str]:
    """The options given to this `gptoss serve` on its command line, minus the launcher's."""
    out: list[str] = []
    for param in ctx.command.params:  # by name: typer may bring its own copy of click
        name = param.name
        if param.param_type_name != "option" or name in LAUNCH_ONLY:
            continue
        if getattr(ctx.get_parameter_source(name), "name", "") != "COMMANDLINE":
            continue
        value = ctx.params[name]
        if param.is_flag:
            out += [param.opts[0]] if value else []
        else:
            out += [param.opts[0], str(value)]
    return out


def launch_command(
    ctx: Any, hostfile: Path, backend: str | None, api_key: str | None
) -> tuple[list[str], list[str]]:
    """(the mlx.launch command line, the same with the API key masked, for printing)."""
    from ..backend.distributed import launcher

    launch = launcher()
    if launch is None:
        raise UserError(f"mlx.launch not found beside {sys.executable} or on PATH; pip install mlx")
    if not hostfile.is_file():
        raise UserError(f"no hostfile at {hostfile}; write one (see the README, Several Macs)")
    if backend not in (None, "ring", "jaccl"):
        raise UserError(f"unknown --backend {backend!r}; use ring or jaccl")
    head = [launch, "--hostfile", str(hostfile)] + (["--backend", backend] if backend else [])
    tail = ["--", sys.executable, "-m", "gptoss_mlx", "serve", *rank_options(ctx)]
    if not api_key:
        return head + tail, head + tail
    key = ["--env", f"GPTOSS_API_KEY={api_key}"]  # mlx.launch passes no environment over ssh
    return head + key + tail, head + ["--env", "GPTOSS_API_KEY=***"] + tail


def launch_serve(ctx: Any, hostfile: Path, backend: str | None, api_key: str | None) -> int:
    """Run the ranks through mlx.launch; Ctrl-C or SIGTERM stops them (a second one kills)."""
    argv, shown = launch_command(ctx, hostfile, backend, api_key)
    print(f"gptoss: {shlex.join(shown)}", file=sys.stderr, flush=True)
    # Its own session, so a signal reaches the ranks only through us; stdin a pipe kept open
    # (mlx.launch spins on a closed one).
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, start_new_session=True)
    signals = [0]

    def forward(signum: int, frame: Any) -> None:
        signals[0] += 1
        if signals[0] == 1:  # the ranks (and ssh clients) only: mlx.launch ends when they do
            for pid in _group_members(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGINT)  # rank 0 stops serving and stops the others
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    code = proc.wait()
    return 128 - code if code < 0 else code


def _group_members(pgid: int) -> list[int]:
    """The processes of process group `pgid` except its leader (pgrep -g: Linux and macOS)."""
    found = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True).stdout
    return [int(p) for p in found.split() if int(p) != pgid]


def serve_group(
    group: Any, settings: Any, sock_args: tuple[str, int], api_key: str | None,
    max_queue: int, strategy: str,
) -> None:  # fmt: skip
    """One rank of `gptoss serve` under mlx.launch."""
    from ..backend import distributed as dist
    from ..server.lockstep import Lockstep
    from ..server.worker import GenerationQueue
    from ..session.open import open_session
    from . import serve
    from .resolve import model_path

    bound: dict[str, Any] = {}

    def bind() -> None:  # a port in use stops every rank, not only rank 0
        if group.rank() == 0:
            bound["sock"] = serve._bind(*sock_args)

    dist.share_outcome(group, bind)
    path = model_path(settings.model, yes=settings.yes, interactive=False)
    lockstep = Lockstep(lambda o: dist.share_object(o, group), lambda f: dist.any_rank(group, f))
    if group.rank() != 0:
        # Ctrl-C reaches every rank and a closed ssh session hangs up on every rank: rank 0
        # decides, and a follower ends when rank 0 says so or goes away (its collectives fail).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        session = open_session(settings, path, strategy=strategy)
        lockstep.follow(serve.make_engine(session, cache_bytes=1 << 62))  # rank 0 evicts
        return
    queue = GenerationQueue(max_queue, on_exit=lockstep.shutdown)
    session = queue.call(lambda: open_session(settings, path, strategy=strategy))
    if session.distributed_note:
        print(f"gptoss: {session.distributed_note}", file=sys.stderr, flush=True)
    engine = serve.make_engine(session)
    engine.lockstep = lockstep
    from ..server import create_app

    app = create_app(engine, api_key=api_key, queue=queue)
    try:
        serve._run(app, bound["sock"], engine.model_id, api_key, on_server=_rank0_signals)
    finally:
        queue.close(timeout=None)  # the followers are told to stop once the last request ends


def _rank0_signals(server: Any) -> None:
    """Rank 0 stops serving on Ctrl-C and SIGTERM (uvicorn's handlers), when its ssh session
    hangs up, or when the launcher goes away (its stdin pipe from mlx.launch closes). After
    uvicorn's graceful shutdown it re-raises the signal to the handler it found: make that a
    no-op, so the followers are told to stop and every rank exits 0."""

    def stop(*_: Any) -> None:
        server.should_exit = True

    signal.signal(signal.SIGHUP, stop)
    signal.signal(signal.SIGINT, lambda *_: None)
    signal.signal(signal.SIGTERM, lambda *_: None)
    if not stat.S_ISFIFO(os.fstat(0).st_mode):
        return

    def watch() -> None:
        while True:
            select.select([0], [], [])
            try:
                if not os.read(0, 65536):
                    break
            except BlockingIOError:
                continue
            except OSError:
                break
        stop()

    threading.Thread(target=watch, name="gptoss-launcher-watch", daemon=True).start()
