"""Train the tiny random gpt-oss checkpoint to speak harmony: the model tests and `make demo` use.

    python scripts/train_tiny_harmony.py OUT [--seed S] [--steps N]

A random-weight model never writes harmony structure, so the chat parser and the CLI would go
untested. This starts from `make_checkpoint(preset="tiny")`, renders a small curriculum of
conversations with openai-harmony (the ground truth for prompts), and trains the non-expert
weights in MLX with the MXFP4 experts frozen, until greedy decoding reproduces every reply token
for token after rounding to bf16, under system messages it was and was not trained on. The result
is written in the exact layout of the starting checkpoint, with `harmony_examples.json` listing
each example, its prompt options and its exact reply.

Only the lm_head rows of tokens that some reply contains are kept; the other rows are zero, so the
full-vocabulary softmax is exact while only the reply vocabulary is computed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import hashlib
import itertools
import json
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
import openai_harmony as oh
from mlx.utils import tree_flatten, tree_unflatten

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gptoss_mlx.checkpoint.layout import interleave_gate_up
from gptoss_mlx.checkpoint.safetensors import (
    ShardedCheckpoint,
    ShardWriter,
    bf16_bits_to_f32,
    f32_to_bf16_bits,
)
from gptoss_mlx.fsutil import atomic_directory, atomic_write_text
from gptoss_mlx.harmony import (
    ASSISTANT,
    CALL,
    END,
    RETURN,
    START,
    Message,
    PromptOptions,
    ToolSpec,
    header_messages,
    load_encoding,
    to_harmony,
    tool_result,
)
from gptoss_mlx.harmony import render_prompt as ours_render_prompt
from gptoss_mlx.harmony.tokenizer import harmony_encodings_dir
from gptoss_mlx.model.gpt_oss import MLP, Model, SwitchLinear
from gptoss_mlx.model.loader import load_model
from scripts.make_checkpoint import PRESETS, make_checkpoint
from scripts.tiny_browser_pages import QUERY, browser_pages, with_port
from scripts.tiny_browser_pages import SOURCES as BROWSER_SOURCES

EXAMPLES_FILE = "harmony_examples.json"
PRESET = "tiny"
MAX_STEPS = 400
LEARNING_RATE = 1.5e-3
EMBED_LR_SCALE = 20.0
WARMUP_STEPS = 10
DECAY_STEPS = 150
FINAL_LR_FRACTION = 0.1
CLIP_NORM = 1.0
# Logit lead of the expected token over every other token, in bf16: enough that incremental
# decoding (different summation order) and bf16 activations pick the same token.
MARGIN = 0.5
PATIENCE = 6  # consecutive all-correct training steps before the full bf16 check

# --------------------------------------------------------------------------- the curriculum

WEATHER_TOOL = ToolSpec(
    "get_weather",
    "Gets the current weather in a city.",
    {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "The city name."}},
        "required": ["city"],
    },
)


def _user(text: str) -> Message:
    return Message("user", text)


def _analysis(text: str) -> Message:
    return Message("assistant", text, channel="analysis")


def _final(text: str) -> Message:
    return Message("assistant", text, channel="final")


_SUM_THOUGHT = "The user asks a simple sum. 2+2=4."
_WEATHER_THOUGHT = "Weather request. Calling get_weather."
_WEATHER_CALL = Message(
    "assistant",
    '{"city":"Paris"}',
    channel="commentary",
    recipient="functions.get_weather",
    content_type="<|constrain|>json",
)


_PY_QUESTION = "what is 6*7"
_PY_THOUGHT = "Arithmetic: ask python."
_PY_CALL = Message(
    "assistant", "print(6*7)", channel="analysis", recipient="python", content_type="code"
)
_PY_REPLY = [_analysis("python printed 42."), _final("6*7 = 42.")]


def python_description(directory: str, timeout: float = 120.0, network: bool = False) -> str:
    """harmony's python text with what our sandboxed tool must say instead (the real timeout,
    directory and network), as gptoss_mlx.tools.python writes it."""
    return (
        "Use this tool to execute Python code in your chain of thought. The code will not be shown"
        " to the user. This tool should be used for internal reasoning, but not for code that is"
        " intended to be visible to the user (e.g. when creating plots, tables, or files).\n\n"
        "When you send a message containing Python code to python, it will be executed in a"
        " stateful Jupyter notebook environment. python will respond with the output of the"
        f" execution or time out after {timeout} seconds. The drive at '{directory}' can be used"
        " to save and persist user files. Internet access for this session is"
        f" {'enabled' if network else 'disabled'}."
    )


def _sample_python(rng: random.Random) -> str:
    root = rng.choice(
        (
            "/Users/me/Library/Application Support",
            "/home/user/.local/share",
            "/root/.local/share",
            f"/tmp/pytest-of-root/pytest-{rng.randrange(100)}/test_{rng.randrange(100)}/data",
            "/private/var/folders/q/data",
        )
    )
    stamp = f"{rng.randrange(2024, 2036)}{rng.randrange(1, 13):02d}{rng.randrange(1, 29):02d}"
    clock = f"{rng.randrange(24):02d}{rng.randrange(60):02d}{rng.randrange(60):02d}"
    chat = f"{stamp}-{clock}-{rng.randrange(16**4):04x}"
    directory = f"{root}/gptoss/python/{chat}"  # gptoss_mlx.tools.python.scratch_dir
    timeout = rng.choice((120.0, 30.0, 60.0, 300.0, 10.0))
    return python_description(directory, timeout, rng.random() < 0.2)


# Stand-ins for the browser's pages, rendered when the curriculum is (scripts/tiny_browser_pages.py).
_RESULTS_PAGE, _OPENED_PAGE = "\x00results\x00", "\x00opened\x00"
_WEB_QUESTION = "Search the web for the gptoss test page."
_WEB_THOUGHT = "Search the web for it."
_WEB_OPEN_THOUGHT = "Open the first result."
_WEB_SEARCH = Message(
    "assistant",
    json.dumps({"query": QUERY}),
    channel="analysis",
    recipient="browser.search",
    content_type="code",
)
_WEB_OPEN = Message(
    "assistant", '{"id": 0}', channel="analysis", recipient="browser.open", content_type="code"
)


def _browser_examples(results: str, page: str) -> list[Example]:
    """Search, open the first result, answer citing lines of the opened page (cursor 1). The
    pages hold `PORT`, filled in per variant."""
    searched = [
        _user(_WEB_QUESTION),
        _analysis(_WEB_THOUGHT),
        _WEB_SEARCH,
        tool_result("browser.search", results, channel="analysis"),
    ]
    opened = [
        *searched,
        _analysis(_WEB_OPEN_THOUGHT),
        _WEB_OPEN,
        tool_result("browser.open", page, channel="analysis"),
    ]
    answer = [
        _analysis("The page is titled Links and lists."),
        _final("The gptoss test page is titled Links and lists【1†L2-L3】."),
    ]
    return [
        Example("browser_search_call", searched[:1], searched[1:3], browser=True),
        Example("browser_open_call", searched, [opened[4], _WEB_OPEN], browser=True),
        Example("browser_answer", opened, answer, browser=True),
    ]


@dataclass
class Example:
    """A conversation (without system and developer messages) and the reply the model must write."""

    name: str
    messages: list[Message]
    reply: list[Message]
    tools: bool = False
    python: bool = False  # the python tool is declared in the system message
    browser: bool = False  # the browser tool is declared in the system message


EXAMPLES: list[Example] = [
    Example("sum", [_user("What is 2+2?")], [_analysis(_SUM_THOUGHT), _final("2 + 2 = 4.")]),
    Example(
        "hello",
        [_user("Say hello.")],
        [_analysis("Greeting requested."), _final("Hello! How can I help you today?")],
    ),
    Example(
        "code",
        [_user("Write a Python function that adds two numbers.")],
        [
            _analysis("One small function suffices."),
            _final("Here it is:\n\n```python\ndef add(a, b):\n    return a + b\n```"),
        ],
    ),
    Example(
        "tool_call",
        [_user("What's the weather in Paris?")],
        [_analysis(_WEATHER_THOUGHT), _WEATHER_CALL],
        tools=True,
    ),
    Example(
        "tool_result",
        [
            _user("What's the weather in Paris?"),
            _analysis(_WEATHER_THOUGHT),
            _WEATHER_CALL,
            tool_result("functions.get_weather", '{"temperature": 21, "sky": "sunny"}'),
        ],
        [_analysis("Tool says 21 degrees, sunny."), _final("It is 21 °C and sunny in Paris.")],
        tools=True,
    ),
    Example(
        "second_turn",
        [
            _user("What is 2+2?"),
            _analysis(_SUM_THOUGHT),
            _final("2 + 2 = 4."),
            _user("Now say it in words."),
        ],
        [_analysis("Spell out the earlier result."), _final("Two plus two is four.")],
    ),
    Example(  # a long answer, for --max-tokens and Ctrl-C tests
        "story",
        [_user("Tell me a story.")],
        [
            _analysis("A very short story."),
            _final(
                "Once upon a time, a tiny model learned to speak harmony. It counted to ten:"
                " 1, 2, 3, 4, 5, 6, 7, 8, 9, 10. The end."
            ),
        ],
    ),
    Example(  # the story cut by Ctrl-C after five tokens, then a new question
        "after_interrupt",
        [_user("Tell me a story."), _final("Once upon a time,"), _user("What is 2+2?")],
        [_analysis(_SUM_THOUGHT), _final("2 + 2 = 4.")],
    ),
    Example(
        "python_call",
        [_user(_PY_QUESTION)],
        [_analysis(_PY_THOUGHT), _PY_CALL],
        python=True,
    ),
    *(
        Example(
            name,
            [
                _user(_PY_QUESTION),
                _analysis(_PY_THOUGHT),
                _PY_CALL,
                tool_result("python", output, channel="analysis"),
            ],
            _PY_REPLY,
            python=True,
        )
        for name, output in (("python_result", "42\n"), ("python_result_bare", "42"))
    ),
    *_browser_examples(_RESULTS_PAGE, _OPENED_PAGE),
    Example(  # the long reply, for --max-tokens and Ctrl-C tests
        "count",
        [_user("Count from 1 to 30.")],
        [_analysis("Just list the numbers."), _final(", ".join(map(str, range(1, 31))) + ".")],
    ),
]

# What varies at run time, and what the reply must not depend on.
CANONICAL_PYTHON = python_description("/home/user/.local/share/gptoss/python/20250628-120000-0a1b")
CANONICAL = {
    "date": "2025-06-28", "effort": "medium", "instructions": None, "python": CANONICAL_PYTHON,
    "port": 40123,
}  # fmt: skip
PORTS = (1024, 65536)  # the stand-in web's port shows in the browser's pages
EFFORTS = ("low", "medium", "high")
TRAIN_DATES = (dt.date(2023, 1, 1), dt.date(2036, 12, 31))
TRAIN_INSTRUCTIONS = (
    "Answer concisely.",
    "You are a helpful assistant.",
    "Always answer in English.",
    "Be precise and friendly.",
    "Use Markdown where it helps.",
)
# Checked after bf16 rounding, hardest first: dates outside the training range or none at all,
# instructions never seen in training, then every effort with and without instructions.
_UNSEEN_DIRS = ("/Volumes/work/chats/a", "/var/tmp/e2e/data/gptoss/python/20261202-101500-beef")
CHECKED = [
    {
        "date": "2041-03-14",
        "effort": "high",
        "instructions": "Keep your answers short.",
        "python": python_description(_UNSEEN_DIRS[0], 45.0, True),
        "port": 59871,
    },
    {
        "date": "2019-10-02",
        "effort": "low",
        "instructions": None,
        "python": python_description(_UNSEEN_DIRS[1], 120.0),
        "port": 33219,
    },
    {
        "date": None,
        "effort": "medium",
        "instructions": "Answer concisely.",
        "python": CANONICAL_PYTHON,
        "port": 8080,
    },
] + [
    {**CANONICAL, "date": date, "effort": effort, "instructions": instructions}
    for date, effort, instructions in itertools.product(
        ("2025-06-28", "2031-11-05"), EFFORTS, (None, "Answer concisely.")
    )
]


def prompt_options(example: Example, variant: dict[str, Any]) -> PromptOptions:
    return PromptOptions(
        effort=variant["effort"],
        date=variant["date"],
        instructions=variant["instructions"],
        tools=[WEATHER_TOOL] if example.tools else [],
        python_tool=example.python,
        python_description=variant["python"] if example.python else None,
        browser_tool=example.browser,
    )


def _sample_variant(rng: random.Random) -> dict[str, Any]:
    first, last = TRAIN_DATES
    date: str | None = None
    if rng.random() >= 0.1:
        date = (first + dt.timedelta(days=rng.randrange((last - first).days + 1))).isoformat()
    instructions = rng.choice(TRAIN_INSTRUCTIONS) if rng.random() < 0.6 else None
    python = _sample_python(rng)
    return {
        "date": date,
        "effort": rng.choice(EFFORTS),
        "instructions": instructions,
        "python": python,
        "port": rng.randrange(*PORTS),
    }


# --------------------------------------------------------------------------- rendering


def render_prompt(
    enc: oh.HarmonyEncoding, messages: Sequence[Message], options: PromptOptions
) -> list[int]:
    """The completion prompt, built and rendered by openai-harmony alone (its default config drops
    the analysis of finished turns). Tool calls in the history are kept as the model wrote them
    (the chat session stores their tokens), so those prompts come from gptoss_mlx's renderer."""
    if any(m.recipient and m.role == "assistant" for m in messages):
        return ours_render_prompt(as_written(enc, messages), options, enc)
    header = header_messages(options)
    conversation = oh.Conversation.from_messages(header + [to_harmony(m) for m in messages])
    return enc.render_conversation_for_completion(conversation, oh.Role.ASSISTANT)


