"""Fault catalogue, part 1: what a user types. Usage errors, hostile values for every setting
(flags, GPTOSS_* variables, the config file), and stdin, through the real `gptoss` (see
tests/faults.py for what each case asserts; part 2, damaged files, is test_faults_files.py;
signals, disks and concurrency are in test_faults_io.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .faults import (
    BAD_FLAG,
    BAD_SETTING,
    NO_MODEL,
    Case,
    R,
    Ran,
    check_case,
    model_copy,
    run_all,
    write_file,
)

CASES = [
    # usage: click's message as one line, exit 2
    Case("unknown-command", ["frobnicate"], BAD_FLAG, r"No such command 'frobnicate'.*--help"),
    Case("unknown-flag", ["run", "--bogus", "x"], BAD_FLAG, r"No such option: --bogus"),
    Case("missing-argument", ["convert"], BAD_FLAG, r"Missing argument"),
    Case("seed-not-a-number", ["run", "--seed", "abc", "x"], BAD_FLAG, r"'--seed'"),
    Case("temperature-not-a-number", ["run", "-t", "warm", "x"], BAD_FLAG, r"'--temperature'"),
    Case(
        "info-context-not-a-number",
        ["info", "-c", "many"],
        BAD_FLAG,
        r"'-c' / '--context'|--context",
    ),
    # hostile flag values: checked before the model loads, the flag named
    Case("temperature-nan", [*R, "-t", "nan"], BAD_SETTING, r"temperature.*nan.*--temperature"),
    Case("temperature-inf", [*R, "-t", "inf"], BAD_SETTING, r"temperature.*inf.*--temperature"),
    Case("temperature-negative", [*R, "-t", "-1"], BAD_SETTING, r"temperature.*--temperature"),
    Case("top-p-zero", [*R, "--top-p", "0"], BAD_SETTING, r"top-p.*--top-p"),
    Case("top-p-nan", [*R, "--top-p", "nan"], BAD_SETTING, r"top-p.*--top-p"),
    Case("min-p-one", [*R, "--min-p", "1"], BAD_SETTING, r"min-p.*--min-p"),
    Case("top-k-negative", [*R, "--top-k", "-5"], BAD_SETTING, r"top-k.*--top-k"),
    Case("top-k-huge", [*R, "--top-k", "9" * 30], BAD_SETTING, r"top-k.*--top-k"),
    Case("seed-negative", [*R, "--seed", "-1"], BAD_SETTING, r"seed.*2\^64-1.*--seed"),
    Case("seed-2-64", [*R, "--seed", str(2**64)], BAD_SETTING, r"seed.*--seed"),
    Case("max-tokens-zero", [*R, "-n", "0"], BAD_SETTING, r"max-tokens.*--max-tokens"),
    Case("context-tiny", [*R, "-c", "8"], BAD_SETTING, r"context.*--context"),
    Case("context-huge", [*R, "-c", "10000000"], BAD_SETTING, r"context.*--context"),
    Case("effort-unknown", [*R, "--effort", "extreme"], BAD_SETTING, r"effort.*--effort"),
    Case("dtype-unknown", [*R, "--dtype", "int8"], BAD_SETTING, r"dtype.*--dtype"),
    Case("model-empty", [*R, "-m", " "], BAD_SETTING, r"model is empty.*--model"),
    Case("model-missing", [*R, "-m", "/nonexistent/model"], NO_MODEL, r"/nonexistent/model"),
    Case("chat-reasoning-unknown", ["chat", "--reasoning", "loud"], BAD_SETTING, r"--reasoning"),
    Case("chat-id-without-resume", ["chat", "abc"], BAD_SETTING, r"gptoss chat --resume abc"),
    Case("info-context-zero", ["info", "-c", "0"], BAD_SETTING, r"--context"),
    Case(
        "info-missing-model", ["info", "/nonexistent"], NO_MODEL, r"does not exist.*gptoss models"
    ),
    Case("rm-missing-model", ["rm", "nothing-here", "--yes"], NO_MODEL, r"gptoss models"),
    Case("download-not-a-repo", ["download", "../../etc"], BAD_SETTING, r"repo id"),
    Case(
        "download-unreachable-hub",
        ["download", "openai/gpt-oss-20b", "--revision", "../x"],
        8,
        r".",
        env={"HF_ENDPOINT": "http://127.0.0.1:9"},
    ),
    Case(
        "download-offline-missing",
        ["download", "20b"],
        8,
        r"HF_HUB_OFFLINE",
        env={"HF_HUB_OFFLINE": "1"},
    ),
    # hostile environment variables: the variable named
    Case(
        "env-temperature-nan",
        R,
        BAD_SETTING,
        r"GPTOSS_TEMPERATURE",
        env={"GPTOSS_TEMPERATURE": "nan"},
    ),
    Case("env-seed-negative", R, BAD_SETTING, r"GPTOSS_SEED", env={"GPTOSS_SEED": "-3"}),
    Case(
        "env-context-text",
        R,
        BAD_SETTING,
        r"GPTOSS_CONTEXT.*whole number",
        env={"GPTOSS_CONTEXT": "lots"},
    ),
    Case(
        "env-max-tokens-float",
        R,
        BAD_SETTING,
        r"GPTOSS_MAX_TOKENS",
        env={"GPTOSS_MAX_TOKENS": "1e9"},
    ),
    Case("env-top-p-inf", R, BAD_SETTING, r"GPTOSS_TOP_P", env={"GPTOSS_TOP_P": "inf"}),
    Case("env-yes-maybe", R, BAD_SETTING, r"GPTOSS_YES.*yes or no", env={"GPTOSS_YES": "maybe"}),
    Case("env-effort-max", R, BAD_SETTING, r"GPTOSS_EFFORT", env={"GPTOSS_EFFORT": "max"}),
    Case("env-model-missing", ["run", "hi"], NO_MODEL, r"/nope", env={"GPTOSS_MODEL": "/nope"}),
    Case(
        "env-config-is-a-folder",
        R,
        BAD_SETTING,
        r"cannot read config file",
        env={"GPTOSS_CONFIG": "{home}"},
    ),
    Case(
        "env-home-is-a-file",  # nothing to list, and no crash
        ["models"],
        0,
        None,
        env={"GPTOSS_HOME": "{home}/file"},
        setup=write_file("file", "not a folder"),
    ),
    Case(
        "env-cache-is-a-file",  # the vocabulary is derived into a temporary folder
        ["run", "-m", "{home}/model", "--show-prompt", "hi"],
        0,
        None,
        env={"XDG_CACHE_HOME": "{home}/file"},
        setup=lambda h, t: (model_copy(h, t), write_file("file", "x")(h, t)),
    ),
    # damaged config file: the file and the key named
    Case(
        "config-not-toml",
        R,
        BAD_SETTING,
        r"config file",
        setup=write_file("config/gptoss/config.toml", "temperature = = 1"),
    ),
    Case(
        "config-unknown-key",
        R,
        BAD_SETTING,
        r"unknown key.*colour",
        setup=write_file("config/gptoss/config.toml", 'colour = "red"\n'),
    ),
    Case(
        "config-temperature-nan",
        R,
        BAD_SETTING,
        r"key temperature in .*config.toml",
        setup=write_file("config/gptoss/config.toml", "temperature = nan\n"),
    ),
    Case(
        "config-seed-text",
        R,
        BAD_SETTING,
        r"key seed in",
        setup=write_file("config/gptoss/config.toml", 'seed = "abc"\n'),
    ),
    Case(
        "config-temperature-bool",
        R,
        BAD_SETTING,
        r"temperature.*use a number",
        setup=write_file("config/gptoss/config.toml", "temperature = true\n"),
    ),
    # stdin
    Case("stdin-not-utf8", ["run", "-"], BAD_SETTING, r"not UTF-8", stdin=b"caf\xe9"),
    Case("stdin-empty", ["run"], BAD_SETTING, r"no prompt", stdin=b"   \n"),
]


@pytest.fixture(scope="module")
def ran(tiny_checkpoint, tmp_path_factory) -> dict[str, Ran]:
    return run_all(CASES, Path(tiny_checkpoint), tmp_path_factory.mktemp("faults"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(case: Case, ran: dict[str, Ran]) -> None:
    check_case(case, ran[case.id])


def test_the_catalogue_is_wide_enough():
    from .test_faults_files import CASES as FILE_CASES

    every = CASES + FILE_CASES
    assert len(every) >= 40 and len({c.id for c in every}) == len(every)
    assert {c.code for c in every} >= {0, 1, 2, 3, 4, 8}
