"""The harmony chat format: conversations, prompt rendering and reply parsing for gpt-oss.

The engine below knows token ids only; the CLI above works with `Message` objects and parser
events. Rendering is delegated to openai-harmony so prompts are token-exact with it; the one
deliberate difference is the chain-of-thought rule (`visible_messages`).
"""

from __future__ import annotations

from .messages import (  # noqa: F401
    CHANNELS,
    EFFORTS,
    KNOWLEDGE_CUTOFF,
    ROLES,
    Conversation,
    Message,
    PromptOptions,
    ToolSpec,
    tool_result,
)
from .parser import (  # noqa: F401
    CommentaryDelta,
    Event,
    FinalDelta,
    MessageEnd,
    ReasoningDelta,
    ReplyParser,
    ToolCall,
    parse_reply,
)
from .render import (  # noqa: F401
    common_prefix_len,
    encoding_for_model,
    header_messages,
    history_prefix,
    load_encoding,
    render_history,
    render_messages,
    render_prompt,
    to_harmony,
    visible_messages,
)
from .tokens import (  # noqa: F401
    ASSISTANT,
    CALL,
    CHANNEL,
    CONSTRAIN,
    END,
    ENDOFTEXT,
    FIRST_SPECIAL,
    MESSAGE,
    RETURN,
    START,
    STOP_TOKENS,
)
