"""A small MCP server written with the official SDK, for tests/test_mcp.py.

`python demo_server.py` serves over stdio; `python demo_server.py --http PORT` serves the same
tools over streamable HTTP on 127.0.0.1:PORT/mcp, and `--sse PORT` over the old HTTP+SSE
transport on 127.0.0.1:PORT/sse.
"""

from __future__ import annotations

import os
import sys
import time

from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("demo")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool(name="get-weather.now")
def get_weather(city: str) -> str:
    """Current weather for a city."""
    return f"Sunny in {city}, 21 C"


@server.tool()
def fail(reason: str) -> str:
    """Always fails with the given reason."""
    raise ToolError(reason)


@server.tool(structured_output=False)
def picture() -> list[object]:
    """Returns a caption and a tiny PNG."""
    return ["a red dot", Image(data=b"\x89PNG\r\n\x1a\n" + b"\0" * 12, format="png")]


@server.tool()
def big(n: int) -> str:
    """Returns n characters of text."""
    return "x" * n


@server.tool()
def hang() -> str:
    """Never answers."""
    while True:
        time.sleep(3600)


@server.tool()
def crash() -> str:
    """Kills the server process in the middle of the call."""
    sys.stderr.write("demo server: crashing on purpose\n")
    sys.stderr.flush()
    os._exit(3)


@server.tool()
def header(name: str, ctx: Context) -> str:
    """The value of an HTTP request header ("(none)" over stdio)."""
    headers = ctx.headers or {}
    return headers.get(name.lower(), "(none)")


@server.tool()
def pid() -> int:
    """The server's process id."""
    return os.getpid()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("--http", "--sse"):
        server.settings.log_level = "WARNING"
        transport = "streamable-http" if sys.argv[1] == "--http" else "sse"
        server.run(transport, host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
