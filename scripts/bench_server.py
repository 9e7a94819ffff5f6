"""Agent-style replay against OpenAI-compatible servers: a conversation resent in full each turn,
as clients do; time to first token per turn and total time, for `gptoss serve`, `mlx_lm.server`
and llama.cpp's `llama-server` on the same checkpoint, in one run.

    python scripts/bench_server.py MODEL_DIR [--turns 10] [--words 400] [--max-tokens 48]
        [--servers gptoss,mlx_lm,llama_cpp] [--rounds 1] [--json FILE]

Each turn adds a user message of about `--words` words plus the previous reply (its reasoning
sent back as `reasoning`, as the OpenRouter convention asks; llama.cpp's as `reasoning_content`).
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


def served_model(url: str) -> str:
    try:
        return httpx.get(url + "/v1/models").json()["data"][0]["id"]
    except (ValueError, KeyError, IndexError):
        return "default_model"  # mlx_lm.server's name for the model it was started with


def turn(
    url: str, messages: list[dict[str, Any]], max_tokens: int, model: str
) -> tuple[float, dict, dict]:
    """One streamed request: (time to first token, the assistant message to send back, usage)."""
    body = {"model": model, "messages": messages, "stream": True,
            "max_tokens": max_tokens, "temperature": 0.0,
            "stream_options": {"include_usage": True}}  # fmt: skip
    t0, ttft = time.perf_counter(), None
    content, reasoning, usage = [], [], {}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                u = chunk["usage"]
                cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens")
                if cached is None and chunk.get("timings"):  # llama-server: prompt tokens run
                    cached = u["prompt_tokens"] - chunk["timings"].get("prompt_n", 0)
                usage = {"prompt_tokens": u["prompt_tokens"], "cached_tokens": cached}
            for choice in chunk.get("choices") or []:
                d = choice.get("delta") or {}
                thought = d.get("reasoning") or d.get("reasoning_content") or ""
                if (thought or d.get("content")) and ttft is None:
                    ttft = time.perf_counter() - t0
                reasoning.append(thought)
                content.append(d.get("content") or "")
    reply = {"role": "assistant", "content": "".join(content)}
    if "".join(reasoning):
        reply["reasoning"] = reply["reasoning_content"] = "".join(reasoning)
    return ttft if ttft is not None else time.perf_counter() - t0, reply, usage


def replay(url: str, turns: int, words: int, max_tokens: int, model: str) -> dict[str, Any]:
    rng = random.Random(0)
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a coding agent."}]
    ttfts, usages, t0 = [], [], time.perf_counter()
    for t in range(turns):
        text = " ".join(rng.choice(WORDS) for _ in range(words))
        messages.append({"role": "user", "content": f"Step {t + 1}. Tool output: {text}"})
        ttft, reply, usage = turn(url, messages, max_tokens, model)
        ttfts.append(ttft)
        usages.append(usage)
        messages.append(reply)
    return {"ttft": ttfts, "usage": usages, "total": time.perf_counter() - t0}


def measure(name: str, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    proc = start(command(name, model, port), port, Path(f"/tmp/bench-{name}.log"))
    try:
        url = f"http://127.0.0.1:{port}"
        served = served_model(url)
        turn(url, [{"role": "user", "content": "warm up"}], 4, served)
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
