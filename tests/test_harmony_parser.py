"""ReplyParser on realistic, malformed, cut-off and random model output."""

from __future__ import annotations

import re
from pathlib import Path

import openai_harmony as oh
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gptoss_mlx import harmony as H
from gptoss_mlx.harmony import (
    CommentaryDelta,
    FinalDelta,
    MessageEnd,
    ReasoningDelta,
    ToolCall,
)

from .golden import make_goldens

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="module")
def enc(tmp_path_factory):
    return H.load_encoding(make_goldens.o200k_encodings_dir(tmp_path_factory.mktemp("o200k")))


def toks(enc, text: str) -> list[int]:
    """Tokens for text in which `<|...|>` markers are the special tokens."""
    return enc.encode(text, allowed_special="all")


def run(enc, stream: str | list[int]):
    parser = H.ReplyParser(enc)
    tokens = toks(enc, stream) if isinstance(stream, str) else stream
    events = []
    for token in tokens:
        events += parser.feed(token)
    events += parser.finish()
    return events, parser


def texts(events, kind) -> str:
    return "".join(e.text for e in events if isinstance(e, kind))


def check_consistent(events, parser) -> None:
    """Streamed text equals stored text, message by message; one MessageEnd per message."""
    messages = parser.messages()
    ends = [e for e in events if isinstance(e, MessageEnd)]
    assert len(ends) == len(messages)
    streamed, i = [], 0
    for event in events:
        if isinstance(event, ReasoningDelta | FinalDelta | CommentaryDelta):
            streamed.append(event.text)
        elif isinstance(event, ToolCall):
            assert event.arguments == messages[i].content
            assert event.recipient == messages[i].recipient
        elif isinstance(event, MessageEnd):
            message = messages[i]
            assert (event.channel, event.recipient) == (message.channel, message.recipient)
            if message.recipient is None:
                assert "".join(streamed) == message.content
            else:
                assert streamed == []
            streamed, i = [], i + 1
    assert streamed == []


# --------------------------------------------------------------------------- realistic streams


def test_analysis_then_final(enc):
    events, parser = run(
        enc,
        "<|channel|>analysis<|message|>The user greets. Reply politely.<|end|>"
        "<|start|>assistant<|channel|>final<|message|>Hello! How can I help?<|return|>",
    )
    assert texts(events, ReasoningDelta) == "The user greets. Reply politely."
    assert texts(events, FinalDelta) == "Hello! How can I help?"
    assert [e for e in events if isinstance(e, MessageEnd)] == [
        MessageEnd("analysis", None),
        MessageEnd("final", None),
    ]
    assert parser.messages() == [
        H.Message("assistant", "The user greets. Reply politely.", channel="analysis"),
        H.Message("assistant", "Hello! How can I help?", channel="final"),
    ]
    assert parser.stop_token == H.RETURN and not parser.incomplete and not parser.warnings
    check_consistent(events, parser)


def test_deltas_arrive_as_tokens_arrive(enc):
    parser = H.ReplyParser(enc)
    for token in toks(enc, "<|channel|>final<|message|>"):
        assert parser.feed(token) == []
    words = [parser.feed(t) for t in toks(enc, "one two three")]
    assert [w[0].text for w in words] == ["one", " two", " three"]


def test_commentary_preamble_then_tool_call(enc):
    events, parser = run(
        enc,
        "<|channel|>analysis<|message|>Need the weather tool.<|end|>"
        "<|start|>assistant<|channel|>commentary<|message|>Let me check the weather.<|end|>"
        "<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json"
        '<|message|>{"city": "Paris"}<|call|>',
    )
    assert texts(events, CommentaryDelta) == "Let me check the weather."
    assert texts(events, FinalDelta) == ""
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert calls == [
        ToolCall("functions.get_weather", '{"city": "Paris"}', "commentary", "<|constrain|>json")
    ]
    assert events[-1] == MessageEnd("commentary", "functions.get_weather")
    assert parser.stop_token == H.CALL and not parser.incomplete
    assert parser.messages()[-1] == H.Message(
        "assistant",
        '{"city": "Paris"}',
        channel="commentary",
        recipient="functions.get_weather",
        content_type="<|constrain|>json",
    )
    check_consistent(events, parser)


WEATHER_CALL = ToolCall(
    "functions.get_weather", '{"city":"Rome"}', "commentary", "<|constrain|>json"
)


