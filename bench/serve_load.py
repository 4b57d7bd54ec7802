"""Concurrent chat clients against `tunelab serve`'s app on loopback: continuous batching against
one-request-at-a-time serving of the same engine.

For each of two engine configs (max_batch=N, then max_batch=1: the same engine serving one request at a
time) the script loads the engine, starts the server on 127.0.0.1 (uvicorn in a thread, a free port),
and runs C concurrent clients (default 64), each sending chat requests one after another (handbook
questions, greedy, max_tokens fixed) until the phase's time is up or its request count is reached: both
bounds hold, and a request still running at the time limit is waited for (up to the request timeout)
and counted. Then it reports, per phase:

- failed requests (any non-200 or transport error; must be 0: the script exits 1 otherwise),
- aggregate completion tokens/s (all tokens of all answered requests / the phase's wall time),
- p50 / p95 request latency (arrival to last byte, queueing included, as a client sees it),

and the throughput ratio batched / one-at-a-time, with the machine it ran on (CPU, flags, threads:
bench/sweep.py's helper). Wall time, not CPU time: serving throughput is what a client gets per second.

    .venv/bin/python bench/serve_load.py                                  # bundled SmolLM2, 64 clients, 30 s each
    .venv/bin/python bench/serve_load.py --clients 16 --duration 10 --max-requests 200
    .venv/bin/python bench/serve_load.py --tiny --duration 5             # quick check on a tiny random model
    .venv/bin/python bench/serve_load.py --engine llama.cpp --model model.gguf
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from eval_throughput import handbook_questions  # noqa: E402
from sweep import machine, tiny_model  # noqa: E402

DEFAULT_MODEL = "smollm2-135m-instruct"


class _Server:
    """The app on 127.0.0.1, in a thread."""

    def __init__(self, app: Any):
        import uvicorn

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                                    access_log=False))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.time() + 60
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise SystemExit("the server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=60)


async def _clients(url: str, model: str, questions: list[str], args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    results: list[tuple[int, float, int]] = []  # (status, latency s, completion tokens)
    failures: list[str] = []
    started = 0
    t0 = time.perf_counter()
    stop_at = t0 + args.duration
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)

    async def client(k: int, http: httpx.AsyncClient) -> None:
        nonlocal started
        i = k
        while time.perf_counter() < stop_at and started < args.max_requests:
            started += 1
            body = {"model": model, "messages": [{"role": "user", "content": questions[i % len(questions)]}],
                    "max_tokens": args.max_tokens, "temperature": 0}
            i += args.clients
            t = time.perf_counter()
            try:
                r = await http.post(url + "/v1/chat/completions", json=body)
                status = r.status_code
                tokens = r.json()["usage"]["completion_tokens"] if status == 200 else 0
                if status != 200:
                    failures.append(f"{status}: {r.text[:200]}")
            except httpx.HTTPError as exc:
                status, tokens = 0, 0
                failures.append(f"{type(exc).__name__}: {exc}")
            results.append((status, time.perf_counter() - t, tokens))

    async with httpx.AsyncClient(limits=limits, timeout=args.request_timeout + 30) as http:
        await asyncio.gather(*(client(k, http) for k in range(args.clients)))
    wall = time.perf_counter() - t0
    ok = [r for r in results if r[0] == 200]
    latencies = sorted(r[1] for r in ok)
    tokens = sum(r[2] for r in ok)

    def pct(q: float) -> float | None:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 3) if latencies else None

    return {"requests": len(results), "failed": len(results) - len(ok), "failures": failures[:5],
            "wall_s": round(wall, 2), "completion_tokens": tokens, "tokens_per_s": round(tokens / wall, 1),
            "p50_latency_s": pct(0.5), "p95_latency_s": pct(0.95),
            "mean_latency_s": round(statistics.fmean(latencies), 3) if latencies else None}


def phase(args: argparse.Namespace, model: str, max_batch: int, questions: list[str]) -> dict[str, Any]:
    from tunelab.serve import engines
    from tunelab.serve.app import create_app
    from tunelab.serve.names import served_base_name

    engine = engines.load_engine(args.engine, model, {}, device=args.device, max_batch=max_batch, dtype=args.dtype)
    try:
        name = served_base_name(model)
        app = create_app(engine, api_key=None, served_name=name, request_timeout_s=args.request_timeout,
                         log_path=None, feedback_db=None, max_tokens_limit=max(args.max_tokens, 1))
        with _Server(app) as server:
            # one request first: model warm-up (first-call allocations) is not part of the measurement
            asyncio.run(_warm(server.url, name, questions[0]))
            report = asyncio.run(_clients(server.url, name, questions, args))
    finally:
        engine.close()
    report["max_batch"] = max_batch
    return report


async def _warm(url: str, model: str, question: str) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=600) as http:
        r = await http.post(url + "/v1/chat/completions", json={
            "model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 4,
            "temperature": 0})
        if r.status_code != 200:
            raise SystemExit(f"warm-up request failed: {r.status_code} {r.text[:300]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--engine", default="transformers", help="transformers|llama.cpp|vllm")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds each phase sends requests")
    parser.add_argument("--max-requests", type=int, default=2000, help="most requests a phase sends")
    parser.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request")
    parser.add_argument("--max-batch", type=int, default=64, help="the batched phase's max_batch")
    parser.add_argument("--request-timeout", type=float, default=300.0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads of the engine (default: TUNELAB_THREADS, else physical cores)")
    parser.add_argument("--tiny", action="store_true", help="a tiny random model with the bundled tokenizer")
    parser.add_argument("--json", action="store_true", help="print the report as JSON too")
    args = parser.parse_args()

    import torch

    from tunelab.models.hardware import physical_cores

    threads = args.threads or int(os.environ.get("TUNELAB_THREADS") or 0) or physical_cores()
    # the engine decodes in its own scheduler thread, which takes its thread count from TUNELAB_THREADS
    # (torch.set_num_threads here only reaches this thread): set both, so the reported count is the used one
    os.environ["TUNELAB_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    questions = handbook_questions(max(args.clients, 64))
    with tempfile.TemporaryDirectory() as tmp:
        model = str(tiny_model(Path(tmp) / "tiny")) if args.tiny else args.model
        batched = phase(args, model, args.max_batch, questions)
        single = phase(args, model, 1, questions)
    ratio = batched["tokens_per_s"] / single["tokens_per_s"] if single["tokens_per_s"] else float("inf")
    print(f"machine: {machine(threads)}")
    print(f"model {'tiny random (--tiny)' if args.tiny else args.model}, engine {args.engine}, {args.clients} "
          f"clients, {args.duration:g} s or {args.max_requests} requests per phase, max_tokens {args.max_tokens}, "
          "greedy, loopback")
    for label, r in (("continuous batching", batched), ("one at a time     ", single)):
        print(f"{label} (max_batch {r['max_batch']:3d}): {r['requests']:5d} requests, {r['failed']} failed, "
              f"{r['completion_tokens']:6d} tokens in {r['wall_s']:6.1f} s = {r['tokens_per_s']:8.1f} tok/s; "
              f"latency p50 {r['p50_latency_s']} s, p95 {r['p95_latency_s']} s")
        for failure in r["failures"]:
            print(f"    failed: {failure}")
    print(f"throughput ratio, batched / one at a time: {ratio:.2f}x")
    if args.json:
        print(json.dumps({"batched": batched, "one_at_a_time": single, "ratio": round(ratio, 2),
                          "machine": machine(threads), "clients": args.clients, "engine": args.engine}))
    return 1 if batched["failed"] or single["failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
