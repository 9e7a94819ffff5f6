"""Write the golden renders in this folder: `python tests/golden/make_goldens.py`.

Each case is written twice: as our spec (PromptOptions and Message dicts, what the tests feed
to gptoss_mlx.harmony) and as an openai-harmony Conversation built directly with its own API.
The stored tokens come from openai-harmony alone, so the tests check our renderer against it.
Where our chain-of-thought rule drops analysis, the harmony-side conversation simply leaves it
out (and is rendered with auto_drop_analysis disabled).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openai_harmony import (
    Author,
    Conversation,
    DeveloperContent,
    HarmonyEncoding,
    Message,
    ReasoningEffort,
    RenderConversationConfig,
    Role,
    SystemContent,
    ToolDescription,
)

HERE = Path(__file__).parent
DATE = "2025-06-28"
NO_AUTO_DROP = RenderConversationConfig(auto_drop_analysis=False)


def o200k_encodings_dir(dest: Path) -> Path:
    """A folder holding o200k_base.tiktoken, unpacked from the bpe-openai package."""
    target = dest / "o200k_base.tiktoken"
    if not target.exists():
        # find_spec locates the package without importing it (its import loads every vocabulary)
        spec = importlib.util.find_spec("bpe_openai")
        assert spec is not None and spec.submodule_search_locations, "bpe-openai is not installed"
        packed = Path(spec.submodule_search_locations[0]) / "data" / "o200k_base.tiktoken.gz"
        target.write_bytes(gzip.decompress(packed.read_bytes()))
    return dest


@dataclass
class Case:
    name: str
    spec: dict[str, Any]  # {"render": "prompt"|"messages", "options": {...}, "messages": [...]}
    harmony: Callable[[], list[Message]]  # the same conversation, built with openai-harmony


def render_case(encoding: HarmonyEncoding, case: Case) -> list[int]:
    conversation = Conversation.from_messages(case.harmony())
    if case.spec["render"] == "messages":
        return encoding.render_conversation(conversation, NO_AUTO_DROP)
    return encoding.render_conversation_for_completion(conversation, Role.ASSISTANT, NO_AUTO_DROP)


# -- harmony-side helpers ------------------------------------------------------------------


def system(
    effort: ReasoningEffort = ReasoningEffort.MEDIUM,
    date: str | None = DATE,
    *,
    browser: bool = False,
    python: bool = False,
) -> Message:
    content = SystemContent.new().with_reasoning_effort(effort)
    if date:
        content = content.with_conversation_start_date(date)
    if browser:
        content = content.with_browser_tool()
    if python:
        content = content.with_python_tool()
    return Message.from_role_and_content(Role.SYSTEM, content)


def developer(
    instructions: str | None = None, tools: list[ToolDescription] | None = None
) -> Message:
    content = DeveloperContent.new()
    if instructions:
        content = content.with_instructions(instructions)
    if tools:
        content = content.with_function_tools(tools)
    return Message.from_role_and_content(Role.DEVELOPER, content)


def user(text: str) -> Message:
    return Message.from_role_and_content(Role.USER, text)


def assistant(
    channel: str, text: str, recipient: str | None = None, content_type: str | None = None
) -> Message:
    message = Message.from_role_and_content(Role.ASSISTANT, text).with_channel(channel)
    if recipient:
        message = message.with_recipient(recipient)
    if content_type:
        message = message.with_content_type(content_type)
    return message


def tool(
    name: str, text: str, channel: str | None = "commentary", recipient: str | None = "assistant"
) -> Message:
    message = Message.from_author_and_content(Author.new(Role.TOOL, name), text)
    if channel:
        message = message.with_channel(channel)
    if recipient:
        message = message.with_recipient(recipient)
    return message


# -- spec-side helpers ----------------------------------------------------------------------


def options(**kw: Any) -> dict[str, Any]:
    return {"effort": "medium", "date": DATE, **kw}


def m(role: str, content: str, **kw: Any) -> dict[str, Any]:
    return {"role": role, "content": content, **kw}


def a(channel: str, content: str, **kw: Any) -> dict[str, Any]:
    return m("assistant", content, channel=channel, **kw)


# -- the cases --------------------------------------------------------------------------------

WEATHER = ToolDescription.new(
    "lookup_weather",
    "Use this tool to lookup the weather in a given location. Call it with the parameter "
    "'location', can be any textual description of a location.",
    {"type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]},
)
WEATHER_SPEC = {
    "name": WEATHER.name,
    "description": WEATHER.description,
    "parameters": WEATHER.parameters,
}

KITCHEN_TOOLS = [
    ToolDescription.new("get_location", "Gets the location of the user."),
    ToolDescription.new(
        "get_current_weather",
        "Gets the current weather in the provided location.",
        {
            "type": "object",
            "properties": {
                "location": {
                    "type": "string",
                    "description": "The city and state, e.g. San Francisco, CA",
                },
                "format": {
                    "type": "string",
                    "enum": ["celsius", "fahrenheit"],
                    "default": "celsius",
                },
            },
            "required": ["location"],
        },
    ),
    ToolDescription.new(
        "get_multiple_weathers",
        "Gets the current weather in the provided list of locations.",
        {
            "type": "object",
            "properties": {
                "locations": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": 'List of city and state, e.g. ["San Francisco, CA", "New York, NY"]',
                },
                "format": {
                    "type": "string",
                    "enum": ["celsius", "fahrenheit"],
                    "default": "celsius",
                },
            },
            "required": ["locations"],
        },
    ),
    ToolDescription.new(
        "kitchensink",
        "A function with various complex schemas.",
        {
            "description": "params object",
            "type": "object",
            "properties": {
                "string": {
                    "type": "string",
                    "title": "STRING",
                    "description": "A string",
                    "examples": ["hello", "world"],
                },
                "string_nullable": {
                    "type": "string",
                    "nullable": True,
                    "description": "A nullable string",
                    "default": "the default",
                },
                "string_enum": {"type": "string", "enum": ["a", "b", "c"]},
                "oneof_string_or_number": {
                    "oneOf": [
                        {"type": "string", "default": "default_string_in_oneof"},
                        {"type": "number", "description": "numbers can happen too"},
                    ],
                    "description": "a oneof",
                    "default": 20,
                },
            },
        },
    ),
]
KITCHEN_SPECS = [
    {"name": t.name, "description": t.description, "parameters": t.parameters}
    for t in KITCHEN_TOOLS
]

ROBOT = "Answer the user's questions like a robot."
CAPITAL = "What is the capital of the largest country in the world?"
EFFORT = {
    "low": ReasoningEffort.LOW,
    "medium": ReasoningEffort.MEDIUM,
    "high": ReasoningEffort.HIGH,
}

SF_CALL = '{"location": "San Francisco"}'
SF_RESULT = '{"temperature": 20, "description": "sunny"}'


def _cases() -> list[Case]:
    cases = [
        Case(
            "system_only",
            {"render": "prompt", "options": options(), "messages": []},
            lambda: [system()],
        ),
        Case(
            "simple_convo_no_date",
            {
                "render": "prompt",
                "options": options(date=None),
                "messages": [m("user", "What is 2 + 2?")],
            },
            lambda: [system(date=None), user("What is 2 + 2?")],
        ),
        Case(
            "system_developer_user",
            {
                "render": "prompt",
                "options": options(instructions="Be terse."),
                "messages": [m("user", "Hi there!")],
            },
            lambda: [system(), developer("Be terse."), user("Hi there!")],
        ),
    ]
    for effort, level in EFFORT.items():
        for instructions in (ROBOT, None):
            suffix = "" if instructions else "_no_instructions"
            cases.append(
                Case(
                    f"effort_{effort}{suffix}",
                    {
                        "render": "prompt",
                        "options": options(effort=effort, date=None, instructions=instructions),
                        "messages": [m("user", CAPITAL)],
                    },
                    lambda level=level, instructions=instructions: [
                        system(level, None),
                        *([developer(instructions)] if instructions else []),
                        user(CAPITAL),
                    ],
                )
            )
    cases += [
        Case(
            "multi_turn_cot",  # three turns; the analysis of the finished turns is gone
            {
                "render": "prompt",
                "options": options(),
                "messages": [
                    m("user", "What is 2 + 2?"),
                    a("analysis", "Simple arithmetic: 4."),
                    a("final", "2 + 2 = 4."),
                    m("user", "And 9 / 2?"),
                    a("analysis", "9 / 2 = 4.5."),
                    a("final", "9 / 2 = 4.5."),
                    m("user", "Thanks! Now 3 * 7?"),
                ],
            },
            lambda: [
                system(),
                user("What is 2 + 2?"),
                assistant("final", "2 + 2 = 4."),
                user("And 9 / 2?"),
                assistant("final", "9 / 2 = 4.5."),
                user("Thanks! Now 3 * 7?"),
            ],
        ),
        Case(
            "function_call_open_turn",  # still calling tools: the analysis stays
            {
                "render": "prompt",
                "options": options(tools=[WEATHER_SPEC]),
                "messages": [
                    m("user", "What is the weather in SF?"),
                    a("analysis", "User asks the weather in SF. Use lookup_weather."),
                    a(
                        "commentary",
                        SF_CALL,
                        recipient="functions.lookup_weather",
                        content_type="<|constrain|>json",
                    ),
                    m(
                        "tool",
                        SF_RESULT,
                        name="functions.lookup_weather",
                        recipient="assistant",
                        channel="commentary",
                    ),
                ],
            },
            lambda: [
                system(),
                developer(tools=[WEATHER]),
                user("What is the weather in SF?"),
                assistant("analysis", "User asks the weather in SF. Use lookup_weather."),
                assistant("commentary", SF_CALL, "functions.lookup_weather", "<|constrain|>json"),
                tool("functions.lookup_weather", SF_RESULT),
            ],
        ),
        Case(
            "function_call_finished_turn",  # the turn got its answer: its analysis is dropped
            {
                "render": "prompt",
                "options": options(instructions="Use the tools.", tools=[WEATHER_SPEC]),
                "messages": [
                    m("user", "What is the weather in SF?"),
                    a("analysis", "User asks the weather in SF. Use lookup_weather."),
                    a("commentary", "Checking the weather now."),
                    a(
                        "commentary",
                        SF_CALL,
                        recipient="functions.lookup_weather",
                        content_type="<|constrain|>json",
                    ),
                    m(
                        "tool",
                        SF_RESULT,
                        name="functions.lookup_weather",
                        recipient="assistant",
                        channel="commentary",
                    ),
                    a("analysis", "It is sunny, 20 degrees."),
                    a("final", "It is sunny and 20 °C in San Francisco."),
                    m("user", "Thanks! And in Paris?"),
                ],
            },
            lambda: [
                system(),
                developer("Use the tools.", [WEATHER]),
                user("What is the weather in SF?"),
                assistant("commentary", "Checking the weather now."),
                assistant("commentary", SF_CALL, "functions.lookup_weather", "<|constrain|>json"),
                tool("functions.lookup_weather", SF_RESULT),
                assistant("final", "It is sunny and 20 °C in San Francisco."),
                user("Thanks! And in Paris?"),
            ],
        ),
        Case(
            "functions_with_parameters",
            {
                "render": "prompt",
                "options": options(
                    effort="high", instructions="Always respond in riddles", tools=KITCHEN_SPECS
                ),
                "messages": [m("user", "What is the weather like in SF?")],
            },
            lambda: [
                system(ReasoningEffort.HIGH),
                developer("Always respond in riddles", KITCHEN_TOOLS),
                user("What is the weather like in SF?"),
            ],
        ),
        Case(
            "browser_tool_only",
            {"render": "prompt", "options": options(browser_tool=True), "messages": []},
            lambda: [system(browser=True)],
        ),
        Case(
            "browser_and_python",
            {
                "render": "prompt",
                "options": options(browser_tool=True, python_tool=True),
                "messages": [],
            },
            lambda: [system(browser=True, python=True)],
        ),
        Case(
            "browser_and_function_tool",
            {
                "render": "prompt",
                "options": options(browser_tool=True, tools=[WEATHER_SPEC]),
                "messages": [],
            },
            lambda: [system(browser=True), developer(tools=[WEATHER])],
        ),
        Case(
            "python_call_open_turn",  # a built-in tool call on the analysis channel, turn open
            {
                "render": "prompt",
                "options": options(python_tool=True),
                "messages": [
                    m("user", "What is 2**100?"),
                    a("analysis", "Let me compute it."),
                    a("analysis", "print(2**100)", recipient="python", content_type="code"),
                    m(
                        "tool",
                        "1267650600228229401496703205376",
                        name="python",
                        recipient="assistant",
                        channel="analysis",
                    ),
                ],
            },
            lambda: [
                system(python=True),
                user("What is 2**100?"),
                assistant("analysis", "Let me compute it."),
                assistant("analysis", "print(2**100)", "python", "code"),
                tool("python", "1267650600228229401496703205376", channel="analysis"),
            ],
        ),
        Case(
            "python_call_finished_turn",  # built-in call and result were chain of thought: dropped
            {
                "render": "prompt",
                "options": options(python_tool=True),
                "messages": [
                    m("user", "What is 2**100?"),
                    a("analysis", "Let me compute it."),
                    a("analysis", "print(2**100)", recipient="python", content_type="code"),
                    m(
                        "tool",
                        "1267650600228229401496703205376",
                        name="python",
                        recipient="assistant",
                        channel="analysis",
                    ),
                    a("final", "2**100 = 1267650600228229401496703205376."),
                    m("user", "And 2**10?"),
                ],
            },
            lambda: [
                system(python=True),
                user("What is 2**100?"),
                assistant("final", "2**100 = 1267650600228229401496703205376."),
                user("And 2**10?"),
            ],
        ),
        Case(
            "raw_tool_result_without_channel",  # render_messages: a tool result as harmony's tests write it
            {
                "render": "messages",
                "messages": [
                    m("user", "What is the weather in SF?"),
                    a(
                        "analysis",
                        "User asks: “What is the weather in SF?” We need to use lookup_weather tool.",
                    ),
                    a(
                        "commentary",
                        SF_CALL,
                        recipient="functions.lookup_weather",
                        content_type="<|constrain|>json",
                    ),
                    m("tool", SF_RESULT, name="functions.lookup_weather"),
                ],
            },
            lambda: [
                user("What is the weather in SF?"),
                assistant(
                    "analysis",
                    "User asks: “What is the weather in SF?” We need to use lookup_weather tool.",
                ),
                assistant("commentary", SF_CALL, "functions.lookup_weather", "<|constrain|>json"),
                tool("functions.lookup_weather", SF_RESULT, channel=None, recipient=None),
            ],
        ),
        Case(
            "raw_keeps_everything",  # render_messages drops nothing
            {
                "render": "messages",
                "messages": [
                    m("user", "What is 2 + 2?"),
                    a("final", "4"),
                    m("user", "What is 3 + 5?"),
                    a("analysis", "thinking 3+5"),
                    a("final", "8"),
                ],
            },
            lambda: [
                user("What is 2 + 2?"),
                assistant("final", "4"),
                user("What is 3 + 5?"),
                assistant("analysis", "thinking 3+5"),
                assistant("final", "8"),
            ],
        ),
    ]
    return cases


CASES = _cases()


def main() -> int:
    sys.path.insert(0, str(HERE.parent.parent))
    from gptoss_mlx.harmony import load_encoding

    with tempfile.TemporaryDirectory() as tmp:
        encoding = load_encoding(o200k_encodings_dir(Path(tmp)))
        for stale in HERE.glob("*.json"):
            stale.unlink()
        for case in CASES:
            tokens = render_case(encoding, case)
            record = {
                "name": case.name,
                "spec": case.spec,
                "tokens": tokens,
                "text": encoding.decode(tokens),
            }
            path = HERE / f"{case.name}.json"
            path.write_text(
                json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8"
            )
            print(f"{path.name}: {len(tokens)} tokens")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
