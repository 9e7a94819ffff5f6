"""Agent-style replay against OpenAI-compatible servers: a conversation resent in full each turn,
as clients do; time to first token per turn and total time, for `gptoss serve`, `mlx_lm.server`
and llama.cpp's `llama-server` on the same checkpoint, in one run.

    python scripts/bench_server.py MODEL_DIR [--turns 10] [--words 400] [--max-tokens 48]
        [--servers gptoss,mlx_lm,llama_cpp] [--rounds 1] [--json FILE]

Each turn adds a user message of about `--words` words plus the previous reply (its reasoning
sent back as `reasoning`, `reasoning_content` and `thinking`, the names the servers read). Time to
first token is the wall time of the turn's request cut at one token (then the turn's streamed
request of `--max-tokens` gives the reply to send back; "total" sums those).
The peers render the prompt with gpt-oss's own chat template (OpenAI's, as llama.cpp vendors it;
added to a copy of the checkpoint's tokenizer_config.json when it has none); llama-server is
built from the llama-cpp-python sdist and reads the checkpoint converted to GGUF (both cached
under .cache/llama.cpp), with one slot and its prompt cache on. Servers take turns within a
round; with several rounds each turn's median is reported. Prints a table and the ratios (turn-N
TTFT / turn-1 TTFT per server, and each peer / gptoss at turn N); `--json` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make scripts.bench importable
    sys.path.insert(0, str(REPO))

SERVERS = ("gptoss", "mlx_lm", "llama_cpp")
TEMPLATE = "models/templates/openai-gpt-oss-120b.jinja"  # in llama.cpp's tree; 20b's is the same
WORDS = [
    "model",
    "cache",
    "token",
    "prefix",
    "layer",
    "window",
    "answer",
    "server",
    "request",
    "stream",
    "reply",
    "agent",
    "tool",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def with_chat_template(model: Path) -> Path:
    """`model`, or a copy of it (symlinks) whose tokenizer_config.json carries gpt-oss's chat
    template, for the servers that render prompts with it."""
    config = json.loads((model / "tokenizer_config.json").read_text())
    if config.get("chat_template") or (model / "chat_template.jinja").exists():
        return model
    from scripts.bench import llama_source

    out = REPO / ".cache" / "bench" / f"{model.name}-with-template"
    if not (out / "tokenizer_config.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        for f in model.iterdir():
            if f.name != "tokenizer_config.json" and not (out / f.name).exists():
                (out / f.name).symlink_to(f.resolve())
        config["chat_template"] = (llama_source() / TEMPLATE).read_text()
        tmp = out / "tokenizer_config.json.partial"
        tmp.write_text(json.dumps(config, indent=2))
        tmp.rename(out / "tokenizer_config.json")
    return out


def command(name: str, model: Path, port: int) -> list[str]:
    py = sys.executable
    if name == "gptoss":
        return [py, "-m", "gptoss_mlx", "serve", "-m", str(model), "--port", str(port),
                "--temperature", "0"]  # fmt: skip
    if name == "mlx_lm":
        return [py, "-m", "mlx_lm.server", "--model", str(model), "--port", str(port)]
    if name == "llama_cpp":
        from scripts.bench import gguf_of, llama_binary

        return [str(llama_binary("llama-server")), "-m", str(gguf_of(model)), "--host", "127.0.0.1",
                "--port", str(port), "--jinja", "-np", "1", "-c", "16384",
                "-t", str(os.cpu_count() or 2)]  # fmt: skip
    raise SystemExit(f"unknown server {name!r}; choose from {', '.join(SERVERS)}")


def start(cmd: list[str], port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[0]} exited; see {log}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{cmd[0]} did not start; see {log}")


def served_model(url: str, name: str) -> str:
    if name == "mlx_lm":
        return "default_model"  # mlx_lm.server's name for the model it was started with
    try:
        return httpx.get(url + "/v1/models").json()["data"][0]["id"]
    except (ValueError, KeyError, IndexError):
        return "default_model"


MESSAGE = re.compile(
    r"<\|channel\|>(\w+)[^<]*(?:<\|constrain\|>\w+)?<\|message\|>(.*?)(?=<\|end\|>|<\|return\|>|<\|start\|>|$)",
    re.S,
)


def unmark(content: str) -> tuple[str, str]:
    """(answer, reasoning) from content with harmony markup left in it (mlx_lm.server passes the
    model's channels through; its gpt-oss template refuses them back), as a client must clean it."""
    if "<|channel|>" not in content:
        return content, ""
    parts = MESSAGE.findall(content)
    answer = "".join(text for channel, text in parts if channel != "analysis")
    return answer, "".join(text for channel, text in parts if channel == "analysis")


def usage_of(body: dict[str, Any]) -> dict[str, Any]:
    """Prompt and cached tokens from a reply's usage (llama-server: from its timings)."""
    u = body.get("usage") or {}
    if not u:
        return {}
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens")
    if cached is None and body.get("timings"):  # llama-server: the prompt tokens it ran
        cached = u["prompt_tokens"] - body["timings"].get("prompt_n", 0)
    return {"prompt_tokens": u["prompt_tokens"], "cached_tokens": cached}


def first_token(url: str, messages: list[dict[str, Any]], model: str) -> tuple[float, dict]:
    """Time to first token, measured the same way for every server: the wall time of the turn's
    request cut at one token (streamed text would not do: a server may hold back the first
    tokens, e.g. a message header, and a random-weight model writes no header at all). Streamed,
    since llama-server answers a non-streamed reply its gpt-oss parser rejects with a 500."""
    body = {"model": model, "messages": messages, "max_tokens": 1, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}}  # fmt: skip
    t0, usage = time.perf_counter(), {}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data:") and line.strip() != "data: [DONE]":
                usage = usage_of(json.loads(line[5:])) or usage
    return time.perf_counter() - t0, usage


