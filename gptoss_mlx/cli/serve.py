"""`gptoss serve`: the OpenAI-compatible server (Chat Completions and Responses) on one model."""

from __future__ import annotations

import ipaddress
import signal
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UserError
from .options import (
    BrowserOpt,
    ContextOpt,
    DtypeOpt,
    EffortOpt,
    ForceOpt,
    InstructionsOpt,
    MaxTokensOpt,
    MinPOpt,
    ModelOpt,
    PythonNetworkOpt,
    PythonOpt,
    PythonTimeoutOpt,
    PythonUnsafeOpt,
    SeedOpt,
    TemperatureOpt,
    TopKOpt,
    TopPOpt,
    YesOpt,
    settings_from,
)

SIZES = {24: "20b", 36: "120b"}  # layers -> the size clients name


def serve_cmd(
    ctx: typer.Context,
    model: ModelOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="Port (0 picks a free one).")] = 8000,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="GPTOSS_API_KEY",
            help="Require 'Authorization: Bearer KEY' on every request. Env GPTOSS_API_KEY.",
            show_default=False,
        ),
    ] = None,
    insecure_no_auth: Annotated[
        bool,
        typer.Option("--insecure-no-auth", help="Allow a non-loopback --host without --api-key."),
    ] = False,
    max_queue: Annotated[
        int, typer.Option("--max-queue", help="Requests that may wait for the model (503 beyond).")
    ] = 16,
    effort: EffortOpt = None,
    instructions: InstructionsOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    min_p: MinPOpt = None,
    seed: SeedOpt = None,
    max_tokens: MaxTokensOpt = None,
    context: ContextOpt = None,
    dtype: DtypeOpt = None,
    yes: YesOpt = False,
    force: ForceOpt = False,
    python: PythonOpt = False,
    python_timeout: PythonTimeoutOpt = None,
    python_network: PythonNetworkOpt = False,
    python_unsafe: PythonUnsafeOpt = False,
    browser: BrowserOpt = False,
    hostfile: Annotated[
        Path | None,
        typer.Option(
            "--hostfile",
            help="mlx.launch hostfile: start one rank per host through mlx.launch; rank 0 serves.",
            show_default=False,
        ),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend", help="With --hostfile: ring or jaccl (default: the hostfile's, else ring)."
        ),
    ] = None,
    strategy: Annotated[
        str,
        typer.Option(
            "--strategy",
            help="Across ranks: split the model by tensor, pipeline or auto (tensor on jaccl, pipeline on ring).",
        ),
    ] = "auto",
) -> None:
    """Serve a model over an OpenAI-compatible HTTP API (/v1/chat/completions, /v1/responses)."""
    if not _loopback(host) and not api_key and not insecure_no_auth:
        raise UserError(
            f"refusing to serve on {host} without --api-key (anyone who can reach it could use "
            "the model); add --api-key KEY, or --insecure-no-auth if that is intended"
        )
    if max_queue < 0:
        raise UserError("--max-queue must be 0 or more")
    from ..backend import distributed as dist

    if hostfile is not None:
        from .serve_ranks import launch_serve

        raise typer.Exit(launch_serve(ctx, hostfile, backend, api_key))
    if backend is not None:
        raise UserError("--backend goes with --hostfile (mlx.launch chooses it otherwise)")
    settings = settings_from(locals())
    group = dist.current_group() if dist.launched() else None
    if group is not None and (settings.python or settings.browser):
        raise UserError("--python and --browser are not served across ranks yet; drop them")
    if group is not None:
        from .serve_ranks import serve_group

        with dist.peer_errors():
            serve_group(group, settings, (host, port), api_key, max_queue, strategy)
        return
    _serve_here(settings, settings.browser, (host, port), api_key, max_queue)


def _serve_here(
    settings: Any, browser: bool, address: tuple[str, int], api_key: str | None, max_queue: int
) -> None:
    """Serve from this process: tools first, then the socket, then the model."""
    from . import serve_tools

    tools = serve_tools.build(settings, browser)  # a missing sandbox: refused before the model
    sock = _bind(*address)
    from ..server import builtin, create_app
    from ..server.worker import GenerationQueue
    from ..session.open import open_session
    from .resolve import model_path

    queue = GenerationQueue(max_queue)  # the model lives on the generation thread
    try:
        path = model_path(settings.model, yes=settings.yes, interactive=sys.stdin.isatty())
        session = queue.call(lambda: open_session(settings, path))
    except BaseException:
        builtin.close_all(tools)
        raise
    engine = make_engine(session)
    app = create_app(engine, api_key=api_key, queue=queue, builtin_tools=tools)
    _run(app, sock, engine.model_id, api_key, tools=sorted(tools))


def make_engine(session: Any, **kw: Any) -> Any:
    """The ServerEngine over an opened session, named as clients call that model size."""
    from ..model.config import ModelConfig
    from ..server import ServerEngine
    from ..server.engine import ALIASES

    path = Path(session.model_path)
    size = SIZES.get(ModelConfig.from_dir(path).num_hidden_layers)
    aliases = ALIASES.get(size or "", ())
    model_id = aliases[0] if aliases else path.name
    return ServerEngine(
        session.model, session.encoding, model_id=model_id, aliases=aliases,
        defaults=session.settings, **kw,
    )  # fmt: skip


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise UserError(
            f"cannot listen on {host}:{port} ({e.strerror}); pick another --port or --host"
        ) from None
    return sock


def _banner(url: str, model_id: str, api_key: str | None, tools: list[str]) -> str:
    key = api_key or "unused"
    names = {"python": "code_interpreter (python)", "browser": "web_search (browser)"}
    served = ", ".join(names[t] for t in tools)
    extra = f"\n  Built-in tools in /v1/responses: {served}" if tools else ""
    return (
        f"gptoss serve: {model_id} at {url}/v1 (Ctrl-C to stop)\n"
        f"  Python:  from openai import OpenAI\n"
        f'           client = OpenAI(base_url="{url}/v1", api_key="{key}")\n'
        f'           reply = client.chat.completions.create(model="{model_id}", '
        f'messages=[{{"role": "user", "content": "Hello"}}])\n'
        f"           print(reply.choices[0].message.content)\n"
        f'  Codex:   [model_providers.gptoss] name = "gptoss-mlx" '
        f'base_url = "{url}/v1" wire_api = "responses"'
        f"{extra}"
    )


def _run(
    app: Any,
    sock: socket.socket,
    model_id: str,
    api_key: str | None,
    on_server: Any = None,
    tools: list[str] | None = None,
) -> None:
    import uvicorn

    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(
        app, log_level="info", access_log=True, timeout_graceful_shutdown=5, lifespan="on"
    )
    server = uvicorn.Server(config)
    if on_server is not None:
        on_server(server)
    banner = _banner(f"http://{shown}:{port}", model_id, api_key, tools or [])
    print(banner, file=sys.stderr, flush=True)
    # uvicorn handles Ctrl-C and SIGTERM: it stops accepting, lets requests finish for up to 5 s,
    # then cancels them (which cancels their generations) and runs the app's shutdown. It then
    # re-raises the signal; a server stopped on purpose exits 0, not as an interrupted job.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
