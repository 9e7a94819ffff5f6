"""The connections behind McpTools: one asyncio loop in a background thread, and on it one task per
MCP server that holds the official SDK's `Client` open from start to `close()`.

The SDK's transports are anyio context managers that must be entered and left by the same task,
so each server's task enters its client, lists its tools, then waits for its stop event; calls
from the (synchronous) session thread are submitted to the loop and awaited with a timeout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from gptoss_mlx import __version__

from .mcp_config import McpServerConfig

_GRACE = 5.0  # extra seconds the waiting thread allows past the SDK's own timeouts
_STOP_TIMEOUT = 10.0  # the SDK's stdio shutdown is close stdin, 2 s, SIGTERM, 2 s, SIGKILL


class ServerDown(Exception):
    """The server is not running; str is the one-line reason."""


class CallFailed(Exception):
    """The server answered the call with a protocol error (not a tool error); str says why."""


class CallCancelled(Exception):
    """The caller's cancel event was set while the call ran."""


@dataclass(eq=False)
class ServerHandle:
    config: McpServerConfig
    tools: list[Any] = field(default_factory=list)  # mcp_types.Tool, in the server's order
    up: bool = False
    reason: str = ""  # why it is down, once it is
    client: Any = None
    stop: asyncio.Event | None = None
    errlog: IO[bytes] | None = None


class McpConnections:
    """Starts every server at once (`start`), calls tools (`call`), stops them all (`close`).

    Failures are reported once per server through `report` (one line each), from whichever
    thread notices them; McpTools queues them for its caller's thread.
    """

    def __init__(
        self,
        configs: list[McpServerConfig],
        *,
        start_timeout: float,
        report: Callable[[str], None],
    ) -> None:
        self.servers = [ServerHandle(c) for c in configs]
        self._start_timeout = start_timeout
        self._report = report
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """Start all servers and wait until each is up or has failed (bounded by start_timeout)."""
        if not self.servers:
            return
        # The SDK logs a dying server's traceback; with no handler configured Python would print
        # it on the terminal. We report it in one line instead.
        sdk_log = logging.getLogger("mcp")
        if not any(isinstance(h, logging.NullHandler) for h in sdk_log.handlers):
            sdk_log.addHandler(logging.NullHandler())
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="gptoss-mcp", daemon=True
        )
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._start_all(), self._loop)
        try:
            fut.result(timeout=self._start_timeout + _GRACE)
        except TimeoutError:  # a backstop: _start_all itself gives up after start_timeout
            fut.cancel()
            for srv in self.servers:
                if not srv.up:
                    self._down(srv, "no answer", started=False)
        except BaseException:
            fut.cancel()
            raise

    async def _start_all(self) -> None:
        readies = []
        for srv in self.servers:
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._tasks.append(asyncio.create_task(self._serve(srv, ready)))
            readies.append(ready)
        results = await asyncio.gather(
            *(
                self._await_start(s, r, t)
                for s, r, t in zip(self.servers, readies, self._tasks, strict=True)
            )
        )
        for srv, failure in zip(self.servers, results, strict=True):
            if failure:
                self._down(srv, failure, started=False)

    async def _await_start(self, srv: ServerHandle, ready: asyncio.Future[None], task: Any) -> str:
        """Empty when `srv` came up, else why not."""
        try:
            await asyncio.wait_for(asyncio.shield(ready), self._start_timeout)
            return ""
        except TimeoutError:
            task.cancel()  # its transport stops the process in the background; close() waits
            return f"no answer within {self._start_timeout:g} s"
        except ServerDown as exc:
            return str(exc)

    async def _serve(self, srv: ServerHandle, ready: asyncio.Future[None]) -> None:
        srv.stop = asyncio.Event()
        with contextlib.ExitStack() as files:
            if srv.config.transport == "stdio":
                srv.errlog = files.enter_context(tempfile.TemporaryFile("a+b"))
            try:
                async with contextlib.AsyncExitStack() as stack:
                    srv.client = await stack.enter_async_context(await _client(srv, stack))
                    srv.tools = await _list_tools(srv.client)
                    srv.up = True
                    ready.set_result(None)
                    await srv.stop.wait()
            except Exception as exc:  # noqa: BLE001 (a failing server must not take the loop down)
                if not ready.done():
                    ready.set_exception(ServerDown(_one_line(exc, srv.errlog)))
                else:
                    self._down(srv, _one_line(exc, srv.errlog), started=True)
            finally:
                srv.up, srv.client = False, None
                srv.errlog = None

    def _down(self, srv: ServerHandle, reason: str, *, started: bool) -> None:
        with self._lock:
            if srv.reason:
                return
            srv.up, srv.reason = False, reason or "unknown error"
        if srv.stop is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(srv.stop.set)
        name = srv.config.name
        if started:
            self._report(f"MCP server '{name}' stopped ({srv.reason}); going on without its tools")
        else:
            self._report(f"MCP server '{name}' did not start ({srv.reason}); going on without it")

    def call(
        self,
        srv: ServerHandle,
        tool: str,
        arguments: dict[str, Any],
        *,
        timeout: float,
        cancel: threading.Event | None,
    ) -> Any:
        """The server's CallToolResult. Raises ServerDown, TimeoutError, CallFailed or
        CallCancelled; never anything the SDK raised."""
        if not srv.up or self._loop is None:
            raise ServerDown(srv.reason or "not running")
        fut = asyncio.run_coroutine_threadsafe(
            self._call(srv, tool, arguments, timeout), self._loop
        )
        deadline = time.monotonic() + timeout + _GRACE
        try:
            while not concurrent.futures.wait([fut], timeout=0.05).done:
                if cancel is not None and cancel.is_set():
                    fut.cancel()
                    raise CallCancelled()
                if time.monotonic() > deadline:
                    fut.cancel()
                    raise TimeoutError()
        except KeyboardInterrupt:
            fut.cancel()
            raise
        if fut.cancelled():  # close() stopped the loop's work under us
            raise ServerDown(srv.reason or "stopped")
        return fut.result()

    async def _call(
        self, srv: ServerHandle, tool: str, arguments: dict[str, Any], timeout: float
    ) -> Any:
        from mcp import MCPError
        from mcp_types import REQUEST_TIMEOUT

        client = srv.client
        if client is None:
            raise ServerDown(srv.reason or "not running")
        try:
            return await client.call_tool(tool, arguments, read_timeout_seconds=timeout)
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                raise TimeoutError() from None
            if _connection_lost(exc):
                self._down(srv, _one_line(exc, srv.errlog), started=True)
                raise ServerDown(srv.reason) from None
            raise CallFailed(f"{exc.message} (MCP error {exc.code})") from None
        except Exception as exc:  # noqa: BLE001 (transport failures: the server is gone)
            self._down(srv, _one_line(exc, srv.errlog), started=True)
            raise ServerDown(srv.reason) from None

    def close(self) -> None:
        """Stop every server (children waited for) and the loop thread. Idempotent."""
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._stop_all(), loop)
        with contextlib.suppress(BaseException):
            fut.result(timeout=_STOP_TIMEOUT + _GRACE)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=_GRACE)
        if not thread.is_alive():
            loop.close()

    async def _stop_all(self) -> None:
        for srv in self.servers:
            with self._lock:
                srv.reason = srv.reason or "closed"
            if srv.stop is not None:
                srv.stop.set()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=_STOP_TIMEOUT)


