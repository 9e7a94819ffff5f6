"""Prompt rendering through openai-harmony (token-exact), offline vocabulary loading, and the
chain-of-thought rule (`visible_messages`)."""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import openai_harmony as oh

from ..errors import UserError
from .messages import Message, PromptOptions
from .tokens import ASSISTANT, START

_EFFORT = {
    "low": oh.ReasoningEffort.LOW,
    "medium": oh.ReasoningEffort.MEDIUM,
    "high": oh.ReasoningEffort.HIGH,
}
_NO_AUTO_DROP = oh.RenderConversationConfig(auto_drop_analysis=False)

# --------------------------------------------------------------------------- encoding

_VOCAB_FILE = "o200k_base.tiktoken"
_ENCODINGS_VAR = "TIKTOKEN_ENCODINGS_BASE"
_encodings: dict[Path, oh.HarmonyEncoding] = {}
_encodings_lock = threading.Lock()


def load_encoding(encodings_dir: Path) -> oh.HarmonyEncoding:
    """The gpt-oss harmony encoding, read from `encodings_dir/o200k_base.tiktoken`; cached per dir.

    openai-harmony otherwise downloads the vocabulary at first use. It reads a local copy from the
    folder named by TIKTOKEN_ENCODINGS_BASE (undocumented, openai/harmony#95; the file's SHA-256
    must match o200k_base's), so the variable is set for the load only and restored after.
    """
    directory = Path(encodings_dir).expanduser().resolve()
    with _encodings_lock:
        cached = _encodings.get(directory)
        if cached is not None:
            return cached
        if not (directory / _VOCAB_FILE).is_file():
            raise UserError(f"the harmony vocabulary {directory / _VOCAB_FILE} is missing")
        saved = os.environ.get(_ENCODINGS_VAR)
        os.environ[_ENCODINGS_VAR] = str(directory)
        try:
            encoding = oh.load_harmony_encoding(oh.HarmonyEncodingName.HARMONY_GPT_OSS)
        except oh.HarmonyError as err:
            raise UserError(
                f"cannot load the harmony vocabulary {directory / _VOCAB_FILE}: {err}"
            ) from err
        finally:
            if saved is None:
                os.environ.pop(_ENCODINGS_VAR, None)
            else:
                os.environ[_ENCODINGS_VAR] = saved
        _encodings[directory] = encoding
        return encoding


def encoding_for_model(model_dir: Path) -> oh.HarmonyEncoding:
    """The harmony encoding built from the model's own tokenizer files (no network)."""
    import tempfile

    from .tokenizer import TIKTOKEN_FILE, CacheNotWritable, harmony_encodings_dir

    try:
        return load_encoding(harmony_encodings_dir(Path(model_dir)))
    except CacheNotWritable as e:
        # A read-only cache dir costs a re-derivation at each start, not the run: openai-harmony
        # reads the file while loading, so a temporary folder is enough.
        with tempfile.TemporaryDirectory(prefix="gptoss-encodings-") as tmp:
            (Path(tmp) / TIKTOKEN_FILE).write_bytes(e.content)
            return load_encoding(Path(tmp))


# --------------------------------------------------------------------------- rendering


def visible_messages(messages: Sequence[Message]) -> list[Message]:
    """The messages a prompt shows: chain of thought survives only in the open turn.

    A turn is the messages after a user message. Analysis-channel messages (reasoning, and
    built-in tool calls and results on that channel) are kept only in the last turn and only
    while it has no final answer (it is still calling tools). A turn that has a final answer,
    or that was interrupted by a newer user message, loses all of its analysis. openai-harmony
    0.0.8's auto_drop_analysis only drops analysis before the conversation's first final
    message, so it would leak the reasoning of every later turn into the prompt.
    """
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    open_turn = messages[last_user + 1 :]
    turn_is_open = not any(m.role == "assistant" and m.channel == "final" for m in open_turn)
    return [
        m
        for i, m in enumerate(messages)
        if m.channel != "analysis" or (turn_is_open and i > last_user)
    ]


