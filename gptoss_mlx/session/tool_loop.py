"""The tool loop: sample until the model answers, running the tools it calls on the way.

A reply that ends in `<|call|>` is dispatched on its recipient through one table (`ToolTable`):
`python`, `browser.<fn>` and `functions.<name>` (user functions and MCP tools), plus the aliases
the model really writes (`functions.python`, `functions.browser.search`). The result goes back as
a tool message on the call's channel, the session prefills only that (the call's own tokens are
kept verbatim, see `Message.tokens`) and sampling goes on. No terminal I/O: approval, results of
user functions the program cannot run, and display go through callbacks and events.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import harmony
from ..tools.arguments import parse_arguments
from ..tools.base import Tool, ToolResult

MAX_TOOL_CALLS = 20
CANCEL_GRACE_SECONDS = 5.0
INTERRUPTED_TEXT = "[ERROR] The user interrupted this call."

Approve = Callable[[Tool, str, str], str]  # (tool, function, arguments) -> "yes" | "no" | "always"
AskResult = Callable[[harmony.ToolCall], "str | None"]  # None: leave the turn at the call


@dataclass
class Route:
    """Where a recipient goes: `tool` None is a user function with no executor."""

    tool: Tool | None
    function: str
    author: str  # the tool message's author, e.g. `python`, `browser.search`, `functions.f`
    spec: harmony.ToolSpec | None = None


@dataclass(frozen=True)
class ToolStarted:
    call: harmony.ToolCall
    author: str


@dataclass(frozen=True)
class ToolFinished:
    call: harmony.ToolCall
    author: str
    result: ToolResult
    seconds: float


@dataclass
class CallRecord:
    """One call of a turn and what came of it (`output` None: the turn stopped at it)."""

    call: harmony.ToolCall
    author: str
    output: str | None = None
    error: bool = False
    seconds: float = 0.0
    summary: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        c = self.call
        out: dict[str, Any] = {
            "recipient": c.recipient,
            "arguments": c.arguments,
            "channel": c.channel,
            "content_type": c.content_type,
        }
        if self.output is not None:
            out.update(
                author=self.author, output=self.output, error=self.error,
                seconds=round(self.seconds, 4),
            )  # fmt: skip
        return out


class ToolTable:
    """Namespace -> tool, and the function names under `functions`."""

    def __init__(
        self, tools: Iterable[Tool] = (), user_functions: Sequence[harmony.ToolSpec] = ()
    ) -> None:
        self.tools: dict[str, Tool] = {}
        self.functions: dict[str, tuple[Tool | None, harmony.ToolSpec]] = {}
        for tool in tools:
            self.add(tool)
        for spec in user_functions:
            self.functions.setdefault(spec.name, (None, spec))

    def add(self, tool: Tool) -> None:
        self.tools[tool.name] = tool
        specs = getattr(tool, "specs", None)
        if tool.name == "functions" and callable(specs):
            for spec in specs():
                self.functions[spec.name] = (tool, spec)

    def remove(self, name: str) -> Tool | None:
        tool = self.tools.pop(name, None)
        if tool is not None:
            self.functions = {k: v for k, v in self.functions.items() if v[0] is not tool}
        return tool

    def function_specs(self) -> list[harmony.ToolSpec]:
        """What the developer message declares under `namespace functions`."""
        return [spec for _, spec in self.functions.values()]

    def names(self) -> list[str]:
        """Every recipient the model may call, the way it writes them."""
        out = [n for n in self.tools if n not in ("functions", "browser")]
        if "browser" in self.tools:
            out += [f"browser.{f}" for f in ("search", "open", "find")]
        return out + [f"functions.{n}" for n in self.functions]

    def route(self, recipient: str) -> Route | None:
        r = recipient.strip()
        if r.startswith("functions."):
            name = r.removeprefix("functions.")
            if name in self.functions:
                tool, spec = self.functions[name]
                return Route(tool, name, f"functions.{name}", spec)
            if name == "python" or name.startswith("browser."):
                return self._builtin(name)  # aliases the model writes for the built-ins
            return None
        if r in self.functions:  # a bare function name
            tool, spec = self.functions[r]
            return Route(tool, r, f"functions.{r}", spec)
        return self._builtin(r)

    def _builtin(self, r: str) -> Route | None:
        namespace, _, function = r.partition(".")
        tool = self.tools.get(namespace)
        if tool is None or namespace == "functions":
            return None
        return Route(tool, function, r if function else namespace)


def error_text(message: str) -> str:
    """A tool error the model can act on (the form openai/gpt-oss's tools use)."""
    return json.dumps({"error": message}, ensure_ascii=False)


class ToolLoop:
    """Runs turns of `session` with the tools in `table`.

    `approve(tool, function, arguments)` answers "yes", "no" or "always" for calls that need
    approval (MCP tools not auto-approved, python without a sandbox); without it such calls are
    refused unless `approve_all` (--yes). `ask_result(call)` gives the result of a user function
    the program cannot run; without it (or when it returns None) the turn stops at the call.
    """

    def __init__(
        self,
        session: Any,
        table: ToolTable | None = None,
        *,
        max_calls: int = MAX_TOOL_CALLS,
        approve: Approve | None = None,
        approve_all: bool = False,
        ask_result: AskResult | None = None,
    ) -> None:
        self.session = session
        self.table = table or ToolTable()
        self.max_calls = max_calls
        self.approve = approve
        self.approve_all = approve_all
        self.ask_result = ask_result
        self.always: set[tuple[str, str]] = set()
        self.records: list[CallRecord] = []  # the calls of the latest turn
        self.stats: list[Any] = []  # GenerationStats of each reply of the latest turn
        self.cancel = threading.Event()

    # ---- turns ----------------------------------------------------------------------------
    def send(self, text: str) -> Iterator[Any]:
        """Like ChatSession.send, running tool calls until the model answers or stops."""
        return self._drive(self.session.send(text))

    def retry(self) -> Iterator[Any]:
        return self._drive(self.session.retry())

    def turn(self, text: str, on_event: Callable[[Any], None] | None = None) -> Any:
        """A whole turn, collected (ChatSession.collect: Ctrl-C keeps what was said)."""
        return self.session.collect(self.send(text), on_event)

    def _drive(self, events: Iterator[Any]) -> Iterator[Any]:
        self.records, self.stats = [], []
        self.cancel.clear()
        calls = 0
        while True:
            call = None
            try:
                for ev in events:
                    if isinstance(ev, harmony.ToolCall):
                        call = ev
                    yield ev
            finally:
                events.close()  # stopped by the consumer (Ctrl-C): the session keeps what was said
            self.stats.append(self.session.last_stats)
            if call is None or self.session.last_stats.finish_reason != "tool_call":
                return
            calls += 1
            if calls > self.max_calls + 1:
                self.records.append(CallRecord(call, call.recipient))
                self.session.last_stats.finish_reason = "tool_limit"
                return
            if calls > self.max_calls:
                text = error_text(
                    f"the limit of {self.max_calls} tool calls per turn is reached; "
                    "answer with what you have, without calling tools"
                )
                route = self.table.route(call.recipient)
                author = route.author if route else call.recipient
                result = ToolResult(text, error=True, summary="tool call limit reached")
                yield from self._finish(call, author, result, 0.0)
            else:
                outcome = yield from self._dispatch(call)
                if outcome is None:
                    return  # a user function nobody can run: the caller has the call
                author, result, seconds = outcome
                yield from self._finish(call, author, result, seconds)
            events = self.session.add_tool_result(author, result.text, channel=call.channel)

    def _finish(
        self, call: harmony.ToolCall, author: str, result: ToolResult, seconds: float
    ) -> Iterator[Any]:
        self.records.append(
            CallRecord(call, author, result.text, result.error, seconds, result.summary,
                       dict(result.details))
        )  # fmt: skip
        yield ToolFinished(call, author, result, seconds)

    # ---- one call -------------------------------------------------------------------------
    def _dispatch(self, call: harmony.ToolCall) -> Iterator[Any]:
        """Yields ToolStarted; returns (author, result, seconds), or None to stop the turn."""
        route = self.table.route(call.recipient)
        if route is None:
            known = ", ".join(self.table.names()) or "none"
            text = error_text(f"Unknown tool: {call.recipient}. Available tools: {known}")
            return call.recipient, ToolResult(text, error=True, summary="unknown tool"), 0.0
        if route.spec is not None:
            _, problem = parse_arguments(call.arguments, route.spec.parameters)
            if problem is not None:
                text = error_text(f"Invalid arguments for {route.author}: {problem}")
                return route.author, ToolResult(text, error=True, summary="bad arguments"), 0.0
        if route.tool is None:
            answer = self.ask_result(call) if self.ask_result is not None else None
            if answer is None:
                self.records.append(CallRecord(call, route.author))
                return None
            yield ToolStarted(call, route.author)
            return route.author, ToolResult(answer, summary="answered by the user"), 0.0
        refusal = self._refusal(route, call.arguments)
        if refusal is not None:
            return route.author, ToolResult(error_text(refusal), error=True, summary=refusal), 0.0
        yield ToolStarted(call, route.author)
        t0 = time.perf_counter()
        try:
            result = run_cancellable(route.tool, route.function, call.arguments, self.cancel)
        except KeyboardInterrupt:
            seconds = time.perf_counter() - t0
            self.records.append(CallRecord(call, route.author, INTERRUPTED_TEXT, True, seconds))
            self.session.messages.append(
                harmony.tool_result(route.author, INTERRUPTED_TEXT, channel=call.channel)
            )
            raise
        return route.author, result, time.perf_counter() - t0

    def _refusal(self, route: Route, arguments: str) -> str | None:
        """Why the call may not run (the user said no, or nobody could ask), or None."""
        tool = route.tool
        assert tool is not None
        unsafe = tool.name == "python" and bool(getattr(tool, "unsafe", False))
        if self.approve_all or (tool.approved(route.function) and not unsafe):
            return None
        key = (tool.name, route.function)
        if key in self.always:
            return None
        if self.approve is None:
            return f"{route.author} needs the user's approval and nobody can give it here (--yes allows all calls)"
        answer = self.approve(tool, route.function, arguments)
        if answer == "always":
            self.always.add(key)
            return None
        return None if answer == "yes" else "The user declined this call."


class _ToolThread:
    """One long-lived daemon thread per tool that runs its calls in turn. Long-lived because a
    tool's processes may be tied to the thread that started them (bubblewrap's
    --die-with-parent is PR_SET_PDEATHSIG, which fires when that *thread* exits)."""

    def __init__(self, name: str) -> None:
        self.jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        threading.Thread(target=self._serve, name=name, daemon=True).start()

    def _serve(self) -> None:
        while True:
            self.jobs.get()()


_threads: weakref.WeakKeyDictionary[Tool, _ToolThread] = weakref.WeakKeyDictionary()
_threads_lock = threading.Lock()


def _thread_for(tool: Tool) -> _ToolThread:
    with _threads_lock:
        thread = _threads.get(tool)
        if thread is None:
            thread = _threads[tool] = _ToolThread(f"tool-{tool.name}")
        return thread


def run_cancellable(
    tool: Tool, function: str, arguments: str, cancel: threading.Event
) -> ToolResult:
    """`tool.call` on the tool's own thread, so Ctrl-C (in the main thread) can set `cancel`, give
    the tool a moment to stop, and propagate. A tool that raises gives an error text, not a crash."""
    box: list[ToolResult] = []
    done = threading.Event()

    def target() -> None:
        try:
            box.append(tool.call(function, arguments, cancel=cancel))
        except Exception as err:  # a broken tool must not end the chat
            box.append(ToolResult(f"[ERROR] the tool failed: {type(err).__name__}: {err}", True))
        finally:
            done.set()

    # An Event, not Thread.join: a join interrupted by Ctrl-C may believe the thread has ended.
    try:
        _thread_for(tool).jobs.put(target)
        while not done.wait(0.05):
            pass
    except KeyboardInterrupt:
        cancel.set()
        done.wait(CANCEL_GRACE_SECONDS)
        raise
    return box[0]
