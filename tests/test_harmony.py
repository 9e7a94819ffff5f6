"""Harmony rendering against openai-harmony itself, the stored goldens, and the CoT rule."""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import openai_harmony as oh
import pytest

from gptoss_mlx import harmony as H
from gptoss_mlx.errors import UserError

from .golden import make_goldens

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_FILES = sorted(GOLDEN.glob("*.json"))


@pytest.fixture(scope="session")
def encodings_dir(tmp_path_factory) -> Path:
    return make_goldens.o200k_encodings_dir(tmp_path_factory.mktemp("o200k"))


@pytest.fixture(scope="session")
def enc(encodings_dir):
    return H.load_encoding(encodings_dir)


def fixed(**kw) -> H.PromptOptions:
    return H.PromptOptions(date="2025-06-28", **kw)


def text_of(enc, tokens) -> str:
    return enc.decode(tokens)


def reply_tokens(enc, messages: list[H.Message]) -> list[int]:
    """What the model would write for these messages after `<|start|>assistant`: the stored
    rendering with the last `<|end|>` replaced by `<|return|>` (unless it is a call)."""
    tokens = H.render_messages(messages, enc)[2:]
    if tokens[-1] == H.END:
        tokens[-1] = H.RETURN
    return tokens


def reply(enc, messages: list[H.Message]) -> list[H.Message]:
    return H.parse_reply(reply_tokens(enc, messages), enc)


def analysis(text):
    return H.Message("assistant", text, channel="analysis")


def final(text):
    return H.Message("assistant", text, channel="final")


def call(name, args):
    return H.Message(
        "assistant",
        args,
        channel="commentary",
        recipient=f"functions.{name}",
        content_type="<|constrain|>json",
    )


WEATHER = H.ToolSpec(
    "get_weather",
    "Current weather in a city.",
    {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)


# --------------------------------------------------------------------------- loading


def _linked_dir(tmp_path: Path, encodings_dir: Path, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "o200k_base.tiktoken").symlink_to(encodings_dir / "o200k_base.tiktoken")
    return d


def test_load_encoding_is_cached_per_dir(tmp_path, encodings_dir):
    d = _linked_dir(tmp_path, encodings_dir, "a")
    first = H.load_encoding(d)
    assert H.load_encoding(Path(str(d) + "/")) is first
    assert H.load_encoding(_linked_dir(tmp_path, encodings_dir, "b")) is not first


@pytest.mark.parametrize("before", [None, "/somewhere/else"])
def test_load_encoding_restores_the_env_var(tmp_path, encodings_dir, monkeypatch, before):
    if before is None:
        monkeypatch.delenv("TIKTOKEN_ENCODINGS_BASE", raising=False)
    else:
        monkeypatch.setenv("TIKTOKEN_ENCODINGS_BASE", before)
    H.load_encoding(_linked_dir(tmp_path, encodings_dir, "fresh"))
    assert os.environ.get("TIKTOKEN_ENCODINGS_BASE") == before


def test_load_encoding_without_vocab_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="o200k_base.tiktoken"):
        H.load_encoding(tmp_path)


def test_load_encoding_rejects_a_wrong_vocab(tmp_path):
    (tmp_path / "o200k_base.tiktoken").write_text("YQ== 0\n")
    with pytest.raises(UserError, match="cannot load"):
        H.load_encoding(tmp_path)