@pytest.mark.parametrize(
    "stream",
    [
        # recipient in the role part, first message (right after the prompt's `<|start|>assistant`)
        ' to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{"city":"Rome"}<|call|>',
        # recipient in the role part of a later message
        "<|channel|>analysis<|message|>Call it.<|end|><|start|>assistant to=functions.get_weather"
        '<|channel|>commentary <|constrain|>json<|message|>{"city":"Rome"}<|call|>',
        # recipient in the channel part
        '<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{"city":"Rome"}<|call|>',
        # no space before <|constrain|>
        '<|channel|>commentary to=functions.get_weather<|constrain|>json<|message|>{"city":"Rome"}<|call|>',
    ],
    ids=["role-part-first", "role-part-later", "channel-part", "no-space"],
)
def test_recipient_positions(enc, stream):
    events, parser = run(enc, stream)
    assert [e for e in events if isinstance(e, ToolCall)] == [WEATHER_CALL]
    assert texts(events, FinalDelta) == ""
    check_consistent(events, parser)


def test_recipient_is_rendered_back_in_the_role_part(enc):
    """What the model wrote and what the history renders can differ: a KV cache holding the
    model's own tokens matches the next prompt only up to such a header."""
    written = "<|channel|>commentary to=functions.f <|constrain|>json<|message|>{}<|call|>"
    _, parser = run(enc, written)
    rendered = enc.decode(H.render_messages(parser.messages(), enc))
    assert rendered == (
        "<|start|>assistant to=functions.f<|channel|>commentary <|constrain|>json<|message|>{}<|call|>"
    )


@pytest.mark.parametrize(
    ("stream", "recipient", "content_type"),
    [
        (
            "<|channel|>analysis<|message|>Search first.<|end|><|start|>assistant"
            '<|channel|>analysis to=browser.search code<|message|>{"query": "harmony"}<|call|>',
            "browser.search",
            "code",
        ),
        (
            " to=python<|channel|>analysis code<|message|>print(2**100)<|call|>",
            "python",
            "code",
        ),
    ],
)
def test_tool_call_on_the_analysis_channel(enc, stream, recipient, content_type):
    events, parser = run(enc, stream)
    (tool_call,) = [e for e in events if isinstance(e, ToolCall)]
    assert (tool_call.recipient, tool_call.channel, tool_call.content_type) == (
        recipient,
        "analysis",
        content_type,
    )
    # the code is not streamed as reasoning text
    assert tool_call.arguments not in texts(events, ReasoningDelta)
    check_consistent(events, parser)


def test_missing_channel_is_the_final_answer(enc):
    events, parser = run(enc, "<|message|>Just the answer.<|return|>")
    assert texts(events, FinalDelta) == "Just the answer."
    assert parser.messages() == [H.Message("assistant", "Just the answer.", channel="final")]
    check_consistent(events, parser)


def test_tool_call_without_channel_gets_one(enc):
    _, parser = run(enc, " to=functions.f <|constrain|>json<|message|>{}<|call|>")
    assert parser.messages()[0].channel == "commentary"
    _, parser = run(enc, " to=python code<|message|>1+1<|call|>")
    assert parser.messages()[0].channel == "analysis"


# --------------------------------------------------------------------------- malformed output


@pytest.mark.parametrize(
    ("stream", "final_text"),
    [
        ("<|channel|>final foo bar<|message|>Answer.<|return|>", "foo bar Answer."),
        ("<|channel|><|message|>Answer.<|return|>", "Answer."),
        ("<|channel|>final<|channel|>final<|message|>Answer.<|return|>", "Answer."),
        ("<|channel|>final<|message|>A<|end|><|start|>bogus<|message|>B<|return|>", "Abogus B"),
        ("<|channel|>final<|message|>A<|end|><|start|>user<|message|>B<|return|>", "AB"),
        (
            "<|channel|>final<|message|>A<|end|><|start|><|start|>assistant<|channel|>final<|message|>B<|return|>",
            "AB",
        ),
        (
            "<|channel|>analysis<|message|>x<|end|>assistant<|channel|>final<|message|>B<|return|>",
            "B",
        ),
        ("<|channel|>analysis<|message|>x<|end|><|channel|>final<|message|>B<|return|>", "B"),
        ("<|channel|>analysis<|message|>x<|end|><|message|>B<|return|>", "B"),
        ("<|channel|>final Just text, no message token.<|return|>", "Just text, no message token."),
        ("<|channel|>analysis<|message|>x<|channel|>final<|message|>B<|return|>", "B"),
        (
            "<|channel|>analysis<|message|>x<|start|>assistant<|channel|>final<|message|>B<|return|>",
            "B",
        ),
        ("<|channel|>final<|message|>A<|end|> and more<|return|>", "A and more"),
        ("Hello<|start|>assistant<|channel|>final<|message|>B<|return|>", "HelloB"),
        (
            "<|channel|>final<|message|>A<|end|>\n\n<|start|>assistant<|channel|>final<|message|>B<|return|>",
            "AB",
        ),
        ("<|channel|>final<|message|>A<|endoftext|>", "A"),
    ],
)
def test_malformed_streams_are_repaired(enc, stream, final_text):
    events, parser = run(enc, stream)
    assert texts(events, FinalDelta) == final_text
    assert texts(events, ReasoningDelta) in ("", "x")
    check_consistent(events, parser)


