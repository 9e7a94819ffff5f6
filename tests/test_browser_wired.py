"""The browser wired into gptoss: settings and flags, the prompt's browser text, offline, doctor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gptoss_mlx import harmony
from gptoss_mlx.errors import UserError
from gptoss_mlx.model.sampling import SamplerSettings
from gptoss_mlx.session.chat import ChatSession, SessionSettings
from gptoss_mlx.session.tool_loop import ToolLoop
from gptoss_mlx.session.tool_setup import build_table, declare, offline_note, preflight
from gptoss_mlx.settings import resolve
from gptoss_mlx.tools.browser import BrowserTool, DuckDuckGoBackend, Fetcher, SearxngBackend

from .browser_web import Web, serve
from .scripted_model import ScriptedModel
from .test_tool_loop import toks

NO_CONFIG = Path("/nonexistent/config.toml")
SEARCH_KEYS = (
    "GPTOSS_SEARCH",
    "GPTOSS_SEARXNG_URL",
    "GPTOSS_BROWSER",
    "BRAVE_API_KEY",
    "EXA_API_KEY",
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for key in (*SEARCH_KEYS, "EXA_API_KEY", "GPTOSS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.fixture(scope="module")
def enc(tiny_checkpoint: Path):
    return harmony.encoding_for_model(tiny_checkpoint)


def test_flag_beats_env_beats_default(clean_env):
    assert resolve({}, NO_CONFIG).browser is False
    clean_env.setenv("GPTOSS_BROWSER", "1")
    clean_env.setenv("GPTOSS_SEARCH", "Brave")
    s = resolve({}, NO_CONFIG)
    assert s.browser and s.search == "brave" and s.sources["search"] == "env"
    s = resolve({"search": "duckduckgo"}, NO_CONFIG)
    assert s.search == "duckduckgo" and s.sources["search"] == "flag"


def test_config_keys(clean_env, tmp_path: Path):
    config = tmp_path / "config.toml"
    config.write_text('browser = true\nsearch = "searxng"\nsearxng_url = "http://127.0.0.1:9"\n')
    s = resolve({}, config)
    assert s.browser and s.search == "searxng" and s.searxng_url == "http://127.0.0.1:9"
    assert isinstance(build_table(s, chat_id="c").tools["browser"].backend, SearxngBackend)


@pytest.mark.parametrize(
    ("env", "flags", "message"),
    [
        ({"GPTOSS_SEARCH": "bing"}, {}, "search must be one of searxng, brave, exa, duckduckgo, not 'bing' (from GPTOSS_SEARCH)"),
        ({}, {"search": "searxng"}, "search is searxng (from --search) but no SearXNG URL is set"),
        ({"GPTOSS_SEARXNG_URL": "localhost:8080"}, {}, "(from GPTOSS_SEARXNG_URL)"),
        ({"GPTOSS_BROWSER": "maybe"}, {}, "bad value 'maybe' for browser (from GPTOSS_BROWSER)"),
    ],
)  # fmt: skip
def test_bad_values_name_their_source(clean_env, env, flags, message):
    for key, value in env.items():
        clean_env.setenv(key, value)
    with pytest.raises(UserError, match="^") as err:
        resolve(flags, NO_CONFIG)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_backend_without_its_key_is_refused_before_the_model_loads(clean_env):
    s = resolve({"browser": True, "search": "brave"}, NO_CONFIG)
    with pytest.raises(UserError) as err:
        preflight(s)
    assert "BRAVE_API_KEY" in str(err.value) and "(search brave from --search)" in str(err.value)


def test_the_default_is_duckduckgo_and_the_prompt_carries_harmonys_browser_text(clean_env, enc):
    s = resolve({"browser": True}, NO_CONFIG)
    session = ChatSession(ScriptedModel([]), None, enc, SessionSettings())
    table = build_table(s, chat_id="c", encoding=enc)
    tool = table.tools["browser"]
    assert isinstance(tool, BrowserTool) and isinstance(tool.backend, DuckDuckGoBackend)
    assert not tool.fetcher.allow_private
    long_line = "word " * 2000
    assert tool.token_offset(long_line, 10) == len(enc.decode(enc.encode(long_line)[:10]))
    declare(session, table)
    expected = harmony.render_prompt(
        [], harmony.PromptOptions(date=session.settings.date, browser_tool=True), enc
    )
    assert session.prompt_tokens() == expected
    assert "## browser" in enc.decode(expected)
    table.remove("browser")
    declare(session, table)
    assert "## browser" not in enc.decode(session.prompt_tokens())


def test_offline_the_model_is_told_and_nothing_is_fetched(clean_env, enc):
    clean_env.setenv("GPTOSS_OFFLINE", "1")
    s = resolve({"browser": True}, NO_CONFIG)
    table = build_table(s, chat_id="c", encoding=enc)
    assert offline_note(table) is not None and "\n" not in offline_note(table)
    call = '<|channel|>analysis to=browser.search code<|message|>{"query": "news"}<|call|>'
    final = "<|channel|>final<|message|>I could not browse.<|return|>"
    session = ChatSession(
        ScriptedModel([toks(enc, call), toks(enc, final)]),
        None,
        enc,
        SessionSettings(sampler=SamplerSettings(temperature=0)),
    )
    declare(session, table)
    result = ToolLoop(session, table).turn("news?")
    tool_message = session.messages[2]
    assert tool_message.role == "tool" and tool_message.name == "browser.search"
    assert "The web is unavailable" in tool_message.content
    assert result.final == "I could not browse."
    clean_env.delenv("GPTOSS_OFFLINE")
    assert offline_note(build_table(s, chat_id="c")) is None


def gptoss(*args: str, tmp: Path, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in SEARCH_KEYS}
    full.update(
        GPTOSS_CONFIG=str(NO_CONFIG),
        XDG_CONFIG_HOME=str(tmp / "config"),
        XDG_DATA_HOME=str(tmp / "data"),
        HF_HOME=str(tmp / "hf"),  # no model of the user's: the window estimate is expected
        HF_HUB_CACHE=str(tmp / "hf" / "hub"),
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "gptoss_mlx", *args],
        input="",
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
    )


def test_doctor_shows_the_search_backend(tmp_path: Path):
    r = gptoss("doctor", "--json", tmp=tmp_path, GPTOSS_SEARXNG_URL="http://127.0.0.1:9")
    rows = [row for row in json.loads(r.stdout) if row["check"] == "search backend"]
    assert len(rows) == 1 and rows[0]["detail"].startswith("SearXNG")
    r = gptoss("doctor", "--json", tmp=tmp_path, GPTOSS_SEARCH="brave")
    rows = [row for row in json.loads(r.stdout) if row["check"] == "search backend"]
    assert rows[0]["status"] == "warn" and "BRAVE_API_KEY" in rows[0]["detail"]


@pytest.fixture(scope="module")
def web() -> Iterator[Web]:
    with serve() as web:
        yield web


def in_process(web: Web, enc, calls: list[tuple[str, dict]]) -> list[str]:
    """What the model would read, from a browser built here (the reference for the CLI)."""
    tool = BrowserTool(
        SearxngBackend(web.url("127.0.0.1", "/searxng")),
        fetcher=Fetcher(allow_private=True),
        encoding=enc,
    )
    return [tool.call(fn, json.dumps(args)).text.rstrip("\n") for fn, args in calls]


def test_gptoss_tools_browser_prints_what_the_model_reads(web, enc, tiny_checkpoint, tmp_path):
    env = {
        "GPTOSS_BROWSER_ALLOW_PRIVATE": "1",
        "GPTOSS_SEARXNG_URL": web.url("127.0.0.1", "/searxng"),
    }
    model = ("-m", str(tiny_checkpoint))
    links = web.url("127.0.0.1", "/links.html")
    notes = web.url("127.0.0.1", "/notes.txt")
    r = gptoss("tools", "browser", "search", "lists", *model, tmp=tmp_path, **env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert r.stdout.rstrip("\n") == in_process(web, enc, [("search", {"query": "lists"})])[0]
    assert "【0†Links and lists†docs.example.org" in r.stdout
    r = gptoss("tools", "browser", "open", links, "--num-lines", "5", *model, tmp=tmp_path, **env)
    expected = in_process(web, enc, [("open", {"id": links, "num_lines": 5})])[0]
    assert r.returncode == 0 and r.stdout.rstrip("\n") == expected
    assert "**viewing lines [0 - 4] of 17**" in r.stdout
    r = gptoss("tools", "browser", "find", "ANSWER", "--url", notes, *model, tmp=tmp_path, **env)
    expected = in_process(web, enc, [("open", {"id": notes}), ("find", {"pattern": "ANSWER"})])
    assert r.returncode == 0 and r.stdout.rstrip("\n") == expected[1]
    assert "# 【0†match at L3】" in r.stdout


def test_gptoss_tools_browser_errors_are_what_the_model_reads(web, tmp_path):
    r = gptoss("tools", "browser", "open", web.url("127.0.0.1", "/links.html"), tmp=tmp_path)
    assert r.returncode == 1 and "private" in r.stdout  # no GPTOSS_BROWSER_ALLOW_PRIVATE
    assert "estimated" in r.stderr and r.stderr.count("\n") == 1  # no local 20b here
    r = gptoss("tools", "browser", "open", "file:///etc/passwd", tmp=tmp_path)
    assert r.returncode == 1 and "only http and https" in r.stdout and "root:" not in r.stdout
    r = gptoss("tools", "browser", "search", "x", tmp=tmp_path, GPTOSS_OFFLINE="1")
    assert r.returncode == 1 and "The web is unavailable" in r.stdout


def test_run_browser_flag_declares_the_browser(tiny_checkpoint, enc, tmp_path):
    model = ("-m", str(tiny_checkpoint))
    r = gptoss("run", "--browser", "--show-prompt", *model, "hi", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "## browser\n\n// Tool for browsing." in r.stdout
    r = gptoss("run", "--show-prompt", *model, "hi", tmp=tmp_path, GPTOSS_BROWSER="1")
    assert "## browser" in r.stdout
    r = gptoss("run", "--show-prompt", *model, "hi", tmp=tmp_path)
    assert r.returncode == 0 and "## browser" not in r.stdout
    r = gptoss("run", "--browser", "--search", "exa", *model, "hi", tmp=tmp_path)
    assert r.returncode != 0 and r.stderr.count("\n") == 1
    assert "EXA_API_KEY" in r.stderr and "(search exa from --search)" in r.stderr