def turn(
    url: str, messages: list[dict[str, Any]], max_tokens: int, model: str
) -> tuple[float, dict]:
    """One streamed request: (its wall time, the assistant message to send back)."""
    body = {"model": model, "messages": messages, "stream": True,
            "max_tokens": max_tokens, "temperature": 0.0}  # fmt: skip
    t0 = time.perf_counter()
    content, reasoning = [], []
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            for choice in json.loads(line[5:]).get("choices") or []:
                d = choice.get("delta") or {}
                reasoning.append(d.get("reasoning") or d.get("reasoning_content") or "")
                content.append(d.get("content") or "")
    text, thought = unmark("".join(content))
    reply = {"role": "assistant", "content": text}
    if thought := "".join(reasoning) + thought:
        reply["reasoning"] = reply["reasoning_content"] = reply["thinking"] = thought
    return time.perf_counter() - t0, reply


def replay(url: str, turns: int, words: int, max_tokens: int, model: str) -> dict[str, Any]:
    rng = random.Random(0)
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a coding agent."}]
    ttfts, usages, total = [], [], 0.0
    for t in range(turns):
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        messages.append({"role": "user", "content": f"Step {t + 1}. Tool output: {text}"})
        ttft, usage = first_token(url, messages, model)
        seconds, reply = turn(url, messages, max_tokens, model)
        ttfts.append(ttft)
        usages.append(usage)
        total += seconds
        messages.append(reply)
    return {"ttft": ttfts, "usage": usages, "total": total}


def measure(name: str, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    proc = start(command(name, model, port), port, Path(f"/tmp/bench-{name}.log"))
    try:
        url = f"http://127.0.0.1:{port}"
        served = served_model(url, name)
        turn(url, [{"role": "user", "content": "warm up"}], 4, served)  # loads, compiles
        return replay(url, args.turns, args.words, args.max_tokens, served)
    finally:
        proc.terminate()
        proc.wait(30)


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ttft = [statistics.median(r["ttft"][t] for r in runs) for t in range(len(runs[0]["ttft"]))]
    return {"ttft": ttft, "total": statistics.median(r["total"] for r in runs),
            "last_over_first": ttft[-1] / ttft[0], "usage": runs[-1]["usage"], "runs": runs}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=Path)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--words", type=int, default=400)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--servers", default=",".join(SERVERS))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    names = args.servers.split(",")
    model = with_chat_template(args.model.resolve())
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            print(f"round {r + 1}: {name}", file=sys.stderr, flush=True)
            runs[name].append(measure(name, model, args))
    results: dict[str, Any] = {n: median_run(runs[n]) for n in names}
    print("turn  " + "  ".join(f"{n:>10}" for n in names) + "  (TTFT, s; prompt/cached tokens)")
    for t in range(args.turns):
        cells = []
        for n in names:
            u = results[n]["usage"][t]
            cells.append(
                f"{results[n]['ttft'][t]:>10.3f} {u.get('prompt_tokens', '?')}/{u.get('cached_tokens', '?')}"
            )
        print(f"{t + 1:>4}  " + "  ".join(cells))
    for n in names:
        r = results[n]
        print(
            f"{n}: total {r['total']:.2f} s; turn {args.turns} TTFT / turn 1 = {r['last_over_first']:.2f}x"
        )
    if "gptoss" in results:
        for n in names:
            if n != "gptoss":
                ratio = results[n]["ttft"][-1] / results["gptoss"]["ttft"][-1]
                results[f"{n}_over_gptoss_last_turn"] = ratio
                total = results[n]["total"] / results["gptoss"]["total"]
                results[f"{n}_over_gptoss_total"] = total
                print(
                    f"turn {args.turns} TTFT: {n} / gptoss = {ratio:.2f}x; total time {total:.2f}x"
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