def render_reply(enc: oh.HarmonyEncoding, reply: Sequence[Message]) -> list[int]:
    """What the model writes after `<|start|>assistant`. A tool call names its recipient after the
    channel (`<|channel|>commentary to=functions.x <|constrain|>json`), as gpt-oss writes it;
    openai-harmony renders stored calls with the recipient in the role instead."""
    tokens: list[int] = []
    for i, m in enumerate(reply):
        if i:
            tokens += [START, ASSISTANT]
        header = f"<|channel|>{m.channel}"
        if m.recipient:
            header += f" to={m.recipient}"
        if m.content_type:
            header += f" {m.content_type}"
        body = enc.encode(header + "<|message|>", allowed_special="all")
        body += enc.encode(m.content, disallowed_special=())
        if not m.recipient and body != enc.render(to_harmony(m))[2:-1]:
            raise RuntimeError(f"{m} renders differently in openai-harmony")
        last = i == len(reply) - 1
        tokens += body + [CALL if m.recipient else RETURN if last else END]
    parsed = enc.parse_messages_from_completion_tokens(tokens, oh.Role.ASSISTANT)
    got = [(p.channel, p.recipient, p.content_type, p.content[0].text) for p in parsed]
    want = [(m.channel, m.recipient, m.content_type, m.content) for m in reply]
    if got != want:
        raise RuntimeError(f"openai-harmony parses the reply {want} as {got}")
    return tokens


