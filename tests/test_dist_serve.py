"""`gptoss serve` across ranks: `mlx.launch --backend ring -n 2` on localhost (CPU backend), the
real openai SDK against rank 0, answers equal to a single process, a client that goes away
mid-stream, SIGTERM to the launcher, `serve --hostfile`, `chat` refused under mlx.launch; and the
follower protocol (server/lockstep.py) with a fake two-rank group in threads."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gptoss_mlx.server.engine import Generation
from gptoss_mlx.server.lockstep import Lockstep
from gptoss_mlx.session.chat import SessionSettings
from gptoss_mlx.session.prompt_cache import PromptCache

from .test_distributed import LAUNCH, REPO, _env, launch, needs_launch

PROMPT = "Hello there"
N = 16


# ---- the follower protocol with a fake group ----------------------------------------------------
class FakeGroup:
    """Two ranks in threads: `share` and `any_rank` meet at a barrier like the all_sums do."""

    def __init__(self) -> None:
        self.barrier = threading.Barrier(2, timeout=10)
        self.slot: list = [None, None]
        self.calls = [[], []]  # per rank: ("share", ...) / ("any", ...) in order

    def share(self, rank: int, obj: object) -> object:
        self.slot[rank] = obj
        self.barrier.wait()
        got = self.slot[0]
        self.barrier.wait()
        self.calls[rank].append("share")
        return got

    def any_rank(self, rank: int, flag: bool) -> bool:
        self.slot[rank] = flag
        self.barrier.wait()
        agreed = bool(self.slot[0] or self.slot[1])
        self.barrier.wait()
        self.calls[rank].append("any")
        return agreed


class FakeEngine:
    """Two prefill chunks (each asks `cancelled`), then up to 40 items; records what it ran."""

    def __init__(self) -> None:
        self.prompt_cache = PromptCache(1 << 30)
        self.seen: list = []
        self.made = 0

    def generate(self, gen, cancelled, entry):
        self.seen.append(gen.settings.sampler.seed)
        for _ in range(2):
            if cancelled():
                return
        for i in range(40):
            self.made = i + 1
            yield i


def _pair(stop_after: int | None, read: int | None = None) -> tuple[FakeGroup, list, list]:
    group, engines = FakeGroup(), [FakeEngine(), FakeEngine()]
    steps = [Lockstep(lambda o, r=r: group.share(r, o), lambda f, r=r: group.any_rank(r, f))
             for r in (0, 1)]  # fmt: skip
    follower = threading.Thread(target=steps[1].follow, args=(engines[1],))
    follower.start()
    got = []
    gen = Generation([], SessionSettings(), prompt=[1, 2, 3])
    items = steps[0].lead(
        engines[0], gen, lambda: stop_after is not None and len(got) >= stop_after
    )
    for item in items:
        got.append(item)
        if read is not None and len(got) >= read:
            items.close()  # the consumer stops reading (the worker saw the job cancelled)
            break
    steps[0].shutdown()
    follower.join(10)
    assert not follower.is_alive()
    return group, engines, got


def test_followers_compute_the_same_and_stop_at_the_same_item():
    group, engines, got = _pair(stop_after=6)
    assert got == list(range(8))  # agreed every 4 items: rank 0 asked to stop after 6
    assert engines[0].made == engines[1].made == 8
    assert group.calls[0] == group.calls[1]  # the same collectives in the same order
    seeds = engines[0].seen + engines[1].seen
    assert seeds[0] is not None and len(set(seeds)) == 1  # rank 0 chose a seed and shared it


def test_a_consumer_that_stops_reading_stops_every_rank_at_the_next_check():
    group, engines, got = _pair(stop_after=None, read=5)
    assert got == list(range(5)) and engines[0].made == engines[1].made == 8
    assert group.calls[0] == group.calls[1]


def test_a_generation_that_ends_by_itself_needs_no_stop():
    group, engines, got = _pair(stop_after=None)
    assert got == list(range(40)) and engines[1].made == 40
    assert group.calls[0] == group.calls[1]


# ---- real ranks ---------------------------------------------------------------------------------
def _wait_banner(log: Path, proc: subprocess.Popen, timeout: float = 150) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if (m := re.search(r" at (http://\S+)/v1 ", text)) and "startup complete" in text:
            return m.group(1)
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"the ranks did not start serving:\n{log.read_text()}")


def _ranks_alive(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-f", "--", marker], capture_output=True, text=True).stdout
    return [p for p in out.split() if int(p) != os.getpid()]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path) -> str:
    """The single-process `gptoss run --json` answer at temperature 0."""
    args = ["-m", "gptoss_mlx", "run", "-m", str(tiny_checkpoint), "-t", "0", "-n", str(N)]
    r = subprocess.run([sys.executable, *args, "--json", PROMPT], capture_output=True, text=True,
                       env=_env(), cwd=REPO, timeout=120)  # fmt: skip
    return json.loads(r.stdout)["final"]


@pytest.fixture(scope="module")
def ranks(tiny_checkpoint: Path, tmp_path_factory) -> Iterator[dict]:
    """`mlx.launch --backend ring -n 2 -- python -m gptoss_mlx serve` with a random port."""
    log = tmp_path_factory.mktemp("dist-serve") / "launch.err"
    marker = f"--max-queue {random.randrange(1000, 9999)}"  # finds this launch's ranks
    port = str(random.randrange(20000, 60000, 16))
    cmd = [LAUNCH, "--backend", "ring", "-n", "2", "--starting-port", port, "--", sys.executable,
           "-m", "gptoss_mlx", "serve", "-m", str(tiny_checkpoint), "--port", "0", "-t", "0",
           *marker.split()]  # fmt: skip
    with open(log, "w") as err, open(log.with_suffix(".out"), "w") as out:
        # stdin a pipe that stays open, as under a terminal (mlx.launch spins on /dev/null)
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                env=_env(), cwd=REPO)  # fmt: skip
    try:
        url = _wait_banner(log, proc)
        yield {"proc": proc, "url": url, "log": log, "marker": marker}
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _ranks_alive(marker):
            os.kill(int(pid), signal.SIGKILL)


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", timeout=60, max_retries=0)


def _ask(client: openai.OpenAI, stream: bool = False) -> str:
    msgs = [{"role": "user", "content": PROMPT}]
    model = client.models.list().data[0].id
    if not stream:
        r = client.chat.completions.create(model=model, messages=msgs, max_tokens=N, temperature=0)
        return r.choices[0].message.content or ""
    chunks = client.chat.completions.create(
        model=model, messages=msgs, max_tokens=N, temperature=0, stream=True
    )
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


@needs_launch
def test_two_ranks_answer_like_one_process(ranks, reference, tiny_checkpoint):
    client = _client(ranks["url"])
    r = client.chat.completions.create(
        model=tiny_checkpoint.name,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=N,
        temperature=0,
    )
    assert r.choices[0].message.content == reference
    assert r.usage.completion_tokens == N
    assert _ask(client, stream=True) == reference  # the prompt cache reused on both ranks
    text = ranks["log"].read_text()
    assert text.count("gptoss serve:") == 1 and text.count("gptoss: 2 ranks, pipeline") == 1
    access = ranks["log"].with_suffix(".out").read_text()  # uvicorn's access log: rank 0's only
    assert access.count('"POST /v1/chat/completions HTTP/1.1" 200') == 2, access


@needs_launch
def test_a_client_gone_mid_stream_leaves_the_ranks_serving(ranks, reference):
    body = {"messages": [{"role": "user", "content": "Tell me more"}], "max_tokens": 2000,
            "temperature": 0.7, "stream": True}  # fmt: skip
    with httpx.stream("POST", f"{ranks['url']}/v1/chat/completions", json=body, timeout=60) as r:
        for n, _line in enumerate(r.iter_lines()):
            if n >= 6:
                break  # closes the connection: rank 0 cancels, every rank stops at one token
    client = _client(ranks["url"])
    assert _ask(client) == reference
    assert _ask(client, stream=True) == reference


@needs_launch
def test_function_tools_and_the_responses_api_across_ranks(ranks, tiny_checkpoint):
    client = _client(ranks["url"])
    tool = {"type": "function", "function": {"name": "get_weather", "description": "Weather.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}  # fmt: skip
    r = client.chat.completions.create(
        model=tiny_checkpoint.name, messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[tool], max_tokens=8, seed=7,
    )  # fmt: skip
    assert r.usage.completion_tokens <= 8 and r.usage.prompt_tokens > 69  # the tool is in it
    resp = client.responses.create(
        model=tiny_checkpoint.name, input=PROMPT, max_output_tokens=8, temperature=0
    )
    assert resp.status in ("completed", "incomplete") and resp.usage.output_tokens <= 8


@needs_launch
def test_sigterm_to_the_launcher_ends_every_rank(ranks):
    assert len(_ranks_alive(ranks["marker"])) >= 2
    ranks["proc"].send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 20
    while _ranks_alive(ranks["marker"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _ranks_alive(ranks["marker"]) == [], "ranks still running 20 s after SIGTERM"


@needs_launch
@pytest.mark.slow  # about 25 s on a busy 2-core machine: one more launch of two ranks
def test_serve_hostfile_launches_the_ranks_and_stops_them(tiny_checkpoint, reference, tmp_path):
    hosts = {"backend": "ring", "hosts": [{"ssh": "127.0.0.1", "ips": ["127.0.0.1"]}] * 2}
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps(hosts))
    log = tmp_path / "serve.err"
    marker = f"--max-queue {random.randrange(1000, 9999)}"
    cmd = [sys.executable, "-m", "gptoss_mlx", "serve", "--hostfile", str(hostfile), "-m",
           str(tiny_checkpoint), "--port", "0", "-t", "0", *marker.split()]  # fmt: skip
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, env=_env(), cwd=REPO)  # fmt: skip
    try:
        url = _wait_banner(log, proc)
        first = log.read_text().splitlines()[0]
        assert first.startswith("gptoss: ") and f"--hostfile {hostfile} --" in first
        assert f"-- {sys.executable} -m gptoss_mlx serve -m {tiny_checkpoint}" in first
        assert first.count("--hostfile") == 1
        assert _ask(_client(url)) == reference
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
        # rank 0 stopped serving and told rank 1: both exited 0, nothing crashed
        assert "Traceback" not in log.read_text() and "exited with code" not in log.read_text()
        deadline = time.monotonic() + 10
        while _ranks_alive(marker) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _ranks_alive(marker) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        for pid in _ranks_alive(marker):
            os.kill(int(pid), signal.SIGKILL)


@needs_launch
def test_chat_under_mlx_launch_is_refused_in_one_line(tiny_checkpoint):
    r = launch(2, "-m", "gptoss_mlx", "chat", "-m", str(tiny_checkpoint), timeout=60)
    errors = [line for line in r.stderr.splitlines() if line.startswith("gptoss: error:")]
    assert len(errors) == 1, r.stderr
    assert "gptoss serve --hostfile hosts.json" in errors[0]
    assert "gptoss chat --server http://HOST:8000/v1" in errors[0]
    assert "rank 0 exited with code 2" in r.stderr  # rank 1 may be stopped by mlx.launch first
    assert r.stdout == ""


def test_the_launch_command_forwards_the_ranks_options_only(tmp_path):
    import typer

    from gptoss_mlx.cli import app
    from gptoss_mlx.cli.serve_ranks import launch_command

    hostfile = tmp_path / "hosts.json"
    hostfile.write_text("{}")
    argv = ["--hostfile", str(hostfile), "-m", "120b", "--port", "9000", "--backend", "jaccl",
            "--host", "0.0.0.0", "--api-key", "s3cret", "--strategy", "tensor", "-t", "0"]  # fmt: skip
    ctx = typer.main.get_command(app).commands["serve"].make_context("serve", argv)
    run, shown = launch_command(ctx, hostfile, "jaccl", "s3cret")
    i = run.index("--")
    assert run[1:i] == ["--hostfile", str(hostfile), "--backend", "jaccl", "--env",
                        "GPTOSS_API_KEY=s3cret"]  # fmt: skip
    ranks = run[i + 1 :]
    assert ranks[:4] == [sys.executable, "-m", "gptoss_mlx", "serve"]
    assert sorted(" ".join(ranks[4:]).split(" -")) == sorted(
        ["-m 120b", "-port 9000", "-host 0.0.0.0", "-strategy tensor", "-temperature 0.0"]
    )
    assert "s3cret" not in " ".join(shown) and "GPTOSS_API_KEY=***" in shown
