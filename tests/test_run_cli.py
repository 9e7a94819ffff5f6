"""`gptoss run` end to end, as a user runs it: a real process, real pipes, a real tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gptoss_mlx.cli.run import read_prompt
from gptoss_mlx.errors import UserError

from .conftest import run_gptoss


def gptoss(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPTOSS_CONFIG": "/nonexistent/config.toml", **(env or {})}
    return run_gptoss(*args, env=env, stdin=stdin if stdin is not None else b"", text=False)


def test_json_output_has_everything(tiny_checkpoint):
    r = gptoss("run", "-m", str(tiny_checkpoint), "-t", "0", "-n", "6", "--json", "Hello")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.decode().strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert set(out) >= {"final", "reasoning", "tool_calls", "usage", "timings", "finish_reason"}
    assert out["finish_reason"] == "length"
    assert out["usage"]["completion_tokens"] == 6
    assert out["usage"]["prompt_tokens"] > 20
    assert out["timings"]["time_to_first_token_s"] > 0


def test_greedy_is_reproducible_and_stdout_is_only_the_answer(tiny_checkpoint):
    a = gptoss("run", "-m", str(tiny_checkpoint), "-t", "0", "-n", "60", "Hi")
    b = gptoss("run", "-m", str(tiny_checkpoint), "--temperature", "0", "--max-tokens", "60", "Hi")
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout and a.stdout.strip()
    assert b"cut at --max-tokens" in a.stderr  # the note goes to stderr, not into the pipe


def test_seeded_sampling_is_reproducible(tiny_checkpoint):
    args = ("run", "-m", str(tiny_checkpoint), "--seed", "7", "-n", "60", "--json", "Hi")
    a, b = gptoss(*args), gptoss(*args)
    assert json.loads(a.stdout)["final"] == json.loads(b.stdout)["final"]
    c = gptoss("run", "-m", str(tiny_checkpoint), "--seed", "8", "-n", "60", "--json", "Hi")
    assert json.loads(c.stdout)["final"] != json.loads(a.stdout)["final"]


def test_show_prompt_is_the_harmony_render(tiny_checkpoint):
    r = gptoss(
        "run",
        "-m",
        str(tiny_checkpoint),
        "--show-prompt",
        "--effort",
        "high",
        "-i",
        "Be terse.",
        "What is 2+2?",
    )
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode()
    assert text.startswith("<|start|>system<|message|>You are ChatGPT")
    assert "Reasoning: high" in text
    assert "<|start|>developer<|message|># Instructions\n\nBe terse.<|end|>" in text
    assert text.rstrip().endswith("<|start|>user<|message|>What is 2+2?<|end|><|start|>assistant")


def test_stdin_is_the_material_and_the_argument_the_instruction(tiny_checkpoint):
    r = gptoss(
        "run",
        "-m",
        str(tiny_checkpoint),
        "--show-prompt",
        "Summarize this:",
        stdin=b"line one\nline two\n",
    )
    assert (
        "<|start|>user<|message|>Summarize this:\n\nline one\nline two<|end|>" in r.stdout.decode()
    )
    r = gptoss("run", "-m", str(tiny_checkpoint), "--show-prompt", "-", stdin=b"from a file")
    assert "<|start|>user<|message|>from a file<|end|>" in r.stdout.decode()


@pytest.mark.parametrize(
    ("args", "stdin", "code", "message"),
    [
        ((), b"", 1, "no prompt"),
        ((), b"\xff\xfe\x00bad", 1, "not UTF-8"),
        (("-m", "/no/such/model"), b"hi", 3, "does not exist"),
        (("--effort", "extreme"), b"hi", 1, "effort must be one of low, medium, high"),
        (("--top-p", "0"), b"hi", 1, "top-p must be in (0, 1]"),
        (("--context", "40", "-n", "50"), b"hi", 1, "does not fit"),
        (("--context", "40"), b"hi", 5, "context full"),
        (("--dtype", "int8"), b"hi", 1, "dtype must be"),
    ],
)
def test_user_errors_are_one_line_with_an_exit_code(tiny_checkpoint, args, stdin, code, message):
    if "-m" not in args:
        args = ("-m", str(tiny_checkpoint), *args)
    r = gptoss("run", *args, stdin=stdin)
    err = r.stderr.decode()
    assert r.returncode == code, err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_settings_come_from_flag_env_config_in_that_order(tiny_checkpoint, tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text('effort = "low"\ninstructions = "From the config."\n')
    base = ("run", "-m", str(tiny_checkpoint), "--show-prompt", "x")
    env = {"GPTOSS_CONFIG": str(cfg)}
    text = gptoss(*base, env=env).stdout.decode()
    assert "Reasoning: low" in text and "From the config." in text
    text = gptoss(*base, env=env | {"GPTOSS_EFFORT": "high"}).stdout.decode()
    assert "Reasoning: high" in text
    text = gptoss(*base, "--effort", "medium", env=env | {"GPTOSS_EFFORT": "high"}).stdout.decode()
    assert "Reasoning: medium" in text
    cfg.write_text('colour = "blue"\n')
    r = gptoss(*base, env=env)
    assert r.returncode == 1 and b"unknown key(s) colour" in r.stderr


def test_model_from_env(tiny_checkpoint):
    r = gptoss("run", "--show-prompt", "x", env={"GPTOSS_MODEL": str(tiny_checkpoint)})
    assert r.returncode == 0, r.stderr


def test_help_does_not_import_mlx():
    code = "import sys; from gptoss_mlx.cli import main; main(['--help']); print(sorted(m for m in sys.modules if m.split('.')[0] in ('mlx', 'mlx_lm', 'huggingface_hub', 'transformers', 'openai_harmony', 'numpy')))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip().splitlines()[-1] == "[]"


class _Stdin:
    def __init__(self, data: bytes, tty: bool = False):
        import io

        self.buffer = io.BytesIO(data)
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


def test_read_prompt_rules():
    assert read_prompt("hello", _Stdin(b"", tty=True)) == "hello"
    assert read_prompt(None, _Stdin(b"  piped  ")) == "piped"
    assert read_prompt("-", _Stdin(b"file text")) == "file text"
    assert read_prompt("Translate:", _Stdin(b"bonjour")) == "Translate:\n\nbonjour"
    with pytest.raises(UserError, match="no prompt"):
        read_prompt(None, _Stdin(b"   \n"))
    with pytest.raises(UserError, match="not UTF-8"):
        read_prompt(None, _Stdin(b"\xc3\x28"))


def test_module_entry_point_matches_console_script(tiny_checkpoint):
    exe = Path(sys.executable).parent / "gptoss"
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("gptoss ")


def test_run_and_chat_pass_every_shared_option_to_the_settings():
    import inspect

    from gptoss_mlx.cli import chat as cli_chat
    from gptoss_mlx.cli import options as cli_options
    from gptoss_mlx.cli import run as cli_run
    from gptoss_mlx.settings import resolve

    for cmd in (cli_run.run_cmd, cli_chat.chat_cmd):
        assert set(cli_options.SHARED) <= set(inspect.signature(cmd).parameters)
    given = dict.fromkeys(cli_options.SHARED) | {"effort": "high", "seed": 7, "force": True}
    settings = cli_options.settings_from(given)
    assert (settings.effort, settings.seed, settings.force) == ("high", 7, True)
    assert settings.sources["effort"] == "flag"
    assert settings.model == resolve({}).model  # not given: from env, config or default