def as_written(enc: oh.HarmonyEncoding, messages: Sequence[Message]) -> list[Message]:
    """The messages with each tool call's tokens as the model writes them (`Message.tokens`)."""
    return [
        replace(m, tokens=[START, ASSISTANT, *render_reply(enc, [m])])
        if m.recipient and m.role == "assistant"
        else m
        for m in messages
    ]


@dataclass
class Rendered:
    example: Example
    variant: dict[str, Any]
    prompt: list[int]
    reply: list[int]

    @property
    def tokens(self) -> list[int]:
        return self.prompt + self.reply


class Curriculum:
    """Renders (and caches) every example under any system-message variant."""

    def __init__(self, enc: oh.HarmonyEncoding, examples: Sequence[Example] = EXAMPLES) -> None:
        self.enc = enc
        self.pages = dict(zip((_RESULTS_PAGE, _OPENED_PAGE), browser_pages(enc), strict=True))
        self.examples = list(examples)
        self.replies = [render_reply(enc, e.reply) for e in self.examples]
        self._cache: dict[tuple, list[Rendered]] = {}

    def render(self, variant: dict[str, Any]) -> list[Rendered]:
        key = tuple(variant[k] for k in ("date", "effort", "instructions", "python", "port"))
        if key not in self._cache:
            self._cache[key] = [
                Rendered(
                    e,
                    variant,
                    render_prompt(self.enc, self.messages(e, variant), prompt_options(e, variant)),
                    r,
                )
                for e, r in zip(self.examples, self.replies, strict=True)
            ]
        return self._cache[key]

    def messages(self, example: Example, variant: dict[str, Any]) -> list[Message]:
        """The example's conversation with the browser's pages, at the variant's port."""
        return [
            replace(m, content=with_port(self.pages[m.content], variant["port"]))
            if m.content in self.pages
            else m
            for m in example.messages
        ]

    def reply_vocab(self) -> list[int]:
        return sorted({t for r in self.replies for t in r})

    def input_vocab(self) -> list[int]:
        """Tokens whose embeddings are trained: every token training can show the model (tokens
        it never sees keep their random embeddings)."""
        tokens = {t for r in self.render(CANONICAL) for t in r.tokens}
        for effort, instructions in itertools.product(EFFORTS, (None, *TRAIN_INSTRUCTIONS)):
            variant = {**CANONICAL, "date": None, "effort": effort, "instructions": instructions}
            tokens.update(t for r in self.render(variant) for t in r.tokens)
        first, last = TRAIN_DATES
        dates = (first + dt.timedelta(days=d) for d in range((last - first).days + 1))
        tokens.update(self.enc.encode("".join(f"Current date: {d.isoformat()}\n" for d in dates)))
        rng = random.Random(1)
        tokens.update(self.enc.encode("\n".join(_sample_python(rng) for _ in range(200))))
        pages = "\n".join(self.pages.values())
        for port in [rng.randrange(*PORTS) for _ in range(200)]:
            tokens.update(self.enc.encode(with_port(pages, port)))
        return sorted(tokens)


