"""The exit-code table: errors.EXIT_CODES is the one source; the README's table, the --help
epilogs and every exit the code can take agree with it. Usage errors are click's message as one
line and exit 2, with every typer version pyproject allows (GPTOSS_TYPER_PYTHONS)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gptoss_mlx import errors
from gptoss_mlx.errors import EXIT_CODES, UsageError

from .conftest import run_gptoss

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "gptoss_mlx"


def readme_table() -> dict[int, str]:
    text = (REPO / "README.md").read_text()
    block = text.split("| code | meaning |\n|---|---|\n", 1)[1].split("\n\n", 1)[0]
    rows = [re.fullmatch(r"\| (\d+) \| (.+) \|", line) for line in block.splitlines()]
    assert all(rows), block
    return {int(m.group(1)): m.group(2) for m in rows}


def test_readme_exit_code_table_is_errors_py():
    assert readme_table() == EXIT_CODES


def test_every_user_error_class_has_a_code_in_the_table():
    import pkgutil
    from importlib import import_module

    for mod in pkgutil.walk_packages([str(PACKAGE)], "gptoss_mlx."):
        if mod.name.endswith(("__main__", "blas")):
            continue  # __main__ runs the CLI; blas loads a library into the process
        import_module(mod.name)
    classes = errors.user_error_classes()
    assert len(classes) > 8
    for cls in classes:
        assert cls.exit_code in EXIT_CODES, cls


def _literal_exits(tree: ast.AST) -> list[tuple[int, int]]:
    """(line, code) of every literal exit: typer.Exit(N), sys.exit(N), os._exit(N), exit_code = N."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = ast.unparse(node.func)
            if name.endswith(("Exit", "sys.exit", "os._exit")) and isinstance(
                node.args[0].value, int
            ):
                found.append((node.lineno, node.args[0].value))
        if isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Constant):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(ast.unparse(t).endswith("exit_code") for t in targets):
                found.append((node.lineno, node.value.value))
    return found


def test_every_literal_exit_in_the_code_is_in_the_table():
    seen = 0
    for path in PACKAGE.rglob("*.py"):
        for line, code in _literal_exits(ast.parse(path.read_text())):
            seen += 1
            assert code in EXIT_CODES, f"{path.name}:{line} exits {code}, not in errors.EXIT_CODES"
    assert seen >= 8


def test_help_epilogs_list_the_table():
    r = gptoss("run", "--help")
    assert r.returncode == 0
    flat = " ".join(r.stdout.split())
    for code in EXIT_CODES:
        assert f"{code} " in flat.split("Exit codes:", 1)[1]
    assert "data is already waiting" in flat  # the stdin rule is documented in run --help


def gptoss(*args: str, python: str = sys.executable) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "GPTOSS_CONFIG": "/nonexistent/config.toml"}
    return run_gptoss(*args, env=env, stdin=None, timeout=60, python=python)


USAGE = [
    ((), None),
    (("frobnicate",), "No such command 'frobnicate'"),
    (("run", "--bogus", "x"), "No such option: --bogus"),
    (("convert",), "Missing argument"),
    (("run", "--seed", "abc", "x"), "'--seed'"),
    (("info", "--context", "lots"), "'--context'"),
]


def _pythons() -> list[str]:
    """This interpreter, and any listed in GPTOSS_TYPER_PYTHONS (other typer versions)."""
    extra = [p for p in os.environ.get("GPTOSS_TYPER_PYTHONS", "").split(os.pathsep) if p]
    return [sys.executable, *extra]


@pytest.mark.parametrize("python", _pythons())
@pytest.mark.parametrize("args,says", USAGE, ids=["bare", "command", "flag", "arg", "int", "int2"])
def test_usage_errors_exit_2_with_clicks_message_on_one_line(python, args, says):
    """Bug: every usage error was "internal error", exit 70 (typer 0.26+ vendors its own click)."""
    r = gptoss(*args, python=python)
    assert r.returncode == UsageError.exit_code, r.stderr
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr
    if says is None:  # a bare `gptoss`: the help
        assert "Commands" in r.stderr and "run" in r.stderr
        return
    [line] = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert line.startswith("gptoss: error: ") and says in line and "--help" in line


def test_typer_is_bounded_to_tested_versions():
    text = (REPO / "pyproject.toml").read_text()
    [spec] = re.findall(r'"typer([^"]*)"', text)
    assert re.fullmatch(r">=[\d.]+,<[\d.]+", spec), spec
