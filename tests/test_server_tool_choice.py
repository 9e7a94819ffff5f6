"""`tool_choice` ("required", a named function, "none", bad values) and `reasoning_tokens` in
usage, through the real openai SDK against the server over ScriptedModel: a reply that answers
instead of calling is taken back to the end of its reasoning and the call's header is written for
the model, which the exact prefills show."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from gptoss_mlx import harmony
from gptoss_mlx.server.tool_choice import ToolChoice

from .server_harness import serve
from .test_server import THOUGHT_ANSWER, Server, user


@pytest.fixture(scope="module")
def enc(tiny_checkpoint: Path):
    return harmony.encoding_for_model(tiny_checkpoint)


def function(name: str) -> dict:
    params = {"type": "object", "properties": {"city": {"type": "string"}}}
    return {"type": "function", "function": {"name": name, "parameters": params}}


WEATHER, TIME = function("get_weather"), function("get_time")
ARGS = '{"city": "Paris"}'


def tokens(enc, text: str) -> list[int]:
    return enc.encode(text, allowed_special="all")


def start(enc, replies: list[list[int] | str]):
    srv = Server(enc, [])
    srv.model.replies = [r if isinstance(r, list) else tokens(enc, r) for r in replies]
    return srv


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)


def analysis_tokens(enc) -> int:
    return len(tokens(enc, "<|channel|>analysis<|message|>think hard<|end|>"))


def test_named_function_is_called_after_the_reasoning(enc) -> None:
    header = ToolChoice(("get_weather",)).header(enc)
    srv = start(enc, [THOUGHT_ANSWER, ARGS + "<|call|>"])
    with serve(srv.app) as url:
        out = client(url).chat.completions.create(
            model="gpt-oss-20b",
            messages=[user("hi")],
            tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None  # the refused answer never reaches the client
    assert choice.message.reasoning == "think hard"
    [call] = choice.message.tool_calls
    assert (call.function.name, call.function.arguments) == ("get_weather", ARGS)
    # Back to the end of the reasoning (its snapshot), then only the header was prefilled.
    prefills = [c for c in srv.model.calls if len(c) > 1]
    assert prefills[-1] == [harmony.START, harmony.ASSISTANT, *header]
    assert enc.decode(header).startswith("<|channel|>commentary to=functions.get_weather")
    # Usage counts both attempts; the reasoning is the analysis message.
    written = tokens(enc, THOUGHT_ANSWER)
    answer_start = written.index(harmony.MESSAGE, analysis_tokens(enc)) + 2  # one content token
    assert out.usage.completion_tokens == answer_start + len(tokens(enc, ARGS + "<|call|>"))
    assert out.usage.completion_tokens_details.reasoning_tokens == analysis_tokens(enc)


def test_required_lets_the_model_name_one_of_several(enc) -> None:
    headers = [ToolChoice((n,)).header(enc) for n in ("get_weather", "get_time")]
    common = ToolChoice(("get_weather", "get_time")).header(enc)
    assert common == headers[0][: len(common)] and len(common) < len(headers[1])
    rest = headers[1][len(common) :] + tokens(enc, "{}<|call|>")
    srv = start(enc, [THOUGHT_ANSWER, rest])
    with serve(srv.app) as url:
        chunks = list(
            client(url).chat.completions.create(
                model="gpt-oss-20b",
                messages=[user("hi")],
                tools=[WEATHER, TIME],
                tool_choice="required",
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == ""
    calls = [tc for d in deltas for tc in d.tool_calls or []]
    assert [(c.function.name, c.function.arguments) for c in calls] == [("get_time", "{}")]
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == analysis_tokens(enc)


def test_a_call_that_obeys_is_left_alone(enc) -> None:
    direct = "<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{}<|call|>"
    srv = start(enc, [direct])
    with serve(srv.app) as url:
        out = client(url).chat.completions.create(
            model="gpt-oss-20b", messages=[user("hi")], tools=[WEATHER], tool_choice="required"
        )
    assert out.choices[0].message.tool_calls[0].function.name == "get_weather"
    assert srv.model.replies_started == 1
    assert out.usage.completion_tokens_details.reasoning_tokens == 0


def test_a_call_to_another_function_is_redone(enc) -> None:
    other = "<|channel|>commentary to=functions.get_time <|constrain|>json<|message|>{}<|call|>"
    srv = start(enc, [other, ARGS + "<|call|>"])
    with serve(srv.app) as url:
        out = client(url).responses.create(
            model="gpt-oss-20b",
            input="hi",
            tools=[{"type": "function", **f["function"]} for f in (WEATHER, TIME)],
            tool_choice={"type": "function", "name": "get_weather"},
        )
    assert [(o.type, o.name, o.arguments) for o in out.output] == [
        ("function_call", "get_weather", ARGS)
    ]
    assert out.usage.output_tokens_details.reasoning_tokens == 0


def test_responses_reports_reasoning_tokens(enc) -> None:
    srv = start(enc, [THOUGHT_ANSWER])
    with serve(srv.app) as url:
        out = client(url).responses.create(model="gpt-oss-20b", input="hi")
    assert out.output_text == "Hello there"
    assert out.usage.output_tokens_details.reasoning_tokens == analysis_tokens(enc)
    assert out.usage.output_tokens == len(tokens(enc, THOUGHT_ANSWER))


def test_none_leaves_the_functions_out(enc) -> None:
    srv = start(enc, [THOUGHT_ANSWER])
    with serve(srv.app) as url:
        out = client(url).chat.completions.create(
            model="gpt-oss-20b", messages=[user("hi")], tools=[WEATHER], tool_choice="none"
        )
    assert out.choices[0].message.content == "Hello there"
    assert out.usage.prompt_tokens == len(srv.prompt([harmony.Message("user", "hi")]))


@pytest.mark.parametrize(
    ("tools", "choice", "says"),
    [
        ([WEATHER], "sometimes", "must be one of none, auto, required"),
        ([], "required", "needs at least one function"),
        ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "'nope', which is not"),
    ],
)
def test_bad_tool_choice_is_a_400(enc, tools, choice, says) -> None:
    srv = start(enc, [])
    with serve(srv.app) as url, pytest.raises(openai.BadRequestError) as err:
        client(url).chat.completions.create(
            model="gpt-oss-20b", messages=[user("hi")], tools=tools or openai.omit,
            tool_choice=choice,
        )  # fmt: skip
    assert says in err.value.message and err.value.body["param"] == "tool_choice"
    assert json.loads(err.value.response.text)["error"]["type"] == "invalid_request_error"


def test_usage_of_a_reply_without_events(enc) -> None:
    srv = start(enc, [THOUGHT_ANSWER])  # one token (`<|channel|>`) makes no event
    with serve(srv.app) as url:
        out = client(url).chat.completions.create(
            model="gpt-oss-20b", messages=[user("hi")], max_tokens=1
        )
    assert out.choices[0].finish_reason == "length"
    assert out.usage.prompt_tokens == len(srv.prompt([harmony.Message("user", "hi")]))
    assert out.usage.completion_tokens == 1