def to_harmony(message: Message) -> oh.Message:
    """The openai-harmony message for one of ours."""
    return oh.Message(
        author=oh.Author(role=oh.Role(message.role), name=message.name),
        content=[oh.TextContent(text=message.content)],
        channel=message.channel,
        recipient=message.recipient,
        content_type=message.content_type,
    )


def header_messages(options: PromptOptions) -> list[oh.Message]:
    """The system message and, with instructions or tools, the developer message."""
    system = (
        oh.SystemContent.new()
        .with_reasoning_effort(_EFFORT[options.effort])
        .with_knowledge_cutoff(options.knowledge_cutoff)
    )
    if options.date:
        system = system.with_conversation_start_date(options.date)
    if options.browser_tool:
        system = system.with_browser_tool()
    if options.python_tool and options.python_description is not None:
        system = system.with_tools(
            oh.ToolNamespaceConfig(name="python", description=options.python_description, tools=[])
        )
    elif options.python_tool:
        system = system.with_python_tool()
    out = [oh.Message.from_role_and_content(oh.Role.SYSTEM, system)]
    if options.instructions or options.tools:
        developer = oh.DeveloperContent.new()
        if options.instructions:
            developer = developer.with_instructions(options.instructions)
        if options.tools:
            developer = developer.with_function_tools(
                [oh.ToolDescription.new(t.name, t.description, t.parameters) for t in options.tools]
            )
        out.append(oh.Message.from_role_and_content(oh.Role.DEVELOPER, developer))
    return out


def _harmony_conversation(messages: Sequence[Message], options: PromptOptions) -> oh.Conversation:
    shown = [to_harmony(m) for m in visible_messages(messages)]
    return oh.Conversation.from_messages(header_messages(options) + shown)


def render_prompt(
    messages: Sequence[Message], options: PromptOptions, encoding: oh.HarmonyEncoding
) -> list[int]:
    """The completion prompt for the next assistant reply; ends with `<|start|>assistant`.

    Token-exact with openai-harmony's render_conversation_for_completion of the system and
    developer messages built from `options` followed by `visible_messages(messages)`.
    Stored assistant messages end in `<|end|>` (or `<|call|>` for tool calls), never
    `<|return|>`.
    """
    if any(m.tokens for m in messages):
        return [*render_history(messages, options, encoding), START, ASSISTANT]
    conversation = _harmony_conversation(messages, options)
    return encoding.render_conversation_for_completion(
        conversation, oh.Role.ASSISTANT, _NO_AUTO_DROP
    )


def render_history(
    messages: Sequence[Message], options: PromptOptions, encoding: oh.HarmonyEncoding
) -> list[int]:
    """`render_prompt` without the trailing `<|start|>assistant`."""
    if not any(m.tokens for m in messages):
        return encoding.render_conversation(_harmony_conversation(messages, options), _NO_AUTO_DROP)
    # Message by message (the same tokens as one conversation), generated calls verbatim.
    header = oh.Conversation.from_messages(header_messages(options))
    out = encoding.render_conversation(header, _NO_AUTO_DROP)
    render_options = oh.RenderOptions(conversation_has_function_tools=bool(options.tools))
    for m in visible_messages(messages):
        out.extend(m.tokens if m.tokens else encoding.render(to_harmony(m), render_options))
    return out


def render_messages(messages: Sequence[Message], encoding: oh.HarmonyEncoding) -> list[int]:
    """The messages exactly as given (no system header, nothing dropped), token-exact."""
    conversation = oh.Conversation.from_messages([to_harmony(m) for m in messages])
    return encoding.render_conversation(conversation, _NO_AUTO_DROP)


def history_prefix(
    messages: Sequence[Message], options: PromptOptions, encoding: oh.HarmonyEncoding
) -> list[int]:
    """The tokens up to the end of the last user message: a prefix of this prompt and of every
    later one in the conversation, so a KV cache holding them can always be reused.

    Everything after it (the open turn) may change: its analysis is dropped once the turn ends.
    The first prompt of a turn is `history_prefix + [START, ASSISTANT]`.
    """
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    return render_history(messages[: last_user + 1], options, encoding)


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share (cached tokens vs. a new prompt)."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n
