"""End to end with a tiny model that really speaks harmony: answers, reasoning, tool calls."""

from __future__ import annotations

import json
import subprocess

import pytest

from gptoss_mlx import harmony
from gptoss_mlx.session.open import open_session
from gptoss_mlx.settings import resolve

from .conftest import run_gptoss

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def gptoss(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return run_gptoss(*args, stdin=stdin, text=False)


def test_stdout_carries_only_the_final_answer(harmony_model):
    r = gptoss("run", "-m", str(harmony_model), "-t", "0", "What is 2+2?")
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == "2 + 2 = 4.\n"
    assert b"2+2=4" not in r.stderr  # reasoning is not shown unless asked


def test_show_reasoning_goes_to_stderr(harmony_model):
    r = gptoss("run", "-m", str(harmony_model), "-t", "0", "--show-reasoning", "What is 2+2?")
    assert r.stdout.decode() == "2 + 2 = 4.\n"
    assert "The user asks a simple sum. 2+2=4." in r.stderr.decode()


def test_json_has_final_and_reasoning(harmony_model):
    r = gptoss(
        "run", "-m", str(harmony_model), "-t", "0", "--json", "--effort", "high", "What is 2+2?"
    )
    out = json.loads(r.stdout)
    assert out["final"] == "2 + 2 = 4."
    assert out["reasoning"] == "The user asks a simple sum. 2+2=4."
    assert out["finish_reason"] == "stop" and out["tool_calls"] == []
    assert out["effort"] == "high"


def test_tool_call_through_the_cli(harmony_model, tmp_path):
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps([WEATHER]))
    r = gptoss(
        "run",
        "-m",
        str(harmony_model),
        "-t",
        "0",
        "--tools",
        str(tools),
        "--json",
        "What's the weather in Paris?",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["finish_reason"] == "tool_call"
    assert out["tool_calls"] == [
        {
            "recipient": "functions.get_weather",
            "arguments": '{"city":"Paris"}',
            "channel": "commentary",
            "content_type": "<|constrain|>json",
        }
    ]
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    r = gptoss("run", "-m", str(harmony_model), "--tools", str(bad), "hi")
    assert r.returncode == 1 and b"--tools file" in r.stderr


def test_tool_turn_keeps_its_analysis_until_the_final_then_drops_it(harmony_model):
    s = open_session(resolve({"temperature": 0}), harmony_model)
    s.settings.tools = [harmony.ToolSpec.from_dict(WEATHER)]
    r1 = s.turn("What's the weather in Paris?")
    assert r1.finish_reason == "tool_call"
    assert [(c.recipient, c.arguments) for c in r1.tool_calls] == [
        ("functions.get_weather", '{"city":"Paris"}')
    ]
    p1 = s.prompt_tokens(s.messages[:1])
    # While the turn is calling tools its analysis stays in the prompt, so the next prompt
    # extends the cache exactly: only the call's end and the tool result are new.
    r2 = s.collect(
        s.add_tool_result("functions.get_weather", '{"temperature": 21, "sky": "sunny"}')
    )
    assert r2.final == "It is 21 °C and sunny in Paris."
    prompt2 = s.prompt_tokens(s.messages[: len(s.messages) - len(r2.messages)])
    assert r2.stats.prefilled_tokens < len(prompt2) - len(p1)
    text2 = s.tokenizer.decode(prompt2)
    assert "Weather request. Calling get_weather." in text2
    # Once the turn has its final answer, its analysis (both of them) leaves later prompts.
    s.messages.append(harmony.Message.user("Thanks"))
    text3 = s.tokenizer.decode(s.prompt_tokens())
    assert "Weather request" not in text3 and "Tool says" not in text3
    assert "It is 21 °C and sunny in Paris." in text3


def expected(model_dir, name: str) -> tuple[str, str]:
    """The second user message and final answer the model was trained on for example `name`."""
    examples = json.loads((model_dir / "harmony_examples.json").read_text())["examples"]
    ex = next(e for e in examples if e["name"] == name)
    final = [m for m in ex["reply"] if m.get("channel") == "final"][-1]["content"]
    return ex["messages"][-1]["content"], final


def test_second_turn_drops_the_first_turns_reasoning_and_answers(harmony_model):
    s = open_session(resolve({"temperature": 0}), harmony_model)
    s.settings.date = "2025-06-28"
    r1 = s.turn("What is 2+2?")
    assert (r1.final, r1.finish_reason) == ("2 + 2 = 4.", "stop")
    stored = [m for m in s.messages if m.role == "assistant"]
    assert [m.channel for m in stored] == ["analysis", "final"]
    question, answer = expected(harmony_model, "second_turn")
    r2 = s.turn(question)
    assert r2.final == answer
    prompt = s.tokenizer.decode(s.prompt_tokens(s.messages[:-2]))
    assert "2+2=4" not in prompt  # turn 1's analysis is gone
    assert "<|channel|>final<|message|>2 + 2 = 4.<|end|>" in prompt  # stored ending in <|end|>


def test_interrupting_a_long_answer_keeps_it(harmony_model):
    s = open_session(resolve({"temperature": 0}), harmony_model)
    finals = []

    def on_event(ev):
        if isinstance(ev, harmony.FinalDelta):
            finals.append(ev.text)
            if len(finals) == 5:
                raise KeyboardInterrupt

    r = s.turn("Tell me a story.", on_event=on_event)
    assert r.finish_reason == "interrupted"
    final = [m for m in s.messages if m.channel == "final"][-1]
    assert final.interrupted and final.content.startswith("".join(finals))
    assert s.turn("What is 2+2?").final == "2 + 2 = 4."


def test_max_tokens_cuts_the_reply_and_says_so(harmony_model):
    r = gptoss("run", "-m", str(harmony_model), "-t", "0", "-n", "30", "Tell me a story.")
    assert r.returncode == 0
    assert r.stdout.decode().strip()  # part of the story
    assert b"cut at --max-tokens" in r.stderr


@pytest.mark.parametrize("effort", ["low", "high"])
def test_effort_reaches_the_model(harmony_model, effort):
    s = open_session(resolve({"temperature": 0, "effort": effort}), harmony_model)
    assert f"Reasoning: {effort}" in s.tokenizer.decode(
        s.prompt_tokens([harmony.Message.user("hi")])
    )
    assert s.turn("What is 2+2?").final == "2 + 2 = 4."