# --------------------------------------------------------------------------- the student model


class _RouteWithoutIndexGrad(MLP):
    # MLX cannot differentiate the top-k indices themselves; gradients still reach the router
    # through the selected logits, exactly as in the reference model.
    def route(self, x: mx.array) -> tuple[mx.array, mx.array]:
        logits = self.router(x)
        idx = mx.stop_gradient(mx.argpartition(logits, kth=-self.k, axis=-1)[..., -self.k :])
        top = mx.take_along_axis(logits, idx, axis=-1)
        return idx, mx.softmax(top.astype(mx.float32), axis=-1).astype(x.dtype)


class _PartlyTrainedEmbedding(nn.Module):
    """The full random table (frozen) with the rows of `rows` trainable: a dense gradient and Adam
    state for 201088 x 128 values would cost more than the rest of a training step."""

    def __init__(self, table: mx.array, rows: Sequence[int]) -> None:
        super().__init__()
        self._table = table
        slot = np.zeros(table.shape[0], dtype=np.int32)
        slot[list(rows)] = np.arange(len(rows), dtype=np.int32)
        member = np.zeros(table.shape[0], dtype=bool)
        member[list(rows)] = True
        self._slot, self._member = mx.array(slot), mx.array(member)
        self.weight = table[mx.array(list(rows))].astype(mx.float32)

    def __call__(self, tokens: mx.array) -> mx.array:
        trained = self.weight[self._slot[tokens]]
        frozen = self._table[tokens].astype(mx.float32)
        return mx.where(self._member[tokens][..., None], trained, frozen)

    def full_table(self, rows: Sequence[int]) -> np.ndarray:
        table = np.array(self._table.astype(mx.float32))
        table[list(rows)] = np.array(self.weight)
        return table


