"""The tiny harmony model: greedy decoding reproduces every trained reply, token for token."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import mlx.core as mx
import pytest

from gptoss_mlx import harmony as H
from gptoss_mlx import load_model
from gptoss_mlx.checkpoint.safetensors import ShardedCheckpoint
from scripts import train_tiny_harmony as T

NAMES = [e.name for e in T.EXAMPLES]


@pytest.fixture(scope="module")
def trained(harmony_model: Path):
    model, _ = load_model(harmony_model, dtype="float32")
    enc = H.encoding_for_model(harmony_model)
    examples = json.loads((harmony_model / T.EXAMPLES_FILE).read_text(encoding="utf-8"))
    return model, enc, {e["name"]: e for e in examples["examples"]}


def greedy(model, prompt: list[int], limit: int) -> list[int]:
    """Temperature-0 decoding one token at a time through the KV cache, up to a stop token."""
    cache = model.make_cache()
    logits = model(mx.array([prompt]), cache, last_only=True)
    out: list[int] = []
    while len(out) < limit:
        token = int(mx.argmax(logits[0, -1]).item())
        out.append(token)
        if token in H.STOP_TOKENS:
            break
        logits = model(mx.array([[token]]), cache)
    return out


def conversation(example: dict) -> tuple[list[H.Message], H.PromptOptions]:
    messages = [H.Message.from_dict(m) for m in example["messages"]]
    return messages, H.PromptOptions.from_dict(example["options"])


def test_examples_file_lists_every_example(trained):
    _, _, examples = trained
    assert list(examples) == NAMES
    for e in examples.values():
        assert e["stop_token"] == (H.CALL if e["name"].endswith("_call") else H.RETURN)
        assert e["reply_tokens"][-1] == e["stop_token"]


@pytest.mark.parametrize("name", NAMES)
def test_prompts_are_openai_harmony_renderings(trained, name):
    """The stored prompt is openai-harmony's, and the project's renderer agrees with it."""
    _, enc, examples = trained
    e = examples[name]
    messages, options = conversation(e)
    assert T.render_prompt(enc, messages, options) == e["prompt_tokens"]
    assert H.render_prompt(messages, options, enc) == e["prompt_tokens"]


@pytest.mark.parametrize("name", NAMES)
def test_greedy_decoding_reproduces_the_reply(trained, name):
    model, enc, examples = trained
    e = examples[name]
    expected = e["reply_tokens"]
    got = greedy(model, e["prompt_tokens"], len(expected) + 8)
    assert enc.decode(got) == e["reply_text"]
    assert got == expected
    assert got[-1] == (H.CALL if name.endswith("_call") else H.RETURN)
    parsed = H.parse_reply(got, enc)
    assert [m.to_dict() for m in parsed] == e["reply"]


def test_plain_mlx_path_reproduces_the_long_reply(harmony_model: Path, trained):
    """The same reply without the CPU fast path (the reference MLX path training used)."""
    _, _, examples = trained
    model, _ = load_model(harmony_model, dtype="float32")
    model.set_fast_path(False)
    e = examples["count"]
    assert greedy(model, e["prompt_tokens"], len(e["reply_tokens"]) + 8) == e["reply_tokens"]


@pytest.mark.parametrize("name", ["sum", "tool_call"])
def test_reply_does_not_depend_on_the_system_message(trained, name):
    """What the CLI varies at run time: today's date, the effort, developer instructions."""
    model, enc, examples = trained
    e = examples[name]
    messages, options = conversation(e)
    options.date = datetime.date.today().isoformat()
    options.effort = "high"
    options.instructions = "Answer concisely."
    prompt = H.render_prompt(messages, options, enc)
    assert prompt != e["prompt_tokens"]
    assert greedy(model, prompt, len(e["reply_tokens"]) + 8) == e["reply_tokens"]


def test_layout_matches_the_random_checkpoint(harmony_model, tmp_path):
    """Same tensor names, shapes, dtypes and shards as make_checkpoint's output."""
    from scripts.make_checkpoint import make_checkpoint

    random_dir = make_checkpoint(tmp_path / "random", preset=T.PRESET)
    a, b = ShardedCheckpoint(random_dir), ShardedCheckpoint(harmony_model)
    try:
        assert a.keys() == b.keys()
        assert all(a.info(k) == b.info(k) for k in a)
        for name in ("model.safetensors.index.json", "config.json", "tokenizer.json"):
            assert (random_dir / name).read_bytes() == (harmony_model / name).read_bytes()
    finally:
        a.close()
        b.close()
