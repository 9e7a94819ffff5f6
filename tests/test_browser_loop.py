"""The browser through the tool loop: a scripted model searches, opens a result and answers with a
citation, against the local stand-in web; the tool messages, the exact prefill after each call, and
the citation as `run` (Markdown), `run --json` (url_citation annotations) and chat (footnotes)
show it."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from gptoss_mlx import harmony
from gptoss_mlx.cli.run import run_turn
from gptoss_mlx.model.sampling import SamplerSettings
from gptoss_mlx.session.chat import ChatSession, SessionSettings
from gptoss_mlx.session.tool_setup import open_loop
from gptoss_mlx.settings import resolve
from gptoss_mlx.tools.browser import BrowserTool, Fetcher, SearxngBackend
from gptoss_mlx.ui.repl import Repl

from .browser_web import Web, serve
from .scripted_model import ScriptedModel
from .test_browser_fetch import fake_dns
from .test_tool_loop import prefills, toks

SEARCH = '<|channel|>analysis to=browser.search code<|message|>{"query": "lists"}<|call|>'
OPEN = '<|channel|>analysis to=browser.open code<|message|>{"id": 0, "cursor": 0}<|call|>'
FIND = '<|channel|>analysis to=browser.find code<|message|>{"pattern": "notes"}<|call|>'
ANSWER = "It links the notes 【1†L4-L5】 twice【1†L5】; a search 【0†L4】."
FINAL = f"<|channel|>final<|message|>{ANSWER}<|return|>"
SCRIPT = [SEARCH, OPEN, FIND, FINAL]


@pytest.fixture(scope="module")
def web() -> Iterator[Web]:
    with serve() as web:
        yield web


@pytest.fixture(scope="module")
def enc(tiny_checkpoint: Path):
    return harmony.encoding_for_model(tiny_checkpoint)


@pytest.fixture
def browser_env(web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("GPTOSS_SEARCH", "GPTOSS_OFFLINE", "HF_HUB_OFFLINE", "BRAVE_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("GPTOSS_BROWSER_ALLOW_PRIVATE", "1")
    monkeypatch.setenv("GPTOSS_SEARXNG_URL", web.url("127.0.0.1", "/searxng"))


def start(enc, replies: list[str]):
    """A session and its loop as `gptoss run --browser` builds them, over the scripted model;
    the result links' public names resolve to the stand-in."""
    settings = resolve({"browser": True}, Path("/nonexistent/config.toml"))
    model = ScriptedModel([toks(enc, r) for r in replies])
    session = ChatSession(
        model, None, enc, SessionSettings(sampler=SamplerSettings(temperature=0), context=8192)
    )
    loop = open_loop(session, settings, chat_id="test")
    loop.table.tools["browser"].fetcher.resolver = fake_dns
    return model, session, loop


def reference(web: Web, enc) -> list[str]:
    """What the model must read, from a browser of its own doing the same calls."""
    tool = BrowserTool(
        SearxngBackend(web.url("127.0.0.1", "/searxng")),
        fetcher=Fetcher(allow_private=True, resolver=fake_dns),
        encoding=enc,
    )
    calls = [("search", {"query": "lists"}), ("open", {"id": 0, "cursor": 0})]
    calls.append(("find", {"pattern": "notes"}))
    return [tool.call(fn, json.dumps(args)).text for fn, args in calls]


def test_search_open_find_through_the_loop(web, enc, browser_env):
    model, session, loop = start(enc, SCRIPT)
    assert "## browser" in enc.decode(session.prompt_tokens())
    result = loop.turn("What does the links page link to?")
    assert result.final == ANSWER and result.finish_reason == "stop"
    tool_messages = [m for m in session.messages if m.role == "tool"]
    assert [m.name for m in tool_messages] == ["browser.search", "browser.open", "browser.find"]
    assert [m.content for m in tool_messages] == reference(web, enc)
    assert "【0†Links and lists†docs.example.org" in tool_messages[0].content
    assert tool_messages[1].content.startswith("[1] Links and lists (http://docs.example.org:")
    # After each call only <|call|>, the result message and <|start|>assistant are prefilled.
    for i, message in enumerate(tool_messages, start=1):
        expected = [harmony.CALL, *enc.render(harmony.to_harmony(message))]
        assert prefills(model)[i] == [*expected, harmony.START, harmony.ASSISTANT]
    assert [r.author for r in loop.records] == [m.name for m in tool_messages]


