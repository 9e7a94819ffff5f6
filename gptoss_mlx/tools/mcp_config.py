"""The MCP server list: the `mcpServers` JSON people already have from Claude Desktop, Cursor and
LM Studio, read leniently (VS Code's `servers`, Cline's `autoApprove`, Roo's `alwaysAllow`).

    {"mcpServers": {
        "files": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"],
                  "env": {"DEBUG": "1"}, "cwd": "~/work", "autoApprove": ["read_file"]},
        "hf": {"url": "https://huggingface.co/mcp", "headers": {"Authorization": "Bearer ..."}},
        "old": {"command": "legacy-server", "disabled": true}}}

Unknown keys (`icon`, `timeout`, `inputs`, ...) are ignored; anything malformed is a one-line
UserError naming the file and the key.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gptoss_mlx.errors import UserError
from gptoss_mlx.paths import config_dir

_HTTP_TYPES = {"http", "streamable-http", "streamable_http", "streamablehttp"}


@dataclass(frozen=True)
class McpServerConfig:
    """One enabled server. `transport` is "stdio" (command, args, env, cwd), "http" (url,
    headers; MCP streamable HTTP) or "sse" (the older HTTP+SSE transport). `auto_approve` holds
    the server's real tool names."""

    name: str
    transport: Literal["stdio", "http", "sse"]
    command: str = ""
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    auto_approve: frozenset[str] = frozenset()
    source: Path | None = None  # the file it came from, for messages


def default_mcp_path() -> Path:
    return config_dir() / "mcp.json"


def load_mcp_config(path: Path | None) -> list[McpServerConfig]:
    """The enabled servers in `path`, in file order. None means the user's
    `~/.config/gptoss/mcp.json` when it exists, else no servers."""
    if path is None:
        path = default_mcp_path()
        if not path.is_file():
            return []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such MCP config file; check the path given to --mcp") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the MCP config ({exc}); fix the file") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg}); fix the file"
        ) from None
    return parse_mcp_config(data, path)


def parse_mcp_config(data: Any, path: Path) -> list[McpServerConfig]:
    """The enabled servers in an already-decoded config (`path` only names it in errors)."""
    if not isinstance(data, dict):
        raise UserError(f'{path}: expected a JSON object with "mcpServers"; fix the file')
    key = "mcpServers" if "mcpServers" in data else "servers" if "servers" in data else None
    if key is None:
        raise UserError(f'{path}: no "mcpServers" (or "servers") object; add one')
    servers = data[key]
    if not isinstance(servers, dict):
        raise UserError(f'{path}: "{key}" must be an object mapping names to servers')
    configs = []
    for name, entry in servers.items():
        where = f"{path}: {key}.{name}"
        if not name.strip():
            raise UserError(f'{path}: "{key}" has a server with an empty name; name it')
        if not isinstance(entry, dict):
            raise UserError(f"{where} must be an object with a command or a url")
        disabled = entry.get("disabled", False)
        if not isinstance(disabled, bool):
            raise UserError(f"{where}.disabled must be true or false, not {json.dumps(disabled)}")
        if not disabled:
            configs.append(_parse_entry(name, entry, where, path))
    return configs


def _parse_entry(name: str, entry: dict[str, Any], where: str, path: Path) -> McpServerConfig:
    kind = entry.get("type", entry.get("transport"))
    url = entry.get("url", entry.get("serverUrl"))
    if kind is not None and not isinstance(kind, str):
        raise UserError(f'{where}.type must be "stdio", "http" or "sse"')
    kind = kind.lower() if kind else ("stdio" if "command" in entry else "http" if url else None)
    approve = _strings(entry, "autoApprove", where) + _strings(entry, "alwaysAllow", where)
    common = {"name": name, "auto_approve": frozenset(approve), "source": path}
    if kind == "stdio":
        command = entry.get("command")
        if not isinstance(command, str) or not command.strip():
            raise UserError(f"{where}.command must be a non-empty string (the program to run)")
        cwd = entry.get("cwd")
        if cwd is not None and not isinstance(cwd, str):
            raise UserError(f"{where}.cwd must be a string (a directory)")
        return McpServerConfig(
            transport="stdio",
            command=command,
            args=tuple(_strings(entry, "args", where)),
            env=_string_map(entry, "env", where),
            cwd=str(Path(cwd).expanduser()) if cwd else None,
            **common,
        )
    if kind in _HTTP_TYPES or kind == "sse":
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise UserError(f"{where}.url must be an http:// or https:// URL")
        headers = _string_map(entry, "headers", where)
        transport = "sse" if kind == "sse" else "http"
        return McpServerConfig(transport=transport, url=url, headers=headers, **common)
    if kind is None:
        raise UserError(f'{where} needs a "command" (stdio server) or a "url" (HTTP server)')
    raise UserError(f'{where}.type "{kind}" is unknown; use "stdio", "http" or "sse"')


def _strings(entry: dict[str, Any], key: str, where: str) -> list[str]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"{where}.{key} must be a list of strings")
    return value


def _string_map(entry: dict[str, Any], key: str, where: str) -> dict[str, str]:
    value = entry.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where}.{key} must be an object of names to strings")
    out = {}
    for k, v in value.items():
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise UserError(f"{where}.{key}.{k} must be a string")
        out[k] = str(v)
    return out
