"""The chat REPL driven by scripted keystrokes: a real model, tokenizer and prompt_toolkit pipe
input, output captured from a real rich Console."""

from __future__ import annotations

import io
import json
import os
import re
import threading
import time
from pathlib import Path

import pytest
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput
from rich.console import Console

from gptoss_mlx import harmony
from gptoss_mlx.session import store as chatstore
from gptoss_mlx.ui.commands import COMMANDS, SlashCompleter, closest_command
from gptoss_mlx.ui.render import MarkdownTail, Renderer, footer_text
from gptoss_mlx.ui.repl import Repl, message_text, open_block

from . import fixtures_harmony

harmony_model = fixtures_harmony.harmony_model  # the tiny model that speaks harmony

ENTER = "\r"
CTRL_C = "\x03"
ALT_ENTER = "\x1b\r"
UP = "\x1b[A"
RIGHT = "\x1b[C"
CTRL_R = "\x12"


def typed(*lines: str) -> str:
    """Keystrokes that type each line and press Enter."""
    return "".join(line + ENTER for line in lines)


def paste(text: str) -> str:
    return f"\x1b[200~{text}\x1b[201~"


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.startswith("GPTOSS_") or key == "NO_COLOR":
            monkeypatch.delenv(key)
    monkeypatch.setenv("GPTOSS_CONFIG", str(tmp_path / "no-config.toml"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


def load(model_dir: Path):
    from gptoss_mlx.session.open import open_session
    from gptoss_mlx.settings import resolve

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTOSS_CONFIG", "/nonexistent/gptoss-config.toml")
        settings = resolve({"temperature": 0, "max_tokens": 8, "context": 4096})
        return open_session(settings, model_dir)


def session_factory(loaded):
    """Fresh conversations on a loaded model (loading once per module keeps the tests fast)."""
    from gptoss_mlx.model.sampling import SamplerSettings
    from gptoss_mlx.session.chat import ChatSession, SessionSettings

    def make(**overrides):
        settings = SessionSettings(
            effort="medium", max_tokens=8, context=4096, sampler=SamplerSettings(temperature=0)
        )
        for key, value in overrides.items():
            setattr(settings, key, value)
        session = ChatSession(loaded.model, loaded.tokenizer, loaded.encoding, settings)
        session.model_path = loaded.model_path
        return session

    return make


@pytest.fixture(scope="module")
def tiny_loaded(tiny_checkpoint):
    return load(tiny_checkpoint)


@pytest.fixture(scope="module")
def harmony_loaded(harmony_model):
    return load(harmony_model)


@pytest.fixture
def tiny(tiny_loaded):
    """Random weights: gibberish, but every code path of a turn (and it never stops early)."""
    return session_factory(tiny_loaded)


@pytest.fixture
def speaking(harmony_loaded):
    """The tiny model trained to speak harmony: known reasoning and answers."""
    return session_factory(harmony_loaded)


@pytest.fixture(scope="module")
def tokenizer_only(tiny_checkpoint):
    from gptoss_mlx.session.open import open_session
    from gptoss_mlx.settings import resolve

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTOSS_CONFIG", "/nonexistent/gptoss-config.toml")
        return open_session(resolve({}), tiny_checkpoint, for_prompt_only=True)


@pytest.fixture
def prompt_only(tokenizer_only):
    """A session with the real tokenizer and harmony encoding but no weights: for commands."""
    from gptoss_mlx.session.chat import ChatSession

    session = ChatSession(None, tokenizer_only.tokenizer, tokenizer_only.encoding)
    session.model_path = tokenizer_only.model_path
    return session


def drive(session, keys: str, tmp_path: Path, *, width: int = 100, terminal: bool = False, **kw):
    """Run a Repl on `keys`; the input is closed after them, so the REPL always ends (EOF)."""
    out = io.StringIO()
    console = Console(file=out, width=width, height=30, force_terminal=terminal, color_system=None)
    kw.setdefault("saver", chatstore.Autosaver(tmp_path / "chats"))
    with create_pipe_input() as pipe:
        pipe.send_text(keys)
        pipe.close()
        repl = Repl(session, input=pipe, output=DummyOutput(), console=console, **kw)
        repl.run()
    return repl, out.getvalue()


def decoded_prompt(session) -> str:
    return session.tokenizer.decode(session.prompt_tokens())


def users(session) -> list[str]:
    return [m.content for m in session.messages if m.role == "user"]


def footers(transcript: str) -> list[str]:
    return [
        line
        for line in transcript.splitlines()
        if " tokens · context " in line or line.startswith("interrupted")
    ]


# ---- a whole scripted session ------------------------------------------------------------


@pytest.fixture(scope="module")
def examples(harmony_model) -> dict:
    """What the harmony model was trained to answer, by example name (harmony_examples.json)."""
    data = json.loads((Path(harmony_model) / "harmony_examples.json").read_text())
    return {e["name"]: e for e in data["examples"]}


def single_turn(examples: dict, pick) -> tuple[str, str]:
    """(question, answer) of a one-message example without tools chosen by `pick`."""
    plain = [
        e
        for e in examples.values()
        if len(e["messages"]) == 1 and e["final"] and not e["options"]["tools"]
    ]
    chosen = pick(plain)
    return chosen["messages"][0]["content"], chosen["final"]


def normalised(transcript: str) -> list[str]:
    """The transcript with timings and counts replaced, so it can be compared exactly."""
    out = []
    for line in transcript.splitlines():
        if re.fullmatch(r"\[thought for \d+\.\d s, \d+ tokens?\]", line):
            line = "[thought]"
        elif " tokens · context " in line:
            line = re.sub(r"[\d.]+ s to first token · |[\d.]+ tok/s · ", "", line)
            line = re.sub(r"\d[\d,]*", "N", line)
        out.append(line)
    return out


def test_scripted_session(speaking, examples, tmp_path, harmony_model):
    first = examples["sum"]
    question, answer = first["messages"][0]["content"], first["final"]
    then = examples["second_turn"]  # a follow-up to the first exchange
    assert [m["content"] for m in then["messages"][:3:2]] == [question, answer]
    follow_up, second_answer = then["messages"][-1]["content"], then["final"]

    session = speaking(max_tokens=64)
    saved = tmp_path / "saved.json"
    keys = typed(question, follow_up, "/effort high", "/undo", "/retry", f"/save {saved}")
    repl, out = drive(session, keys, tmp_path)
    footer = "N tokens · context N/N (N%)"
    assert normalised(out) == [
        # Too wide for 100 columns: two lines, not one the terminal breaks mid-word.
        f"gptoss chat · {harmony_model} · effort medium · context 4,096 tokens",
        "/help for commands, Ctrl-D to exit",
        "[thought]",
        answer,
        footer,
        "[thought]",
        second_answer,
        footer,
        "reasoning effort: high (from the next reply)",
        f"removed the last exchange ({follow_up!r}); 1 left",
        "[thought]",
        answer,
        footer,
        f"saved 3 messages to {saved}",
        f"chat saved: resume with gptoss chat --resume {repl.saver.id}",
    ]
    assert [(m.role, m.channel) for m in session.messages] == [
        ("user", None),
        ("assistant", "analysis"),
        ("assistant", "final"),
    ]
    assert session.messages[-1].content == answer
    # The retried reply was written from a prompt that asks for high effort.
    assert "Reasoning: high" in session.tokenizer.decode(session.cached_tokens)
    assert "Reasoning: high" in decoded_prompt(session)

    record = json.loads(saved.read_text())
    assert record["format"] == "gptoss-chat" and record["version"] == 1
    assert record["settings"]["effort"] == "high"
    assert record["messages"] == [m.to_dict() for m in session.messages]
    # The autosave holds the same conversation under the REPL's chat id.
    assert chatstore.read(repl.saver.path)["messages"] == record["messages"]

    fresh = speaking(max_tokens=64)
    repl2, out2 = drive(fresh, typed(f"/load {saved}", follow_up), tmp_path)
    assert fresh.messages[:3] == session.messages
    assert fresh.settings.effort == "high"
    assert repl2.saver.id == repl.saver.id  # a loaded chat goes on under its own id
    assert normalised(out2)[2:8] == [
        f"loaded 3 messages from {saved}",
        f">>> {question}",  # the recap of the last exchange
        answer,
        "[thought]",
        second_answer,
        footer,
    ]


def test_ctrl_c_during_a_reply_keeps_what_was_written(speaking, examples, tmp_path):
    question, expected = single_turn(examples, lambda es: max(es, key=lambda e: len(e["final"])))
    session = speaking(max_tokens=400)
    shown = []

    def press_ctrl_c_at_the_sixth_answer_token(ev):
        if isinstance(ev, harmony.FinalDelta):
            shown.append(ev.text)
            if len(shown) == 6:
                raise KeyboardInterrupt

    repl, out = drive(
        session,
        typed(question, "/context"),
        tmp_path,
        on_event=press_ctrl_c_at_the_sixth_answer_token,
    )
    written = "".join(shown)
    assert expected.startswith(written) and len(written) < len(expected)
    assert users(session) == [question]
    reply = session.messages[-1]
    assert (reply.role, reply.channel, reply.content) == ("assistant", "final", written)
    assert reply.interrupted
    lines = normalised(out)
    assert lines[2:5] == ["[thought]", written, "interrupted · N tokens · context N/N (N%)"]
    assert "next prompt" in out  # the REPL went on to the next command
    record = chatstore.read(repl.saver.path)
    assert record["messages"][-1] == {
        "role": "assistant",
        "content": written,
        "channel": "final",
        "interrupted": True,
    }


def test_full_context_refuses_the_turn_and_keeps_the_chat(tiny, tmp_path):
    session = tiny(context=200, max_tokens=8)
    long_message = "word " * 300
    repl, out = drive(session, typed("hi", long_message, "/context"), tmp_path)
    assert users(session) == ["hi"]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "context full" in errors[0] and "/undo or /reset" in errors[0]
    assert "--context" in errors[0]
    assert chatstore.read(repl.saver.path)["messages"] == [m.to_dict() for m in session.messages]


def test_retry_that_does_not_fit_keeps_the_answer(tiny, tmp_path):
    session = tiny(max_tokens=4)
    drive(session, typed("hi"), tmp_path)
    before = list(session.messages)
    session.settings.context = 20  # now even the question alone does not fit
    _, out = drive(session, typed("/retry"), tmp_path)
    assert "error: context full" in out
    assert session.messages == before


def test_nearly_full_context_is_flagged_in_the_footer(tiny, tmp_path):
    probe = tiny()
    probe.messages.append(harmony.Message("user", "hi"))
    prompt = len(probe.prompt_tokens())
    session = tiny(context=prompt + 9, max_tokens=8)
    _, out = drive(session, "hi" + ENTER, tmp_path)
    assert "full: /undo or /reset to make room" in out


def test_multi_line_input(tiny, tmp_path):
    session = tiny(max_tokens=1)
    keys = typed(
        '"""',
        "line one",
        "line two",
        '"""',
        paste("pasted one\npasted two"),
        "first" + ALT_ENTER + "second",
        "typo" + CTRL_C + "after ctrl-c",
    )
    drive(session, keys, tmp_path)
    assert users(session) == [
        "line one\nline two",
        "pasted one\npasted two",
        "first\nsecond",
        "after ctrl-c",
    ]


def test_markdown_answer_in_a_terminal(speaking, examples, tmp_path):
    """The Live path: the answer is rendered as Markdown (a highlighted code block, no fences)."""
    question, answer = single_turn(examples, lambda es: next(e for e in es if "```" in e["final"]))
    session = speaking(max_tokens=64)
    _, out = drive(session, typed(question), tmp_path, terminal=True)
    assert session.messages[-1].content == answer
    assert "▸ thought for" in out
    prose, code = answer.split("```")[0].strip(), answer.split("```")[1].split("\n")[1:]
    assert prose in out
    assert all(line.strip() in out for line in code if line.strip())
    assert "```" not in out
    assert " tokens · context " in out


# ---- commands and keys that need no model --------------------------------------------------


def test_commands(prompt_only, tmp_path):
    keys = CTRL_C + typed(
        "/help",
        "/undi",
        "/effort",
        "/effort extreme",
        "/effort low",
        "/instructions Answer like a pirate.",
        "/instructions",
        "/reasoning show",
        "/undo",
        "/retry",
        f"/load {tmp_path / 'missing.json'}",
        "/model",
        "/exit",
        "/effort high",  # never read: /exit left
    )
    repl, out = drive(prompt_only, keys, tmp_path)
    for name in COMMANDS:
        assert f"  {name}" in out
    assert out.splitlines()[2] == "(Ctrl-D or /exit to leave)"  # Ctrl-C on an empty line
    assert "error: unknown command /undi; did you mean /undo?" in out
    assert "reasoning effort: medium" in out
    assert "error: effort must be low, medium or high, not 'extreme'" in out
    assert prompt_only.settings.effort == "low"
    assert "instructions: Answer like a pirate." in out
    prompt = decoded_prompt(prompt_only)
    assert "Reasoning: low" in prompt
    assert "<|start|>developer<|message|># Instructions\n\nAnswer like a pirate." in prompt
    assert repl.renderer.reasoning == "show"
    assert "error: nothing to undo" in out
    assert "error: nothing to retry yet" in out
    assert f"error: no such chat file: {tmp_path / 'missing.json'}" in out
    assert "temperature" in out
    assert not (tmp_path / "chats").exists()  # nothing said, nothing saved

    drive(prompt_only, "/instructions off" + ENTER, tmp_path)
    assert prompt_only.settings.instructions is None
    assert "developer" not in decoded_prompt(prompt_only)


def test_history_is_kept_and_searchable(prompt_only, tmp_path):
    history = tmp_path / "history"
    drive(prompt_only, typed("/effort low", "/reasoning hide"), tmp_path, history=history)
    assert "/effort low" in history.read_text()

    prompt_only.settings.effort = "medium"
    repl, _ = drive(prompt_only, UP + UP + ENTER, tmp_path, history=history)
    assert prompt_only.settings.effort == "low"

    prompt_only.settings.effort = "medium"
    repl, _ = drive(prompt_only, CTRL_R + "effort" + ENTER + ENTER, tmp_path, history=history)
    assert prompt_only.settings.effort == "low"


def test_suggestion_from_history(prompt_only, tmp_path):
    history = tmp_path / "history"
    drive(prompt_only, typed("/effort low", "/reasoning hide"), tmp_path, history=history)
    prompt_only.settings.effort = "medium"
    with create_pipe_input() as pipe:
        repl = Repl(
            prompt_only,
            input=pipe,
            output=DummyOutput(),
            console=Console(file=io.StringIO()),
            history=history,
            autosave=False,
        )
        buffer = repl.prompt.default_buffer
        # The suggestion is computed after the keys are read: wait for it like a person would.
        runner = threading.Thread(target=repl.run)
        runner.start()
        pipe.send_text("/eff")
        deadline = time.monotonic() + 10
        while buffer.suggestion is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert buffer.suggestion is not None and buffer.suggestion.text == "ort low"
        pipe.send_text(RIGHT + ENTER)
        pipe.close()
        runner.join(timeout=10)
    assert prompt_only.settings.effort == "low"


def test_piped_lines(prompt_only, tmp_path):
    """stdin that is no terminal is read line by line, with the same \"\"\" blocks."""
    lines = io.StringIO('/effort high\n"""\n/effort low\n"""\n')
    out = io.StringIO()
    repl = Repl(
        prompt_only,
        console=Console(file=out, width=100),
        lines=lines,
        saver=chatstore.Autosaver(tmp_path / "chats"),
    )
    repl.run()
    assert prompt_only.settings.effort == "low"  # a block's text is still a command
    assert ">>> /effort high" in out.getvalue()


def test_completion():
    completer = SlashCompleter()

    def complete(text: str) -> list[str]:
        return [c.text for c in completer.get_completions(Document(text), None)]

    assert complete("/ef") == ["/effort"]
    assert complete("/re") == ["/reasoning", "/reset", "/retry"]
    assert complete("/effort h") == ["high"]
    assert complete("/reasoning ") == ["collapse", "show", "hide"]
    assert complete("hello") == []
    assert closest_command("/qiut") == "/exit"
    assert closest_command("/stat") == "/stats"
    assert closest_command("/xyzzy") is None


def test_block_markers():
    assert open_block('"""') and open_block('"""\nsome text')
    assert not open_block('"""\nsome text\n"""') and not open_block("plain")
    assert message_text('"""\nline one\nline two\n"""') == "line one\nline two"
    assert message_text('"""one line"""') == "one line"
    assert message_text("  plain  ") == "plain"


def test_markdown_tail_prints_finished_blocks_once():
    tail = MarkdownTail(max_lines=5)
    printed = []
    text = "# Title\n\nFirst paragraph.\n\n```python\n" + "x = 1\n" * 12 + "```\n\nLast words"
    for ch in text:
        chunk = tail.feed(ch)
        if chunk is not None:
            printed.append(chunk)
    printed.append(tail.take_all())
    assert printed[0] == "# Title\n"
    # The long code block was cut into fenced pieces, each a complete block of its own.
    code = [p for p in printed if "x = 1" in p]
    assert len(code) > 1 and all(
        p.strip().startswith("```") and p.rstrip().endswith("```") for p in code
    )
    assert sum(p.count("x = 1") for p in printed) == 12
    assert printed[-1].strip() == "Last words"


def test_footer_text():
    from gptoss_mlx.model.generate import GenerationStats

    stats = GenerationStats(
        generated_tokens=40, time_to_first_token=0.5, decode_seconds=1.0, finish_reason="stop"
    )
    line, warning = footer_text(stats, 1000, 4096)
    assert line == "0.50 s to first token · 39.0 tok/s · 40 tokens · context 1,000/4,096 (24%)"
    assert warning is None
    stats.finish_reason = "interrupted"
    line, warning = footer_text(stats, 3900, 4096)
    assert line.startswith("interrupted · ") and "(95%)" in line
    assert warning and "/undo or /reset" in warning and "larger --context" in warning
    _, warning = footer_text(stats, 130_000, 131_072)  # already the largest context there is
    assert warning and "/undo or /reset" in warning and "--context" not in warning


def render_events(events: list, *, terminal: bool, reasoning: str = "collapse") -> str:
    out = io.StringIO()
    console = Console(file=out, width=80, height=24, force_terminal=terminal, color_system=None)
    renderer = Renderer(console, reasoning=reasoning)
    with renderer.turn() as view:
        for ev in events:
            view.on_event(ev)
    return out.getvalue()


TOOL_TURN = [
    harmony.ReasoningDelta("I should look"),
    harmony.ReasoningDelta(" up the weather."),
    harmony.MessageEnd("analysis", None),
    harmony.ToolCall(
        "functions.get_weather", '{"city": "Paris"}', "commentary", "<|constrain|>json"
    ),
    harmony.FinalDelta("It is **sunny**"),
    harmony.FinalDelta(" in Paris."),
]


def test_reasoning_tool_call_and_answer_plain():
    out = render_events(TOOL_TURN, terminal=False)
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 3
    assert re.fullmatch(r"\[thought for \d+\.\d s, 2 tokens\]", lines[0])
    assert lines[1] == '[tool call] functions.get_weather {"city": "Paris"}'
    assert lines[2] == "It is **sunny** in Paris."


def test_reasoning_tool_call_and_answer_terminal():
    out = render_events(TOOL_TURN, terminal=True)
    # The live region (reasoning while it streams) is erased; what is printed after it stays.
    after = out[out.index("▸ thought for") :]
    assert re.match(r"▸ thought for \d+\.\d s, 2 tokens", after)
    assert 'tool call functions.get_weather {"city": "Paris"}' in after
    assert "It is sunny in Paris." in after
    assert "I should look" not in after


def test_reasoning_show_keeps_the_text():
    out = render_events(TOOL_TURN, terminal=True, reasoning="show")
    assert re.search(r"\n?  I should look up the weather\. *\n", out)  # printed, not only live
    assert "(thought for" in out
    plain = render_events(TOOL_TURN, terminal=False, reasoning="show")
    assert "thinking:\nI should look up the weather.\n" in plain


def test_reasoning_hide_shows_only_the_summary():
    out = render_events(TOOL_TURN, terminal=True, reasoning="hide")
    assert "I should look" not in out and "thinking…" in out and "▸ thought for" in out