def test_malformed_header_reports_a_warning(enc):
    _, parser = run(enc, "<|channel|>final foo bar<|message|>Answer.<|return|>")
    assert any("malformed header" in w for w in parser.warnings)


def test_header_without_message_token_streams_as_answer(enc):
    long_answer = " ".join(f"word{i}" for i in range(60))
    parser = H.ReplyParser(enc)
    events = []
    for token in toks(enc, "<|channel|>final " + long_answer):
        events += parser.feed(token)
    assert texts(events, FinalDelta)  # streamed before the reply ends
    events += parser.finish()
    assert texts(events, FinalDelta) == long_answer
    assert parser.incomplete
    check_consistent(events, parser)


# --------------------------------------------------------------------------- cut-off replies


def test_reply_cut_in_the_answer(enc):
    events, parser = run(
        enc,
        "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>final<|message|>Half an ans",
    )
    assert parser.incomplete and parser.stop_token is None
    assert events[-1] == MessageEnd("final", None, incomplete=True)
    assert parser.messages()[-1] == H.Message("assistant", "Half an ans", channel="final")
    check_consistent(events, parser)


def test_reply_cut_in_a_tool_call_emits_no_call(enc):
    events, parser = run(
        enc,
        ' to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{"city": "Ro',
    )
    assert not [e for e in events if isinstance(e, ToolCall)]
    assert events[-1] == MessageEnd("commentary", "functions.get_weather", incomplete=True)
    assert parser.messages()[0].content == '{"city": "Ro'
    assert parser.incomplete


def test_reply_cut_in_a_header_stores_nothing(enc):
    events, parser = run(
        enc, "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>fin"
    )
    assert parser.incomplete
    assert [m.channel for m in parser.messages()] == ["analysis"]
    check_consistent(events, parser)


def test_reply_cut_after_end_is_incomplete(enc):
    _, parser = run(enc, "<|channel|>analysis<|message|>Think.<|end|>")
    assert parser.incomplete and len(parser.messages()) == 1


def test_reply_cut_inside_a_multibyte_character(enc):
    tokens = toks(enc, "<|channel|>final<|message|>ab") + enc.encode("🦄")[:-1]
    events, parser = run(enc, tokens)
    assert parser.messages()[0].content == "ab\ufffd"
    check_consistent(events, parser)


# --------------------------------------------------------------------------- text and tokens


def test_special_token_text_inside_content_is_text(enc):
    body = "Write <|end|> or <|call|> to stop; <|start|>assistant<|channel|>final is a header."
    tokens = (
        toks(enc, "<|channel|>final<|message|>")
        + enc.encode(body, disallowed_special=())
        + [H.RETURN]
    )
    events, parser = run(enc, tokens)
    assert texts(events, FinalDelta) == body
    assert len(parser.messages()) == 1


def test_stray_special_tokens_inside_content_are_dropped(enc):
    tokens = toks(enc, "<|channel|>final<|message|>a<|constrain|>b<|message|>c") + [
        200009,
        201087,
        250_000,
        -1,
        *enc.encode("d"),
        H.RETURN,
    ]
    events, parser = run(enc, tokens)
    assert texts(events, FinalDelta) == "abcd"
    assert len(parser.warnings) == 6


def test_multibyte_characters_are_never_split(enc):
    text = "Unicorns 🦄, clefs 𝄞, ꙮ, 中文, émigré, 👩‍👩‍👧‍👦 and ﷽."
    assert any(enc.decode([t]) == "\ufffd" for t in enc.encode(text))  # some split across tokens
    events, parser = run(enc, toks(enc, "<|channel|>final<|message|>") + enc.encode(text))
    deltas = [e.text for e in events if isinstance(e, FinalDelta)]
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_tokens_after_the_stop_do_not_crash(enc):
    events, parser = run(
        enc, "<|channel|>final<|message|>A<|return|><|return|>junk<|call|><|start|>assistant"
    )
    assert texts(events, FinalDelta) == "Ajunk"
    check_consistent(events, parser)


