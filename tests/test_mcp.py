"""MCP servers as function tools: the config format, and real servers written with the official SDK
(tests/mcp_servers/demo_server.py) over stdio, streamable HTTP and SSE on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gptoss_mlx.errors import UserError
from gptoss_mlx.tools.mcp import MAX_OUTPUT_CHARS, McpTools, clean_name, clean_schema
from gptoss_mlx.tools.mcp_config import McpServerConfig, load_mcp_config, parse_mcp_config

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "tests" / "mcp_servers" / "demo_server.py")
DEMO_TOOLS = ["add", "get_weather_now", "fail", "picture", "big", "hang", "crash", "header", "pid"]


def demo(**extra: object) -> dict[str, object]:
    return {"command": sys.executable, "args": [DEMO], **extra}


def configs(servers: dict[str, object]) -> list[McpServerConfig]:
    return parse_mcp_config({"mcpServers": servers}, Path("test.json"))


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


# -- config


def test_config_reads_the_formats_people_have(tmp_path: Path) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "files": {
                        "command": "npx",
                        "args": ["-y", "@modelcontextprotocol/server-filesystem", "/tmp"],
                        "env": {"DEBUG": "1", "PORT": 8080},
                        "cwd": "~/work",
                        "autoApprove": ["read_file"],
                        "alwaysAllow": ["list_directory"],
                        "icon": "folder",
                    },
                    "hf": {"url": "https://hf.co/mcp", "headers": {"Authorization": "Bearer t"}},
                    "typed": {"type": "streamable-http", "url": "http://127.0.0.1:1/mcp"},
                    "vs": {"type": "http", "url": "http://127.0.0.1:2/mcp"},
                    "cline": {"type": "streamableHttp", "url": "http://127.0.0.1:3/mcp"},
                    "old": {"type": "sse", "url": "http://127.0.0.1:4/sse"},
                    "off": {"command": "", "disabled": True},
                }
            }
        )
    )
    by_name = {c.name: c for c in load_mcp_config(path)}
    assert list(by_name) == ["files", "hf", "typed", "vs", "cline", "old"]
    files = by_name["files"]
    assert files.transport == "stdio" and files.command == "npx"
    assert files.args == ("-y", "@modelcontextprotocol/server-filesystem", "/tmp")
    assert files.env == {"DEBUG": "1", "PORT": "8080"}
    assert files.cwd == str(Path.home() / "work")
    assert files.auto_approve == {"read_file", "list_directory"}
    assert files.source == path
    assert by_name["hf"].transport == "http" and by_name["hf"].headers == {
        "Authorization": "Bearer t"
    }
    assert [by_name[n].transport for n in ("typed", "vs", "cline", "old")] == ["http"] * 3 + ["sse"]


def test_config_accepts_vscode_servers_key() -> None:
    data = {"servers": {"x": {"type": "stdio", "command": "srv", "args": []}}, "inputs": []}
    [cfg] = parse_mcp_config(data, Path("mcp.json"))
    assert (cfg.name, cfg.transport, cfg.command) == ("x", "stdio", "srv")


def test_config_default_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert load_mcp_config(None) == []
    (tmp_path / "gptoss").mkdir()
    (tmp_path / "gptoss" / "mcp.json").write_text('{"mcpServers": {"a": {"command": "x"}}}')
    assert [c.name for c in load_mcp_config(None)] == ["a"]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('{"mcpServers": {"a": {"command": "x",}}}', "line 1 column"),
        ("[1, 2]", "mcpServers"),
        ('{"tools": {}}', "mcpServers"),
        ('{"mcpServers": []}', '"mcpServers"'),
        ('{"mcpServers": {"a": "npx"}}', "mcpServers.a"),
        ('{"mcpServers": {"a": {"args": ["x"]}}}', "mcpServers.a"),
        ('{"mcpServers": {"a": {"command": ""}}}', "mcpServers.a.command"),
        ('{"mcpServers": {"a": {"command": "x", "args": "-y srv"}}}', "mcpServers.a.args"),
        ('{"mcpServers": {"a": {"command": "x", "env": {"K": null}}}}', "mcpServers.a.env.K"),
        ('{"mcpServers": {"a": {"command": "x", "env": []}}}', "mcpServers.a.env"),
        ('{"mcpServers": {"a": {"command": "x", "cwd": 3}}}', "mcpServers.a.cwd"),
        ('{"mcpServers": {"a": {"url": "ftp://h/mcp"}}}', "mcpServers.a.url"),
        ('{"mcpServers": {"a": {"url": "http://h", "headers": {"A": {"x": 1}}}}}', "headers"),
        ('{"mcpServers": {"a": {"type": "ws", "url": "http://h"}}}', "mcpServers.a.type"),
        ('{"mcpServers": {"a": {"type": 1, "url": "http://h"}}}', "mcpServers.a.type"),
        ('{"mcpServers": {"a": {"command": "x", "disabled": "yes"}}}', "mcpServers.a.disabled"),
        ('{"mcpServers": {"a": {"command": "x", "autoApprove": "all"}}}', "a.autoApprove"),
        ('{"mcpServers": {"a": {"command": "x", "alwaysAllow": [1]}}}', "a.alwaysAllow"),
        ('{"mcpServers": {" ": {"command": "x"}}}', "empty name"),
        ('{"servers": {"b": {"command": 5}}}', "servers.b.command"),
    ],
)
def test_config_errors_are_one_line_naming_file_and_key(
    tmp_path: Path, text: str, key: str
) -> None:
    path = tmp_path / "mcp.json"
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_mcp_config(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)), message
    assert key in message, message
    assert info.value.exit_code == 1


def test_config_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such MCP config file"):
        load_mcp_config(tmp_path / "missing.json")
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(UserError, match="bin.json"):
        load_mcp_config(tmp_path / "bin.json")


def test_clean_schema_drops_title_keywords_only() -> None:
    schema = {
        "title": "noteArguments",
        "type": "object",
        "properties": {
            "title": {"title": "Title", "type": "string", "default": {"title": "kept"}},
            "tags": {"type": "array", "items": {"title": "Tag", "type": "string"}},
        },
        "$defs": {"Mode": {"title": "Mode", "enum": ["a", "b"]}},
    }
    assert clean_schema(schema) == {
        "type": "object",
        "properties": {
            "title": {"type": "string", "default": {"title": "kept"}},
            "tags": {"type": "array", "items": {"type": "string"}},
        },
        "$defs": {"Mode": {"enum": ["a", "b"]}},
    }


def test_clean_name_like_ollama() -> None:
    assert clean_name("get-weather.now") == "get_weather_now"
    assert clean_name("my tool!?") == "my_tool"
    assert clean_name("2fa") == "_2fa"
    assert clean_name("$ref_ok") == "$ref_ok"
    assert clean_name("café") == "café"
    assert clean_name("/:") == "unnamed"


# -- stdio servers


@pytest.fixture(scope="module")
def stdio_tools() -> Iterator[tuple[McpTools, list[str]]]:
    """demo (autoApprove add), two servers whose names clean to the same prefix, and two that
    cannot start."""
    statuses: list[str] = []
    servers = {
        "demo": demo(autoApprove=["add"], alwaysAllow=["get-weather.now"]),
        "my.srv": demo(),
        "my-srv": demo(),
        "bad": {"command": "/nonexistent/mcp-server"},
        "dies": {
            "command": sys.executable,
            "args": ["-c", "import sys; sys.exit('boom: no token')"],
        },
    }
    tools = McpTools(
        configs(servers), call_timeout=2.5, start_timeout=20, on_status=statuses.append
    )
    yield tools, statuses
    tools.close()


def test_listing_with_cleaned_names_and_schemas(stdio_tools: tuple[McpTools, list[str]]) -> None:
    tools, _ = stdio_tools
    specs = tools.specs()
    names = [s.name for s in specs]
    assert names == (
        [f"demo__{t}" for t in DEMO_TOOLS]
        + [f"my_srv__{t}" for t in DEMO_TOOLS]
        + [f"my_srv__{t}_2" for t in DEMO_TOOLS]
    )
    add = specs[0]
    assert add.description == "Add two integers."
    assert add.parameters is not None and add.parameters["type"] == "object"
    assert add.parameters["required"] == ["a", "b"]
    assert add.parameters["properties"]["a"] == {"type": "integer"}  # pydantic's titles dropped
    assert "title" not in add.parameters
    assert tools.resolve("my_srv__get_weather_now_2") == ("my-srv", "get-weather.now")
    assert ("demo__add", "Add two integers.") in tools.describe()


def test_servers_that_fail_to_start_are_one_line_each(
    stdio_tools: tuple[McpTools, list[str]],
) -> None:
    tools, statuses = stdio_tools
    tools.specs()
    assert len(statuses) == 2, statuses
    bad, dies = statuses
    assert "'bad'" in bad and "/nonexistent/mcp-server: command not found" in bad
    assert "'dies'" in dies and "boom: no token" in dies  # the last line of its stderr
    assert all("\n" not in s for s in statuses)


def test_calling(stdio_tools: tuple[McpTools, list[str]]) -> None:
    tools, _ = stdio_tools
    result = tools.call("demo__add", '{"a": 2, "b": 40}')
    assert (result.text, result.error) == ("42", False)
    assert result.details["tool"] == "add" and result.details["server"] == "demo"
    assert tools.call("my_srv__get_weather_now_2", '{"city": "Oslo"}').text == "Sunny in Oslo, 21 C"
    picture = tools.call("demo__picture", "")  # no arguments written: an empty object
    assert picture.text == "a red dot\n[image: image/png, 20 bytes]"


def test_is_error_and_bad_arguments(stdio_tools: tuple[McpTools, list[str]]) -> None:
    tools, _ = stdio_tools
    failed = tools.call("demo__fail", '{"reason": "disk full"}')
    assert failed.error and failed.text.startswith("Error: ") and "disk full" in failed.text
    wrong_type = tools.call("demo__add", '{"a": "two", "b": 1}')
    assert wrong_type.error and "valid integer" in wrong_type.text
    for text, why in [("{a: 1}", "not valid JSON"), ("[1, 2]", "expected a JSON object")]:
        result = tools.call("demo__add", text)
        body = json.loads(result.text)
        assert result.error and why in body["error"], body
        assert body["parameters"]["required"] == ["a", "b"]  # what to send instead
    unknown = tools.call("demo__nope", "{}")
    body = json.loads(unknown.text)
    assert unknown.error and body["error"] == "Unknown function: demo__nope"
    assert "demo__add" in body["available"]


def test_output_is_capped(stdio_tools: tuple[McpTools, list[str]]) -> None:
    tools, _ = stdio_tools
    text = tools.call("demo__big", json.dumps({"n": 3 * MAX_OUTPUT_CHARS})).text
    assert len(text) < MAX_OUTPUT_CHARS + 100 and "characters cut" in text


def test_timeout_then_the_server_still_works(stdio_tools: tuple[McpTools, list[str]]) -> None:
    tools, statuses = stdio_tools
    before = len(statuses)
    start = time.monotonic()
    result = tools.call("demo__hang", "{}")
    assert result.error and "did not answer within 2.5 s" in result.text
    assert 2.4 < time.monotonic() - start < 6
    assert tools.call("demo__add", '{"a": 1, "b": 1}').text == "2"
    assert len(statuses) == before


def test_cancel_stops_a_call(stdio_tools: tuple[McpTools, list[str]]) -> None:
    tools, _ = stdio_tools
    cancel = threading.Event()
    threading.Timer(0.2, cancel.set).start()
    start = time.monotonic()
    result = tools.call("my_srv__hang", "{}", cancel=cancel)
    assert result.error and "cancelled" in result.text and time.monotonic() - start < 1.2


def test_auto_approve_uses_real_tool_names(stdio_tools: tuple[McpTools, list[str]]) -> None:
    tools, _ = stdio_tools
    assert tools.approved("demo__add")
    assert tools.approved("demo__get_weather_now")  # alwaysAllow lists "get-weather.now"
    assert not tools.approved("demo__fail")
    assert not tools.approved("my_srv__add")
    assert not tools.approved("nope__add")


def test_crash_mid_call_reported_once_and_others_keep_working() -> None:
    statuses: list[str] = []
    with McpTools(configs({"a": demo(), "b": demo()}), on_status=statuses.append) as tools:
        pid = int(tools.call("a__pid", "{}").text)
        result = tools.call("a__crash", "{}")
        assert result.error and "'a' is not running" in result.text
        assert len(statuses) == 1 and "'a' stopped" in statuses[0]
        assert "crashing on purpose" in statuses[0]  # its last stderr line
        assert [s.name for s in tools.specs()] == [f"b__{t}" for t in DEMO_TOOLS]
        again = tools.call("a__add", '{"a": 1, "b": 2}')
        assert again.error and "not running" in again.text
        assert tools.call("b__add", '{"a": 1, "b": 2}').text == "3"
        assert len(statuses) == 1
        assert gone(pid)


def test_start_timeout_stops_the_server(tmp_path: Path) -> None:
    pidfile = tmp_path / "stuck.pid"
    stuck = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
    servers = {"stuck": {"command": sys.executable, "args": ["-c", stuck, str(pidfile)]}}
    statuses: list[str] = []
    with McpTools(configs(servers), start_timeout=1, on_status=statuses.append) as tools:
        start = time.monotonic()
        assert tools.specs() == []
        assert time.monotonic() - start < 3
        assert statuses == [
            "MCP server 'stuck' did not start (no answer within 1 s); going on without it"
        ]
    assert gone(int(pidfile.read_text()))


def test_close_leaves_no_child_process() -> None:
    tools = McpTools(configs({"demo": demo()}), call_timeout=1.5)
    pid = int(tools.call("demo__pid", "{}").text)
    assert tools.call("demo__hang", "{}").error  # a thread in the server now sleeps forever
    start = time.monotonic()
    tools.close()
    assert gone(pid) and time.monotonic() - start < 12
    assert tools.specs() == []
    assert "not running" in tools.call("demo__add", '{"a": 1, "b": 1}').text
    tools.close()


def test_no_servers_means_no_tools() -> None:
    with McpTools([]) as tools:
        assert tools.specs() == [] and tools.describe() == []
        assert json.loads(tools.call("x__y", "{}").text)["available"] == []


# -- HTTP servers


def _serve_http(mode: str) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, DEMO, mode, str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"demo server {mode} did not listen on {port}")


def test_streamable_http_server() -> None:
    proc, port = _serve_http("--http")
    statuses: list[str] = []
    url = f"http://127.0.0.1:{port}/mcp"
    entry = {"type": "http", "url": url, "headers": {"X-Api-Key": "k"}, "autoApprove": ["pid"]}
    try:
        with McpTools(
            configs({"web api": entry}), call_timeout=2.5, on_status=statuses.append
        ) as t:
            assert [s.name for s in t.specs()] == [f"web_api__{n}" for n in DEMO_TOOLS]
            assert t.call("web_api__add", '{"a": 5, "b": 6}').text == "11"
            assert t.call("web_api__header", '{"name": "X-Api-Key"}').text == "k"
            assert t.call("web_api__fail", '{"reason": "no"}').text.startswith("Error: ")
            assert "did not answer within 2.5 s" in t.call("web_api__hang", "{}").text
            assert t.approved("web_api__pid") and not t.approved("web_api__add")
            crashed = t.call("web_api__crash", "{}")
            assert crashed.error and "not running" in crashed.text
            assert len(statuses) == 1 and "'web api' stopped" in statuses[0]
            assert t.specs() == []
    finally:
        proc.kill()
        proc.wait()


_SSE_CLIENT = """
import sys
from pathlib import Path
from gptoss_mlx.tools.mcp import McpTools
from gptoss_mlx.tools.mcp_config import parse_mcp_config
cfg = parse_mcp_config({"mcpServers": {"old": {"type": "sse", "url": sys.argv[1]}}}, Path("x"))
with McpTools(cfg, on_status=lambda line: print("status:", line, flush=True)) as tools:
    print(tools.call("old__add", '{"a": 2, "b": 2}').text, flush=True)
    sys.stdin.readline()
    print(tools.call("old__add", '{"a": 2, "b": 2}').text, flush=True)
"""


def test_sse_server_and_its_death_without_a_traceback() -> None:
    """In a plain process (pytest would capture the SDK's logging): the SSE transport logs a
    traceback when its server goes away; the user sees only our one line."""
    proc, port = _serve_http("--sse")
    client = subprocess.Popen(
        [sys.executable, "-c", _SSE_CLIENT, f"http://127.0.0.1:{port}/sse"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        },
    )
    try:
        assert client.stdout is not None and client.stdin is not None
        assert client.stdout.readline() == "4\n"
        proc.kill()
        proc.wait()
        out, err = client.communicate("go\n", timeout=30)
    finally:
        proc.kill()
        client.kill()
    lines = out.splitlines()
    assert len(lines) == 2 and lines[0].startswith("status: MCP server 'old' stopped"), out
    assert lines[1].startswith("Error: the MCP server 'old' is not running"), out
    assert err == "", err