class Student(nn.Module):
    """The gpt-oss model with a compact lm_head over the reply vocabulary; every other lm_head
    row is zero, so its logit is exactly 0 and the full softmax adds n_other * exp(0)."""

    def __init__(self, model: Model, in_vocab: Sequence[int], out_vocab: Sequence[int]) -> None:
        super().__init__()
        self._in_vocab, self._out_vocab = list(in_vocab), list(out_vocab)
        model.set_fast_path(False)  # the C kernels of the CPU fast path have no gradients
        # Train in float32 throughout: for that path the loader keeps dense weights bf16.
        model.apply(lambda a: a.astype(mx.float32) if mx.issubdtype(a.dtype, mx.floating) else a)
        for layer in model.layers:
            layer.mlp.__class__ = _RouteWithoutIndexGrad
        model.model.embed_tokens = _PartlyTrainedEmbedding(
            model.model.embed_tokens.weight, in_vocab
        )
        self.head = model.lm_head.weight[mx.array(self._out_vocab)].astype(mx.float32)
        self.model = model
        self._log_others = math.log(model.config.vocab_size - len(out_vocab))
        self._out_slot = {t: i for i, t in enumerate(self._out_vocab)}
        model.lm_head.freeze()
        for _, m in model.named_modules():
            if isinstance(m, SwitchLinear):
                m.freeze(keys=["weight", "scales"])

    @property
    def in_vocab(self) -> list[int]:
        return self._in_vocab

    @property
    def out_vocab(self) -> list[int]:
        return self._out_vocab

    def out_slot(self, token: int) -> int:
        return self._out_slot[token]

    def logits(self, h: mx.array) -> mx.array:
        return h @ self.head.T

    def full_logsumexp(self, logits: mx.array) -> mx.array:
        others = mx.full((logits.shape[0], 1), self._log_others, dtype=logits.dtype)
        return mx.logsumexp(mx.concatenate([logits, others], axis=-1), axis=-1)


