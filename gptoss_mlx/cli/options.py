"""Command-line options shared by `gptoss run` and `gptoss chat`: one definition of each.

Values are resolved by settings.resolve: flag > environment > config file > default.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer

# Options shared by `run` and `chat`: one definition, resolved by settings.resolve (flag > env > config > default).
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "-m",
        "--model",
        help="Model: 20b, 120b, a hub repo id or a path. Env GPTOSS_MODEL.",
        show_default=False,
    ),
]
EffortOpt = Annotated[
    str | None,
    typer.Option(
        "--effort",
        "-e",
        help="Reasoning effort: low, medium (default) or high.",
        show_default=False,
    ),
]
InstructionsOpt = Annotated[
    str | None,
    typer.Option(
        "--instructions", "-i", help="Developer instructions (system prompt).", show_default=False
    ),
]
TemperatureOpt = Annotated[
    float | None,
    typer.Option(
        "--temperature",
        "-t",
        help="Sampling temperature (default 1.0; 0 = greedy).",
        show_default=False,
    ),
]
TopPOpt = Annotated[
    float | None,
    typer.Option("--top-p", help="Nucleus sampling (default 1.0).", show_default=False),
]
TopKOpt = Annotated[
    int | None,
    typer.Option(
        "--top-k", help="Keep the k most likely tokens (default 0 = off).", show_default=False
    ),
]
MinPOpt = Annotated[
    float | None,
    typer.Option(
        "--min-p",
        help="Drop tokens below min-p x the top probability (default 0).",
        show_default=False,
    ),
]
SeedOpt = Annotated[
    int | None,
    typer.Option("--seed", help="Random seed for reproducible sampling.", show_default=False),
]
MaxTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--max-tokens",
        "-n",
        help="Most tokens to generate per reply (default: what the context allows).",
        show_default=False,
    ),
]
ContextOpt = Annotated[
    int | None,
    typer.Option(
        "--context", "-c", help="Context window cap in tokens (default 131072).", show_default=False
    ),
]
DtypeOpt = Annotated[
    str | None,
    typer.Option(
        "--dtype",
        help="Activation dtype: float32, bfloat16 (default: best for the device).",
        show_default=False,
    ),
]
YesOpt = Annotated[
    bool,
    typer.Option(
        "--yes",
        "-y",
        help="Answer yes to questions (download a missing model, approve every tool call).",
    ),
]
ForceOpt = Annotated[
    bool, typer.Option("--force", help="Load even if the memory check says the model does not fit.")
]

PythonOpt = Annotated[
    bool,
    typer.Option("--python", help="Let the model run Python in a sandbox (its python tool)."),
]
PythonTimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--python-timeout", help="Seconds a python call may run (default 120).", show_default=False
    ),
]
PythonNetworkOpt = Annotated[
    bool, typer.Option("--python-network", help="Give the python sandbox network access.")
]
PythonUnsafeOpt = Annotated[
    bool,
    typer.Option(
        "--python-unsafe",
        help="Run python without a sandbox where none can be set up (asks before every run).",
    ),
]
MaxToolCallsOpt = Annotated[
    int | None,
    typer.Option(
        "--max-tool-calls", help="Most tool calls per turn (default 20).", show_default=False
    ),
]
McpOpt = Annotated[
    str | None,
    typer.Option(
        "--mcp",
        help="MCP servers file (mcpServers JSON; default ~/.config/gptoss/mcp.json).",
        show_default=False,
    ),
]
ToolsFileOpt = Annotated[
    str | None,
    typer.Option(
        "--tools",
        help='JSON file of function tools the model may call: [{"name", "description", "parameters": JSON schema}].',
        show_default=False,
    ),
]

BrowserOpt = Annotated[
    bool,
    typer.Option(
        "--browser",
        help="Let the model search and read the web (its browser tool; read-only). Env GPTOSS_BROWSER.",
    ),
]
SearchOpt = Annotated[
    str | None,
    typer.Option(
        "--search",
        help="Search backend: searxng (GPTOSS_SEARXNG_URL), brave (BRAVE_API_KEY), exa (EXA_API_KEY) or duckduckgo (best-effort; the default). Env GPTOSS_SEARCH.",
        show_default=False,
    ),
]

# The tool options above, by parameter name (run and chat take them all).
TOOL_OPTIONS = (
    "python", "python_timeout", "python_network", "python_unsafe", "max_tool_calls", "mcp", "tools",
    "browser", "search",
)  # fmt: skip

# The options above, by parameter name: what run and chat pass to settings.resolve.
SHARED = (
    "model", "effort", "instructions", "temperature", "top_p", "top_k", "min_p", "seed",
    "max_tokens", "context", "dtype", "yes", "force",
)  # fmt: skip


def settings_from(params: Mapping[str, Any]) -> Any:  # -> settings.Settings
    """Settings from a command's parameters (pass `locals()`): the shared options given."""
    from ..settings import resolve

    names = SHARED + tuple(k for k in TOOL_OPTIONS if k in params)
    given = {k: params[k] for k in names if params[k] is not None and params[k] is not False}
    return resolve(given)
