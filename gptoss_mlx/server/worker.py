"""The generation queue: one generation at a time on one worker thread, first come first served.

A request submits a job and reads its items from an asyncio queue. `--max-queue` bounds the jobs
waiting behind the running one (503 beyond it). Cancelling a job (the client went away, a stop
string matched, the server shuts down) takes it out of the queue or stops its generation at the
next token.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .errors import ApiError

log = logging.getLogger("gptoss.server")

_DONE = object()
# A generation: called with "is it cancelled?" on the worker thread, yields what to send.
Runner = Callable[[Callable[[], bool]], Iterator[Any]]


class Job:
    def __init__(self, run: Runner, loop: asyncio.AbstractEventLoop) -> None:
        self.run = run
        self.loop = loop
        self.items: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = threading.Event()
        self.started = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()

    def _send(self, item: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.items.put_nowait, item)
        except RuntimeError:  # the event loop is gone (shutdown)
            self.cancelled.set()

    async def results(self) -> AsyncIterator[Any]:
        """The job's items as they come; re-raises what the generation raised. Leaving the loop
        early (or being cancelled) cancels the job."""
        try:
            while True:
                item = await self.items.get()
                if item is _DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel()


class _Call:
    def __init__(self, fn: Callable[[], Any], future: concurrent.futures.Future[Any]) -> None:
        self.fn, self.future = fn, future
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()

    def run(self) -> None:
        try:
            self.future.set_result(self.fn())
        except BaseException as e:
            self.future.set_exception(e)


class GenerationQueue:
    def __init__(self, max_queue: int = 16, on_exit: Callable[[], None] | None = None) -> None:
        """`on_exit` runs on the worker thread after the last job (after `close`)."""
        self.max_queue = max_queue
        self.on_exit = on_exit
        self._waiting: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        self.running: Job | None = None
        self._thread = threading.Thread(target=self._loop, name="gptoss-generation", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        with self._cond:
            return sum(1 for j in self._waiting if not j.cancelled.is_set())

    def submit(self, run: Runner) -> Job:
        """Queue a generation; 503 when `max_queue` jobs are already waiting."""
        job = Job(run, asyncio.get_running_loop())
        with self._cond:
            if self._closed:
                raise ApiError(503, "the server is shutting down", code="server_shutting_down")
            busy = self.running is not None or self._waiting
            waiting = sum(1 for j in self._waiting if not j.cancelled.is_set())
            if busy and waiting >= self.max_queue:
                raise ApiError(
                    503,
                    f"the server is busy: {waiting} requests are already waiting "
                    "(retry later, or start it with a larger --max-queue)",
                    code="server_busy",
                )
            self._waiting.append(job)
            self._cond.notify()
        return job

    def call(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on the worker thread and return its result (or raise what it raised). MLX
        arrays belong to the thread whose stream made them: load the model with this."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cond:
            self._waiting.append(_Call(fn, future))  # type: ignore[arg-type]
            self._cond.notify()
        return future.result()

    def close(self, timeout: float | None = 5.0) -> None:
        """Cancel everything queued and running; wait for the running generation to stop (and
        `on_exit` to run) for up to `timeout` seconds (None: as long as it takes)."""
        with self._cond:
            self._closed = True
            for job in self._waiting:
                job.cancel()
            if self.running is not None:
                self.running.cancel()
            self._cond.notify()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._closed:
                    self._cond.wait()
                if not self._waiting:
                    break
                job = self._waiting.popleft()
                if isinstance(job, _Call):
                    job.run()
                    continue
                self.running = job
            try:
                if not job.cancelled.is_set():
                    self._run(job)
            finally:
                job._send(_DONE)
                with self._cond:
                    self.running = None
        if self.on_exit is not None:
            self.on_exit()

    @staticmethod
    def _run(job: Job) -> None:
        job.started.set()
        items = None
        try:
            items = job.run(job.cancelled.is_set)
            for item in items:
                if job.cancelled.is_set():
                    break
                job._send(item)
        except BaseException as e:  # reported to the request; never kills the worker
            if not isinstance(e, ApiError):
                log.exception("generation failed")
            job._send(e)
        finally:
            if items is not None:
                items.close()  # type: ignore[attr-defined]