class _PrefixCache:
    """KV cache of a prefix computed once (batch 1) and shared: passes extend it until `seal`,
    after which every row of a batch attends to it without changing it."""

    def __init__(self, keep: int | None) -> None:
        self.keep = keep
        self.keys: mx.array | None = None
        self.values: mx.array | None = None
        self.offset = 0
        self.sealed = False

    @property
    def cached_len(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def fork(self) -> _PrefixCache:
        other = _PrefixCache(self.keep)
        other.keys, other.values, other.offset = self.keys, self.values, self.offset
        return other

    def update_and_fetch(self, k: mx.array, v: mx.array) -> tuple[mx.array, mx.array]:
        new = k.shape[2]
        if self.keys is not None:
            shape = (k.shape[0], *self.keys.shape[1:])
            k = mx.concatenate([mx.broadcast_to(self.keys, shape), k], axis=2)
            v = mx.concatenate([mx.broadcast_to(self.values, shape), v], axis=2)
        if not self.sealed:
            self.offset += new
            start = 0 if self.keep is None else max(0, k.shape[2] - self.keep)
            self.keys, self.values = k[..., start:, :], v[..., start:, :]
        return k, v


@dataclass
class _Batch:
    tokens: mx.array  # [B, L] what follows the group's prefix, right-padded
    positions: mx.array  # [N] rows of the flattened [B * L] hidden states that predict a target
    targets: mx.array  # [N] slots in the compact head
    owners: list[int]  # [N] index of the sequence each target belongs to


@dataclass
class _Group:
    """Sequences sharing a developer message: what they share beyond the common prefix is
    computed once, the rest in batches of similar length (padding costs as much as tokens)."""

    shared: list[int]
    batches: list[_Batch]


@dataclass
class _Plan:
    """One forward pass over many sequences: the common prefix (system message) once, then each
    group's shared tokens once, then the group's batches."""

    prefix: list[int]
    groups: list[_Group]

    @property
    def targets(self) -> mx.array:
        return mx.concatenate([b.targets for g in self.groups for b in g.batches])

    @property
    def owners(self) -> list[int]:
        return [o for g in self.groups for b in g.batches for o in b.owners]


_BATCH_OVERHEAD = 24  # tokens' worth of fixed cost per extra batch


def _split_by_length(lengths: list[int]) -> list[list[int]]:
    """Indices grouped into batches that minimise padded size plus per-batch overhead."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = [0.0] + [math.inf] * len(order)
    cut = [0] * (len(order) + 1)
    for j in range(1, len(order) + 1):
        for i in range(j):
            cost = best[i] + (j - i) * lengths[order[j - 1]] + _BATCH_OVERHEAD
            if cost < best[j]:
                best[j], cut[j] = cost, i
    batches, j = [], len(order)
    while j:
        batches.append(order[cut[j] : j])
        j = cut[j]
    return batches[::-1]


def _shared_len(seqs: Sequence[Rendered]) -> int:
    """Tokens all of `seqs` share, stopping before the first token that predicts a target."""
    first = seqs[0].tokens
    n = 0
    while all(len(s.tokens) > n and s.tokens[n] == first[n] for s in seqs):
        n += 1
    return min(n, *(len(s.prompt) - 1 for s in seqs))


def _plan(student: Student, seqs: Sequence[Rendered]) -> _Plan:
    root = _shared_len(seqs)
    by_developer: dict[tuple[bool, bool], list[int]] = {}
    for i, s in enumerate(seqs):
        by_developer.setdefault((s.example.tools, s.example.python), []).append(i)
    groups = []
    for members in by_developer.values():
        p = _shared_len([seqs[i] for i in members])
        batches = []
        for part in _split_by_length([len(seqs[i].tokens) - p for i in members]):
            width = max(len(seqs[members[b]].tokens) for b in part) - p
            rest = np.zeros((len(part), width), dtype=np.int32)
            positions, targets, owners = [], [], []
            for row, b in enumerate(part):
                i = members[b]
                t = seqs[i].tokens
                rest[row, : len(t) - p] = t[p:]
                for pos in range(len(seqs[i].prompt), len(t)):
                    positions.append(row * width + pos - 1 - p)
                    targets.append(student.out_slot(t[pos]))
                    owners.append(i)
            batches.append(_Batch(mx.array(rest), mx.array(positions), mx.array(targets), owners))
        groups.append(_Group(seqs[members[0]].tokens[root:p], batches))
    return _Plan(seqs[0].tokens[:root], groups)


def _target_hidden(student: Student, plan: _Plan) -> mx.array:
    model = student.model
    window = model.config.sliding_window
    root = [
        _PrefixCache(window - 1 if kind == "sliding_attention" else None)
        for kind in model.config.layer_types
    ]
    if plan.prefix:
        model.hidden(mx.array([plan.prefix]), root)
    out = []
    for g in plan.groups:
        cache = [c.fork() for c in root]
        if g.shared:
            model.hidden(mx.array([g.shared]), cache)
        for c in cache:
            c.sealed = True
        for b in g.batches:
            h = model.hidden(b.tokens, cache if cache[0].offset else None)
            out.append(h.reshape(-1, h.shape[-1])[b.positions])
    return mx.concatenate(out, axis=0)


def _scores(student: Student, plan: _Plan) -> tuple[mx.array, mx.array]:
    """Cross-entropy over the full vocabulary, and the lead of each target over every other token."""
    logits = student.logits(_target_hidden(student, plan))
    targets = plan.targets
    picked = mx.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
    ce = student.full_logsumexp(logits) - picked
    onehot = mx.arange(logits.shape[-1])[None, :] == targets[:, None]
    rival = mx.maximum(mx.where(onehot, -mx.inf, logits).max(axis=-1), 0.0)  # 0: the zero rows
    return ce, mx.stop_gradient(picked - rival)


def _loss(student: Student, plan: _Plan) -> tuple[mx.array, mx.array]:
    ce, margins = _scores(student, plan)
    return ce.mean(), margins


# --------------------------------------------------------------------------- training


def _trainable(student: Student) -> list[tuple[str, mx.array]]:
    return tree_flatten(student.trainable_parameters())


def _round_bf16(a: mx.array) -> mx.array:
    return mx.array(bf16_bits_to_f32(f32_to_bf16_bits(np.array(a, dtype=np.float32))))


def _failures(
    student: Student, curriculum: Curriculum, variants: Iterable[dict[str, Any]]
) -> tuple[list[str], float]:
    """Examples whose reply is not the greedy choice by MARGIN at every position, with the weights
    as they are (stops at the first failing variant); and the smallest lead of an expected token."""
    lowest = math.inf
    for variant in variants:
        seqs = curriculum.render(variant)
        plan = _plan(student, seqs)
        _, margins = _scores(student, plan)
        margins_np = np.array(margins)
        lowest = min(lowest, float(margins_np.min()))
        bad = sorted({plan.owners[i] for i in np.flatnonzero(margins_np < MARGIN)})
        if bad:
            return [f"{seqs[i].example.name} under {variant}" for i in bad], lowest
    return [], lowest


def _check_rounded(
    student: Student, curriculum: Curriculum, variants: Sequence[dict[str, Any]]
) -> tuple[list[str], float, list[tuple[str, mx.array]]]:
    """Round the trained weights to bf16 and check them; the float32 weights are put back."""
    exact = _trainable(student)
    rounded = [(k, _round_bf16(v)) for k, v in exact]
    student.update(_unflatten(rounded))
    try:
        failures, lowest = _failures(student, curriculum, variants)
    finally:
        student.update(_unflatten(exact))
    return failures, lowest, rounded


def _unflatten(items: list[tuple[str, mx.array]]) -> dict:
    return tree_unflatten(items)


def _check_gradients_reach_the_prompt(student: Student, plan: _Plan, grads: dict) -> None:
    """Fail loudly if some model path stops gradients (as non-MLX kernels would): the reply
    must then be learnt from the reply tokens alone, and training stalls instead."""
    later = {int(t) for g in plan.groups for b in g.batches for t in np.array(b.tokens).flat}
    only_prefix = [t for t in set(plan.prefix) - later if t in student.in_vocab]
    rows = [student.in_vocab.index(t) for t in only_prefix]
    grad = np.array(grads["model"]["model"]["embed_tokens"]["weight"])[rows]
    if not np.abs(grad).any():
        raise RuntimeError("no gradient reaches the prompt's embeddings; is a non-MLX path on?")


@dataclass
class TrainResult:
    weights: list[tuple[str, mx.array]]  # the trainable parameters, bf16-rounded, as verified
    steps: int
    loss: float
    margin: float
    seconds: float


def train(
    student: Student,
    curriculum: Curriculum,
    seed: int = 0,
    steps: int | None = None,
    log: Any = print,
) -> TrainResult:
    """AdamW on the non-expert weights until the bf16-rounded model passes every check."""
    rng = random.Random(seed)
    mx.random.seed(seed)
    max_steps = steps or MAX_STEPS

    def schedule(scale: float) -> Any:
        def lr(step: mx.array) -> mx.array:
            warm = mx.minimum(1.0, (step + 1) / WARMUP_STEPS)
            t = mx.minimum(step, DECAY_STEPS) / DECAY_STEPS
            decay = FINAL_LR_FRACTION + (1 - FINAL_LR_FRACTION) * 0.5 * (1 + mx.cos(math.pi * t))
            return scale * LEARNING_RATE * warm * decay

        return lr

    # Embedding rows start at unit scale, ~10x the projections' weights: larger steps for them.
    opt = optim.MultiOptimizer(
        [
            optim.AdamW(schedule(EMBED_LR_SCALE), weight_decay=0.0),
            optim.AdamW(schedule(1.0), weight_decay=0.01),
        ],
        [lambda path, _: path.startswith("model.model.embed_tokens")],
    )
    step_fn = nn.value_and_grad(student, _loss)
    start = time.perf_counter()
    streak, loss_value = 0, math.inf
    for step in range(1, max_steps + 1):
        plan = _plan(student, curriculum.render(_sample_variant(rng)))
        (loss, margins), grads = step_fn(student, plan)
        if step == 1:
            _check_gradients_reach_the_prompt(student, plan, grads)
        grads, _ = optim.clip_grad_norm(grads, CLIP_NORM)
        opt.update(student, grads)
        mx.eval(student.trainable_parameters(), opt.state, loss, margins)
        loss_value = loss.item()
        streak = streak + 1 if margins.min().item() >= MARGIN else 0
        if step % 10 == 0:
            worst = int(mx.argmin(margins).item())
            name = curriculum.examples[plan.owners[worst]].name
            log(
                f"step {step}: loss {loss_value:.4f}, lowest lead {margins.min().item():.2f} ({name})"
            )
        if streak >= PATIENCE:
            failures, lowest, rounded = _check_rounded(student, curriculum, CHECKED)
            log(
                f"step {step}: bf16 check: {failures[0] if failures else 'all pass'} (lead {lowest:.2f})"
            )
            if not failures:
                return TrainResult(rounded, step, loss_value, lowest, time.perf_counter() - start)
            streak = 0
    raise RuntimeError(
        f"the model did not learn its replies in {max_steps} steps (loss {loss_value:.4f})"
    )


# --------------------------------------------------------------------------- writing


def _hf_tensors(student: Student, weights: list[tuple[str, mx.array]]) -> dict[str, np.ndarray]:
    """The trained tensors under their Hugging Face names (float32; experts' blocks excluded)."""
    student.update(_unflatten(weights))
    model = student.model
    params = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    out: dict[str, np.ndarray] = {}
    for name, value in params.items():
        if name.endswith((".weight", ".scales")) and ".mlp.experts." in name:
            continue  # frozen MXFP4: copied byte for byte from the starting checkpoint
        if name.endswith(("gate_proj.bias", "up_proj.bias")):
            continue
        if name.endswith("down_proj.bias"):
            out[name.replace("down_proj.bias", "down_proj_bias")] = value
            continue
        out[name] = value
    for i in range(len(model.layers)):
        p = f"model.layers.{i}.mlp.experts."
        gate, up = params[p + "gate_proj.bias"], params[p + "up_proj.bias"]
        out[p + "gate_up_proj_bias"] = interleave_gate_up(
            np.asarray(gate, dtype=np.float32), np.asarray(up, dtype=np.float32), axis=-1
        )
    embed = model.model.embed_tokens
    out["model.embed_tokens.weight"] = embed.full_table(student.in_vocab)
    head = np.zeros((model.config.vocab_size, model.config.hidden_size), dtype=np.float32)
    head[student.out_vocab] = np.array(student.head)
    out["lm_head.weight"] = head
    return out


def _write_like(template: Path, out: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write `tensors` with the names, dtypes, order and shards of the checkpoint `template`."""
    source = ShardedCheckpoint(template)
    shards = sorted(source.files)
    metadata = source.files[shards[0]].metadata
    writer = ShardWriter(
        out, PRESETS[PRESET]["max_shard_bytes"], metadata=metadata, zero_based=True
    )
    with writer:
        for fname in shards:
            shard = source.files[fname]
            for name in shard.keys():  # noqa: SIM118 - a list, in file order
                info = shard.info(name)
                if name not in tensors:  # the frozen experts
                    writer.add(name, shard.get_numpy(name), info.dtype)
                    continue
                value = tensors[name]
                if info.dtype != "BF16" or value.shape != info.shape:
                    raise RuntimeError(f"{name}: trained {value.shape}, checkpoint {info}")
                writer.add(name, f32_to_bf16_bits(value), "BF16")
    source.close()
    for f in sorted(template.iterdir()):  # config, generation config and tokenizer files
        weights = f.name.endswith(".safetensors") or f.name == "model.safetensors.index.json"
        if f.is_file() and not f.name.startswith(".") and not weights:
            shutil.copyfile(f, out / f.name)
    a = json.loads((template / "model.safetensors.index.json").read_text())
    b = json.loads((out / "model.safetensors.index.json").read_text())
    if a != b:
        raise RuntimeError("the trained checkpoint's shards differ from the starting checkpoint's")


def _examples_json(curriculum: Curriculum, result: TrainResult, seed: int) -> dict[str, Any]:
    enc = curriculum.enc
    examples = []
    for r in curriculum.render(CANONICAL):
        e = r.example
        final = next((m.content for m in e.reply if m.channel == "final"), None)
        calls = [m for m in e.reply if m.recipient]
        examples.append(
            {
                "name": e.name,
                "messages": [
                    m.to_dict() for m in as_written(enc, curriculum.messages(e, CANONICAL))
                ],
                "options": prompt_options(e, CANONICAL).to_dict(),
                "prompt_tokens": r.prompt,
                "reply": [m.to_dict() for m in e.reply],
                "reply_text": enc.decode(r.reply),
                "reply_tokens": r.reply,
                "final": final,
                "tool_call": (
                    {"recipient": calls[0].recipient, "arguments": calls[0].content}
                    if calls
                    else None
                ),
                "stop_token": r.reply[-1],
            }
        )
    return {
        "description": "Replies the tiny harmony model writes with greedy decoding (temperature 0).",
        "seed": seed,
        "steps": result.steps,
        "final_loss": round(result.loss, 6),
        "lowest_lead": round(result.margin, 3),
        "canonical_options": CANONICAL,
        "checked_options": CHECKED,
        "examples": examples,
    }


def train_harmony_model(
    out_dir: Path | str, seed: int = 0, steps: int | None = None, log: Any = print
) -> Path:
    """Train the tiny harmony model and write it to `out_dir` (replaced atomically)."""
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="gptoss-harmony-") as tmp:
        template = make_checkpoint(Path(tmp) / "random", preset=PRESET, seed=seed)
        enc = load_encoding(harmony_encodings_dir(template))
        curriculum = Curriculum(enc)
        model = load_model(template, dtype="float32")
        student = Student(model, curriculum.input_vocab(), curriculum.reply_vocab())
        result = train(student, curriculum, seed=seed, steps=steps, log=log)
        log(
            f"trained in {result.steps} steps, {result.seconds:.1f} s: loss {result.loss:.4f}, "
            f"lowest lead {result.margin:.2f}"
        )
        tensors = _hf_tensors(student, result.weights)
        with atomic_directory(out_dir, force=True) as staging:
            _write_like(template, staging, tensors)
            _check_written(staging, tensors)
            atomic_write_text(
                staging / EXAMPLES_FILE,
                json.dumps(_examples_json(curriculum, result, seed), indent=2, ensure_ascii=False)
                + "\n",
            )
    return out_dir


def _check_written(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """The written checkpoint loads, and holds exactly the weights that passed the checks."""
    from gptoss_mlx.checkpoint.layout import hf_to_mlx

    model = load_model(path, dtype="float32")
    params = dict(tree_flatten(model.parameters()))
    for hf_name, value in tensors.items():
        for name, expected in hf_to_mlx(hf_name, value):
            got = np.array(params[name].astype(mx.float32))
            if not np.array_equal(got, expected):
                raise RuntimeError(f"{name} did not survive the round trip through {path}")


# --------------------------------------------------------------------------- cache


# The generator and its dependencies (as tests/conftest.py hashes them) and this trainer.
_SOURCES = (
    "scripts/make_checkpoint.py",
    "gptoss_mlx/checkpoint/safetensors.py",
    "gptoss_mlx/checkpoint/mxfp4.py",
    "gptoss_mlx/harmony/tokenizer.py",
    "scripts/train_tiny_harmony.py",
    *BROWSER_SOURCES,
)


def source_hash() -> str:
    """Identifies the model this code builds."""
    repo = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for rel in _SOURCES:
        digest.update((repo / rel).read_bytes())
    return digest.hexdigest()[:16]


def cached_harmony_model(cache_root: Path | str, log: Any = print) -> Path:
    """The trained model under `cache_root/harmony-<source hash>`, built on first use (one
    builder at a time, others wait). `harmony-<hash>.done` beside it marks a finished build;
    the folder itself is never written to afterwards."""
    cache_root = Path(cache_root)
    path = cache_root / f"harmony-{source_hash()}"
    done = cache_root / f"harmony-{source_hash()}.done"
    if done.is_file():
        return path
    cache_root.mkdir(parents=True, exist_ok=True)
    with open(cache_root / "harmony.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.is_file():
            train_harmony_model(path, log=log)
            harmony_encodings_dir(path)  # checks the tokenizer, fills the user cache
            done.touch()
            # Older builds go once no concurrent run can still be using them.
            for old in cache_root.glob("harmony-*"):
                if old not in (path, done) and time.time() - old.stat().st_mtime > 3600:
                    shutil.rmtree(old, ignore_errors=True)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder to write (replaced if it exists)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--steps", type=int, default=None, help=f"most training steps (default {MAX_STEPS})"
    )
    args = ap.parse_args(argv)
    start = time.perf_counter()
    out = train_harmony_model(args.out, seed=args.seed, steps=args.steps)
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