def links_url(web: Web) -> str:
    return web.url("docs.example.org", "/links.html")


def test_run_prints_citations_as_markdown_links(web, enc, browser_env, capsys):
    _, session, loop = start(enc, SCRIPT)
    run_turn(session, "links?", show_reasoning=False, as_json=False, loop=loop)
    out = capsys.readouterr().out
    link = f"([docs.example.org:{web.port}]({links_url(web)}))"
    assert out == f"It links the notes {link} twice {link}; a search 【0†L4】.\n"


def test_run_json_has_url_citation_annotations(web, enc, browser_env, capsys):
    _, session, loop = start(enc, SCRIPT)
    run_turn(session, "links?", show_reasoning=False, as_json=True, loop=loop)
    data = json.loads(capsys.readouterr().out)
    final, notes = data["final"], data["annotations"]
    assert len(notes) == 2 and "【1†" not in final and "【0†L4】" in final
    for note in notes:
        assert note["type"] == "url_citation" and note["url"] == links_url(web)
        assert note["title"] == "Links and lists"
        assert final[note["start_index"] : note["end_index"]].strip() == (
            f"([docs.example.org:{web.port}]({links_url(web)}))"
        )
    assert [c["recipient"] for c in data["tool_calls"]] == [
        "browser.search",
        "browser.open",
        "browser.find",
    ]


def chat(enc, replies: list[str], typed: str, terminal: bool = False):
    _, session, loop = start(enc, replies)
    out = io.StringIO()
    console = Console(file=out, width=100, height=30, force_terminal=terminal, color_system=None)
    repl = Repl(
        session,
        console=console,
        autosave=False,
        lines=io.StringIO(typed),
        loop=loop,
        model_name="scripted",
    )
    repl.run()
    return out.getvalue(), session, repl


def test_chat_shows_numbered_footnotes(web, enc, browser_env):
    out, session, _ = chat(enc, SCRIPT, "links?\n")
    assert "It links the notes [1] twice[1]; a search 【0†L4】." in out
    assert f"[1] Links and lists - {links_url(web)}" in out
    assert "【1†" not in out
    assert session.messages[-1].content == ANSWER  # the model's own words are kept as written


def test_a_citation_split_across_tokens_is_held_back(web, enc, browser_env):
    _, session, loop = start(enc, SCRIPT)
    stream = Repl(session, console=Console(file=io.StringIO()), autosave=False, loop=loop)
    loop.turn("links?")
    citations = stream.tools.citations()
    shown = [citations.feed(piece) for piece in ("See 【", "1†L4", "-L5", "】 ok")]
    assert shown == ["See ", "", "", "[1] ok"]
    assert citations.finish() == ""


def test_tools_command_toggles_the_browser(web, enc, browser_env):
    out, session, repl = chat(enc, [], "/tools browser off\n/tools\n/tools browser on\n")
    assert "browser: off (from the next reply)" in out and "browser: on" in out
    assert "tools: browser.search, browser.open, browser.find (/tools)" in out
    assert "offline" not in out
    assert session.settings.browser_tool and "browser" in repl.loop.table.tools


def test_offline_chat_hints_once_and_the_model_is_told(web, enc, browser_env, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(web.requests)
    final = "<|channel|>final<|message|>I cannot browse now.<|return|>"
    out, session, _ = chat(enc, [SEARCH, final, SEARCH, final], "news?\nmore?\n")
    hints = [line for line in out.splitlines() if line.startswith("browser: offline")]
    assert len(hints) == 1 and "the model is told the web is unavailable" in hints[0]
    told = [m.content for m in session.messages if m.role == "tool"]
    assert len(told) == 2 and all("The web is unavailable" in t for t in told)
    assert len(web.requests) == before  # nothing was fetched, not even the search
