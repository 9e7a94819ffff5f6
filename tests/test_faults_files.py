"""Fault catalogue, part 2: damaged files of every kind gptoss reads (model config, tokenizer,
index, shards, chats, --tools files) and convert destinations that hold the user's things,
through the real `gptoss` (see tests/faults.py for what each case asserts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .faults import (
    BAD_CKPT,
    BAD_SETTING,
    NO_MODEL,
    Case,
    R,
    Ran,
    chat_file,
    check_case,
    config_edit,
    drop_key,
    good_chat,
    mlx_src,
    model_copy,
    run_all,
    src_and,
    src_copy,
    user_folder,
    with_key,
    write_file,
)

CASES = [
    # damaged model files: bad checkpoint (4), the file or key named
    Case(
        "model-config-list",
        ["run", "-m", "{home}/model", "hi"],
        BAD_CKPT,
        r"JSON list",
        setup=write_file("model/config.json", "[1, 2]", model=True),
    ),
    Case(
        "model-config-not-json",
        ["run", "-m", "{home}/model", "hi"],
        BAD_CKPT,
        r"not valid JSON",
        setup=write_file("model/config.json", "{", model=True),
    ),
    Case(
        "model-config-binary",
        ["run", "-m", "{home}/model", "hi"],
        BAD_CKPT,
        r"config.json",
        setup=write_file("model/config.json", b"\xff\xfe\x00", model=True),
    ),
    Case(
        "model-config-no-hidden-size",
        ["run", "-m", "{home}/model", "hi"],
        BAD_CKPT,
        r"'hidden_size'",
        setup=config_edit(drop_key("hidden_size")),
    ),
    Case(
        "model-config-wrong-type",
        ["run", "-m", "{home}/model", "hi"],
        BAD_CKPT,
        r"'num_hidden_layers'",
        setup=config_edit(with_key("num_hidden_layers", "four")),
    ),
    Case(
        "model-config-rope-list",
        ["info", "{home}/model"],
        BAD_CKPT,
        r"'rope_scaling'",
        setup=config_edit(with_key("rope_scaling", [1])),
    ),
    Case(
        "model-config-negative",
        ["run", "-m", "{home}/model", "hi"],
        BAD_CKPT,
        r"'vocab_size'",
        setup=config_edit(with_key("vocab_size", -1)),
    ),
    Case(
        "model-tokenizer-missing",
        ["run", "-m", "{home}/model", "--show-prompt", "hi"],
        BAD_CKPT,
        r"tokenizer",
        setup=lambda h, t: (model_copy(h, t) / "tokenizer.json").unlink(),
    ),
    Case(
        "model-tokenizer-garbage",
        ["run", "-m", "{home}/model", "--show-prompt", "hi"],
        BAD_CKPT,
        r"tokenizer",
        setup=write_file("model/tokenizer.json", "{}", model=True),
    ),
    Case(
        "convert-index-garbage",
        ["convert", "{home}/src", "{home}/dst"],
        BAD_CKPT,
        r"index",
        setup=src_and(write_file("src/model.safetensors.index.json", "{")),
    ),
    Case(
        "convert-shard-garbage",
        ["convert", "{home}/src", "{home}/dst"],
        BAD_CKPT,
        r"safetensors",
        setup=src_and(write_file("src/model-00001-of-00001.safetensors", b"\x00" * 64)),
    ),
    # convert destinations: nothing of the user's is ever replaced
    Case(
        "convert-dst-is-src",
        ["convert", "{home}/src", "{home}/src", "--force"],
        BAD_SETTING,
        r"DST .* is SRC",
        setup=src_copy,
    ),
    Case(
        "convert-dst-inside-src",
        ["convert", "{home}/src", "{home}/src/out", "--force"],
        BAD_SETTING,
        r"inside SRC",
        setup=src_copy,
    ),
    Case(
        "convert-src-inside-dst",
        ["convert", "{home}/src", "{home}", "--force"],
        BAD_SETTING,
        r"contains SRC",
        setup=src_copy,
    ),
    Case(
        "convert-dst-is-a-file",
        ["convert", "{home}/src", "{home}/f", "--force"],
        BAD_SETTING,
        r"not a directory",
        setup=src_and(write_file("f", "mine")),
    ),
    Case(
        "convert-dst-user-folder",
        ["convert", "{home}/src", "{home}/dst", "--force"],
        BAD_SETTING,
        r"thesis.tex.*not even with --force",
        setup=user_folder,
    ),
    Case(
        "convert-experts-q3",
        ["convert", "{home}/src", "{home}/dst", "--experts", "q3"],
        BAD_SETTING,
        r"--experts",
        setup=src_copy,
    ),
    Case(
        "convert-group-size-7",
        ["convert", "{home}/src", "{home}/dst", "--experts", "q4", "--group-size", "7"],
        BAD_SETTING,
        r"--group-size",
        setup=src_copy,
    ),
    Case(
        "convert-rest-q2",
        ["convert", "{home}/src", "{home}/dst", "--rest", "q2"],
        BAD_SETTING,
        r"--rest",
        setup=src_copy,
    ),
    Case(
        "convert-mlx-source",
        ["convert", "{home}/src", "{home}/dst"],
        BAD_SETTING,
        r"already in MLX format",
        setup=mlx_src,
    ),
    # chats on disk
    Case(
        "chat-latest-damaged",
        ["chat", "--resume"],
        BAD_SETTING,
        r"latest saved chat is damaged.*move",
        setup=chat_file("{"),
    ),
    Case(
        "chat-newer-version",
        ["chat", "--resume", "20260101-000000-abcd"],
        BAD_SETTING,
        r"upgrade",
        setup=chat_file(json.dumps({"format": "gptoss-chat", "version": 99, "messages": []})),
    ),
    Case(
        "chat-unknown-id",
        ["chat", "--resume", "nope"],
        BAD_SETTING,
        r"gptoss chat --list",
        setup=chat_file(good_chat("")),
    ),
    Case(
        "chat-model-gone",
        ["chat", "--resume"],
        NO_MODEL,
        r"which is gone.*-m MODEL",
        setup=chat_file(good_chat("/gone/model")),
    ),
    Case(
        "chat-temperature-inf",
        ["chat", "--resume"],
        BAD_SETTING,
        r"temperature",
        setup=chat_file(good_chat("").replace('"effort": "low"', '"temperature": Infinity')),
    ),
    # --tools files
    Case(
        "tools-missing",
        [*R, "--tools", "{home}/none.json"],
        BAD_SETTING,
        r"cannot read --tools",
        setup=None,
    ),
    Case(
        "tools-not-json",
        [*R, "--tools", "{home}/t.json"],
        BAD_SETTING,
        r"not valid JSON \(line 1",
        setup=write_file("t.json", "[{"),
    ),
    Case(
        "tools-a-number",
        [*R, "--tools", "{home}/t.json"],
        BAD_SETTING,
        r"JSON list",
        setup=write_file("t.json", "42"),
    ),
    Case(
        "tools-no-name",
        [*R, "--tools", "{home}/t.json"],
        BAD_SETTING,
        r'tool 1 has no "name"',
        setup=write_file("t.json", '[{"description": "x"}]'),
    ),
    Case(
        "tools-bad-parameters",
        [*R, "--tools", "{home}/t.json"],
        BAD_SETTING,
        r'"parameters"',
        setup=write_file("t.json", '[{"name": "f", "parameters": 3}]'),
    ),
    Case(
        "tools-not-utf8",
        [*R, "--tools", "{home}/t.json"],
        BAD_SETTING,
        r"UTF-8",
        setup=write_file("t.json", b"\xff\xfe["),
    ),
]


@pytest.fixture(scope="module")
def ran(tiny_checkpoint, tmp_path_factory) -> dict[str, Ran]:
    return run_all(CASES, Path(tiny_checkpoint), tmp_path_factory.mktemp("faults"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(case: Case, ran: dict[str, Ran]) -> None:
    check_case(case, ran[case.id])
