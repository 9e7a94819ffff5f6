"""Harmony's special token ids: the one table the parser, the tokenizer and the renderer use."""

from __future__ import annotations

# Formatting tokens of the o200k_harmony vocabulary.
RETURN = 200002
CONSTRAIN = 200003
CHANNEL = 200005
START = 200006
END = 200007
MESSAGE = 200008
CALL = 200012
ENDOFTEXT = 199999
ASSISTANT = 173781  # "assistant" is a single ordinary token
FIRST_SPECIAL = 199998  # ids below this are ordinary text tokens
STARTOFTEXT = 199998
ENDOFPROMPT = 200018

# Every named special token; the other ids from FIRST_SPECIAL on are `<|reserved_N|>`.
NAMED_SPECIALS = {
    "<|startoftext|>": STARTOFTEXT,
    "<|endoftext|>": ENDOFTEXT,
    "<|return|>": RETURN,
    "<|constrain|>": CONSTRAIN,
    "<|channel|>": CHANNEL,
    "<|start|>": START,
    "<|end|>": END,
    "<|message|>": MESSAGE,
    "<|call|>": CALL,
    "<|endofprompt|>": ENDOFPROMPT,
}

# The engine stops sampling on these. `<|end|>` is NOT a stop: it closes one message and the
# model goes on with the next (typically the final answer after the analysis).
STOP_TOKENS = (RETURN, CALL)