def test_parse_reply(enc):
    assert H.parse_reply(toks(enc, "<|channel|>final<|message|>Hi<|return|>"), enc) == [
        H.Message("assistant", "Hi", channel="final")
    ]


# --------------------------------------------------------------------------- fuzzing

SPECIALS = [
    H.START,
    H.END,
    H.MESSAGE,
    H.CHANNEL,
    H.CONSTRAIN,
    H.RETURN,
    H.CALL,
    H.ENDOFTEXT,
    199998,
    200000,
    200009,
    201087,
    201088,
]
BODY_ENDS = (H.END, H.RETURN, H.CALL, H.ENDOFTEXT)
HEADER_WORDS = [
    "assistant",
    " to=functions.f",
    " to=python",
    "analysis",
    "final",
    "commentary",
    " json",
    " code",
    "user",
]


@st.composite
def random_streams(draw):
    ordinary = st.integers(0, H.FIRST_SPECIAL - 1)
    return draw(st.lists(st.one_of(st.sampled_from(SPECIALS), ordinary, ordinary), max_size=80))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tokens=random_streams())
def test_fuzz_random_token_streams(enc, tokens):
    events, parser = run(enc, tokens)
    check_consistent(events, parser)


@st.composite
def worded_streams(draw, enc_tokens):
    """Streams of special tokens, header words and unique marker words ` w000`, ` w001`..."""
    pieces = draw(
        st.lists(
            st.one_of(
                st.sampled_from(SPECIALS[:8]).map(lambda t: ("special", t)),
                st.sampled_from(HEADER_WORDS).map(lambda w: ("word", w)),
                st.just(("marker", None)),
            ),
            max_size=60,
        )
    )
    tokens, content_markers, n, last_special = [], [], 0, None
    first_header: list[str] = []  # markers before any special token: header text so far
    for kind, value in pieces:
        if kind == "special":
            tokens.append(value)
            if last_special is None and value in (H.MESSAGE, *BODY_ENDS):
                content_markers += first_header  # the first header was completed
            last_special = value
        elif kind == "word":
            tokens += enc_tokens(value)
        else:
            marker = f"w{n:03d}"
            n += 1
            tokens += enc_tokens(" " + marker)
            # text in a message body, outside any message, or in a completed first header
            # must survive (a header cut off or abandoned before <|message|> may be lost)
            if last_special is None:
                first_header.append(marker)
            elif last_special in (H.MESSAGE, *BODY_ENDS):
                content_markers.append(marker)
    return tokens, content_markers


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_plain_text_ends_up_somewhere(enc, data):
    tokens, markers = data.draw(worded_streams(enc.encode))
    events, parser = run(enc, tokens)
    check_consistent(events, parser)
    fields = " ".join(
        f"{m.content} {m.channel} {m.recipient} {m.content_type}" for m in parser.messages()
    )
    for marker in markers:
        assert re.search(rf"{marker}(?!\d)", fields), (marker, enc.decode(tokens), fields)


# --------------------------------------------------------------------------- round trip

TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@st.composite
def assistant_messages(draw):
    recipient = draw(
        st.sampled_from([None, None, "functions.get_weather", "python", "browser.search"])
    )
    content_type = None
    if recipient is not None:
        content_type = draw(st.sampled_from([None, "<|constrain|>json", "code", "json"]))
    return H.Message(
        "assistant",
        draw(TEXT),
        channel=draw(st.sampled_from(H.CHANNELS)),
        recipient=recipient,
        content_type=content_type,
    )


@settings(max_examples=300, deadline=None)
@given(messages=st.lists(assistant_messages(), min_size=1, max_size=5))
def test_round_trip_render_then_parse(enc, messages):
    rendered = H.render_messages(messages, enc)
    assert rendered[:2] == [H.START, H.ASSISTANT]
    events, parser = run(enc, rendered[2:])
    assert parser.messages() == messages
    assert not parser.warnings
    check_consistent(events, parser)
    # openai-harmony's own parser reads the same messages from these tokens
    theirs = enc.parse_messages_from_completion_tokens(rendered[2:], oh.Role.ASSISTANT)
    assert [(m.channel, m.recipient, m.content[0].text) for m in theirs] == [
        (m.channel, m.recipient, m.content) for m in messages
    ]