async def _client(srv: ServerHandle, stack: contextlib.AsyncExitStack) -> Any:
    """An SDK Client (not yet entered) for the server's transport."""
    from mcp import Client, Implementation, StdioServerParameters

    cfg = srv.config
    if cfg.transport == "stdio":
        from mcp.client.stdio import stdio_client

        params = StdioServerParameters(
            command=cfg.command, args=list(cfg.args), env=dict(cfg.env) or None, cwd=cfg.cwd
        )
        transport: Any = stdio_client(params, errlog=srv.errlog)  # type: ignore[arg-type]
    elif cfg.transport == "sse":
        from mcp.client.sse import sse_client

        # The SSE stream is idle between calls; the SDK's 300 s default would drop the server.
        transport = sse_client(cfg.url, headers=cfg.headers or None, sse_read_timeout=86400.0)
    else:
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        http = httpx2.AsyncClient(headers=cfg.headers, timeout=httpx2.Timeout(30.0, read=300.0))
        await stack.enter_async_context(http)
        transport = streamable_http_client(cfg.url, http_client=http)
    # "legacy": the initialize handshake every server in the wild speaks; the 2026 discover probe
    # can go unanswered by older servers.
    info = Implementation(name="gptoss-mlx", version=__version__)
    return Client(transport, mode="legacy", cache=None, client_info=info)


async def _list_tools(client: Any) -> list[Any]:
    tools: list[Any] = []
    cursor = None
    for _ in range(100):  # a server whose cursor never ends cannot hang the start
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def _connection_lost(exc: Any) -> bool:
    from mcp_types import CONNECTION_CLOSED

    return exc.code == CONNECTION_CLOSED


def _one_line(exc: BaseException, errlog: IO[bytes] | None) -> str:
    """The innermost error as one line, plus the last line the server wrote to stderr."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    text = str(exc) or type(exc).__name__
    if type(exc).__name__ == "MCPError":
        text = getattr(exc, "message", text)
    if isinstance(exc, FileNotFoundError) and exc.filename:
        text = f"{exc.filename}: command not found"
    tail = _stderr_tail(errlog)
    if tail and tail not in text:
        text = f"{text}; stderr: {tail}"
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def _stderr_tail(errlog: IO[bytes] | None) -> str:
    """The last non-empty line of the server's stderr, read without moving the shared offset."""
    if errlog is None or errlog.closed:
        return ""
    try:
        size = os.fstat(errlog.fileno()).st_size
        data = os.pread(errlog.fileno(), 4096, max(0, size - 4096))
    except OSError:
        return ""
    lines = [ln.strip() for ln in data.decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else ""