def test_encoding_for_model_uses_the_models_tokenizer(tmp_path, monkeypatch, enc):
    from gptoss_mlx.harmony import tokenizer as tokenizer

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "tokenizer.json").write_bytes(tokenizer.tokenizer_json_path().read_bytes())
    from_model = H.encoding_for_model(model_dir)
    sample = "Hello, wörld! 🦄 <|end|>"
    assert from_model.encode(sample, disallowed_special=()) == enc.encode(
        sample, disallowed_special=()
    )


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_encoding_loads_with_the_network_unreachable(tmp_path, encodings_dir):
    proxy = f"http://127.0.0.1:{_dead_port()}"
    env = {k: v for k, v in os.environ.items() if k != "TIKTOKEN_ENCODINGS_BASE"}
    empty_cache = tmp_path / "cache"
    empty_cache.mkdir()
    env |= {
        "HTTPS_PROXY": proxy,
        "HTTP_PROXY": proxy,
        "https_proxy": proxy,
        "http_proxy": proxy,
        "ALL_PROXY": proxy,
        "NO_PROXY": "",
        "TIKTOKEN_RS_CACHE_DIR": str(empty_cache),  # no vocabulary downloaded earlier
    }
    script = textwrap.dedent(
        f"""
        import os, time
        from pathlib import Path
        import openai_harmony as oh
        try:
            oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)
            print("control: loaded")
        except Exception:
            print("control: failed")
        from gptoss_mlx.harmony import load_encoding
        t = time.perf_counter()
        enc = load_encoding(Path({str(encodings_dir)!r}))
        print("loaded in", round(time.perf_counter() - t, 3))
        print(enc.decode(enc.encode("offline ok")))
        assert "TIKTOKEN_ENCODINGS_BASE" not in os.environ
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    # the control shows the network really is unreachable for openai-harmony's downloader
    assert "control: failed" in out.stdout
    assert "offline ok" in out.stdout


def test_token_constants_match_the_encoding(enc):
    for text, token in [
        ("<|return|>", H.RETURN),
        ("<|constrain|>", H.CONSTRAIN),
        ("<|channel|>", H.CHANNEL),
        ("<|start|>", H.START),
        ("<|end|>", H.END),
        ("<|message|>", H.MESSAGE),
        ("<|call|>", H.CALL),
        ("<|endoftext|>", H.ENDOFTEXT),
    ]:
        assert enc.encode(text, allowed_special="all") == [token]
    assert enc.encode("assistant") == [H.ASSISTANT]
    assert enc.is_special_token(H.FIRST_SPECIAL) and not enc.is_special_token(H.FIRST_SPECIAL - 1)
    assert set(H.STOP_TOKENS) == set(enc.stop_tokens_for_assistant_actions())
    # <|end|> closes a message but is not a stop: the final answer comes after the analysis
    assert H.END not in H.STOP_TOKENS and H.END in enc.stop_tokens()


# --------------------------------------------------------------------------- data


def test_conversation_round_trips_through_json():
    conversation = H.Conversation(
        messages=[
            H.Message.user("Weather in Paris?"),
            analysis("Use the tool."),
            call("get_weather", '{"city": "Paris"}'),
            H.tool_result("functions.get_weather", '{"temp": 21}'),
            final("21 °C."),
        ],
        options=fixed(effort="high", instructions="Be brief.", tools=[WEATHER], browser_tool=True),
    )
    again = H.Conversation.from_dict(json.loads(json.dumps(conversation.to_dict())))
    assert again == conversation


def test_options_validate_and_default():
    assert H.PromptOptions().date == datetime.date.today().isoformat()
    assert H.PromptOptions(date=datetime.date(2025, 1, 2)).date == "2025-01-02"
    assert H.PromptOptions.from_dict({}).effort == "medium"
    assert H.PromptOptions.from_dict({"date": None}).date is None
    with pytest.raises(ValueError, match="effort"):
        H.PromptOptions(effort="max")


def test_messages_validate():
    with pytest.raises(ValueError, match="role"):
        H.Message("bot", "hi")
    with pytest.raises(ValueError, match="name"):
        H.Message("tool", "42")


# --------------------------------------------------------------------------- goldens


def test_every_case_has_a_golden():
    assert {p.stem for p in GOLDEN_FILES} == {c.name for c in make_goldens.CASES}


def _render_spec(spec, enc):
    messages = [H.Message.from_dict(m) for m in spec["messages"]]
    if spec["render"] == "messages":
        return H.render_messages(messages, enc)
    return H.render_prompt(messages, H.PromptOptions.from_dict(spec["options"]), enc)


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=lambda p: p.stem)
def test_render_matches_golden(path, enc):
    golden = json.loads(path.read_text(encoding="utf-8"))
    tokens = _render_spec(golden["spec"], enc)
    assert tokens == golden["tokens"]
    assert enc.decode(tokens) == golden["text"]


@pytest.mark.parametrize("case", make_goldens.CASES, ids=lambda c: c.name)
def test_render_matches_live_openai_harmony(case, enc):
    assert _render_spec(case.spec, enc) == make_goldens.render_case(enc, case)


def test_prompt_is_history_plus_assistant_header(enc):
    messages = [H.Message.user("hi"), analysis("greet"), final("Hello!"), H.Message.user("bye")]
    options = fixed(tools=[WEATHER])
    history = H.render_history(messages, options, enc)
    assert H.render_prompt(messages, options, enc) == [*history, H.START, H.ASSISTANT]


def test_stored_reply_ends_with_end_not_return(enc):
    stored = reply(enc, [analysis("Say hi."), final("Hi!")])
    prompt = H.render_prompt([H.Message.user("hi"), *stored, H.Message.user("bye")], fixed(), enc)
    assert H.RETURN not in prompt
    assert "<|channel|>final<|message|>Hi!<|end|><|start|>user" in text_of(enc, prompt)


def test_tool_result_renders_as_harmony_expects(enc):
    tokens = H.render_messages([H.tool_result("functions.get_weather", '{"t": 1}')], enc)
    assert text_of(enc, tokens) == (
        '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"t": 1}<|end|>'
    )


def test_call_messages_end_with_call(enc):
    tokens = H.render_messages([call("get_weather", "{}")], enc)
    assert tokens[-1] == H.CALL


# --------------------------------------------------------------------------- chain of thought


def _three_turns():
    return [
        H.Message.user("Q1"),
        analysis("think one"),
        final("A1"),
        H.Message.user("Q2"),
        analysis("think two"),
        final("A2"),
        H.Message.user("Q3"),
    ]


def test_openai_harmony_auto_drop_only_drops_before_the_first_final(enc):
    """Pins openai-harmony 0.0.8: its auto_drop_analysis keeps turn 2's reasoning; ours drops it."""
    convo = oh.Conversation.from_messages(
        [
            oh.Message.from_role_and_content(oh.Role.ASSISTANT, m.content).with_channel(m.channel)
            if m.role == "assistant"
            else oh.Message.from_role_and_content(oh.Role.USER, m.content)
            for m in _three_turns()
        ]
    )
    theirs = text_of(enc, enc.render_conversation_for_completion(convo, oh.Role.ASSISTANT))
    assert "think one" not in theirs and "think two" in theirs
    ours = text_of(enc, H.render_messages(H.visible_messages(_three_turns()), enc))
    assert "think one" not in ours and "think two" not in ours
    # apart from the analysis, the two agree token for token
    assert ours + "<|start|>assistant" == theirs.replace(
        "<|start|>assistant<|channel|>analysis<|message|>think two<|end|>", ""
    )


def test_cot_dropped_for_every_finished_turn_across_three_turns(enc):
    options = fixed(effort="low")
    history: list[H.Message] = []
    prompts, prefixes = [], []
    for n in (1, 2, 3):
        history.append(H.Message.user(f"Question {n}?"))
        prompt = H.render_prompt(history, options, enc)
        prefix = H.history_prefix(history, options, enc)
        assert prompt == [*prefix, H.START, H.ASSISTANT]
        prompts.append(prompt)
        prefixes.append(prefix)
        history += reply(enc, [analysis(f"reasoning {n}"), final(f"Answer {n}.")])

    last = text_of(enc, H.render_prompt(history + [H.Message.user("Q4")], options, enc))
    assert "reasoning" not in last
    assert all(f"Answer {n}." in last for n in (1, 2, 3))
    # the first prompt of each turn is a prefix of every later prompt: the KV cache taken
    # before a turn's analysis stays valid
    for earlier, later in zip(prompts, prompts[1:], strict=False):
        assert later[: len(earlier)] == earlier
    for prefix in prefixes:
        assert H.common_prefix_len(prefix, prompts[-1]) == len(prefix)


def test_tool_calling_turn_keeps_its_analysis_until_the_final(enc):
    options = fixed(tools=[WEATHER])
    history = [H.Message.user("Old question"), analysis("old reasoning"), final("Old answer")]
    history.append(H.Message.user("Weather in Paris and Rome?"))
    first = H.render_prompt(history, options, enc)

    history += reply(
        enc, [analysis("Look up Paris first."), call("get_weather", '{"city":"Paris"}')]
    )
    history.append(H.tool_result("functions.get_weather", '{"temp": 21}'))
    second = H.render_prompt(history, options, enc)
    assert "Look up Paris first." in text_of(enc, second)
    assert "old reasoning" not in text_of(enc, second)
    assert second[: len(first)] == first

    history += reply(enc, [analysis("Now Rome."), call("get_weather", '{"city":"Rome"}')])
    history.append(H.tool_result("functions.get_weather", '{"temp": 25}'))
    third = H.render_prompt(history, options, enc)
    assert {"Look up Paris first.", "Now Rome."} <= set(
        m.content for m in H.visible_messages(history)
    )
    assert third[: len(second)] == second

    history += reply(enc, [analysis("Both known."), final("Paris 21 °C, Rome 25 °C.")])
    history.append(H.Message.user("Thanks"))
    after = text_of(enc, H.render_prompt(history, options, enc))
    for thought in ("Look up Paris first.", "Now Rome.", "Both known."):
        assert thought not in after
    # the calls and their results are not chain of thought: they stay
    assert after.count("to=functions.get_weather") == 2 and '{"temp": 25}' in after
    assert H.common_prefix_len(first, H.render_prompt(history, options, enc)) == len(first)


def test_interrupted_turn_loses_its_analysis(enc):
    history = [H.Message.user("Q1"), analysis("half a thought"), H.Message.user("Never mind. Q2")]
    assert "half a thought" not in text_of(enc, H.render_prompt(history, fixed(), enc))


def test_builtin_tool_calls_on_analysis_are_chain_of_thought(enc):
    history = [
        H.Message.user("2**100?"),
        H.Message(
            "assistant",
            "print(2**100)",
            channel="analysis",
            recipient="python",
            content_type="code",
        ),
        H.tool_result("python", "1267650600228229401496703205376", channel="analysis"),
    ]
    open_turn = text_of(enc, H.render_prompt(history, fixed(python_tool=True), enc))
    assert "print(2**100)" in open_turn and "1267650600228229401496703205376" in open_turn
    history += [final("It is 1267650600228229401496703205376."), H.Message.user("ok")]
    closed = text_of(enc, H.render_prompt(history, fixed(python_tool=True), enc))
    assert "print(2**100)" not in closed and "to=python" not in closed


def test_history_prefix_without_user_message_is_the_header(enc):
    options = fixed(instructions="x")
    assert H.history_prefix([], options, enc) == H.render_history([], options, enc)


def test_common_prefix_len():
    assert H.common_prefix_len([1, 2, 3], [1, 2, 4]) == 2
    assert H.common_prefix_len([1, 2], [1, 2, 3]) == 2
    assert H.common_prefix_len([], [1]) == 0
