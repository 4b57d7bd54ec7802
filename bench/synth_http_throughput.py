"""Throughput of the synth HTTP teacher path at concurrency 1, 4 and 16, as a ratio to sequential calls.

A local OpenAI-compatible chat-completions server (http.server, one thread per connection, on
127.0.0.1) answers every request after a FIXED artificial latency (--latency-ms, default 100 ms) with
a valid qa reply. The server does no work, so the numbers measure the client: how well tunelab keeps
requests in flight, not how fast a model generates. A real server's throughput under concurrency is
its own (batching, GPU); this bench cannot say anything about that.

Measured, each over the same --n chunks (default 64) of examples/handbook/docs:

- sequential: a plain loop of httpx.post calls, one after the other (the baseline);
- tunelab at concurrency 1, 4, 16: `tunelab.synth.generate.ask_teacher` over OpenAIBackend, the path
  `tunelab data synth` takes (prompt rendering, JSON validation, candidate records), call cache off.

The ratio is calls/s over the baseline's calls/s; with a fixed latency the ideal is 1, 4 and 16.

    .venv/bin/python bench/synth_http_throughput.py [--n 64] [--latency-ms 100] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402

from tunelab.documents.chunk import chunk_documents  # noqa: E402
from tunelab.documents.ingest import ingest  # noqa: E402
from tunelab.llm import OpenAIBackend  # noqa: E402
from tunelab.synth.generate import MODES, Provenance, ask_teacher  # noqa: E402
from tunelab.synth.templates import load_template  # noqa: E402

REPLY = json.dumps({"pairs": [{"question": "How many days of annual leave do full-time employees get?",
                               "answer": "Full-time employees get 27 days of paid annual leave per year."}]})


def serve(latency_s: float) -> ThreadingHTTPServer:
    body = json.dumps({"id": "x", "object": "chat.completion", "model": "bench",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": REPLY},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(latency_s)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.request_queue_size = 64
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=64, help="chunks (= teacher calls) per measurement")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="the server's fixed latency per request")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    chunks = chunk_documents(ingest(ROOT / "examples" / "handbook" / "docs").documents, 256, 32)
    chunks = (chunks * (args.n // len(chunks) + 1))[: args.n]
    template = load_template("qa")
    httpd = serve(args.latency_ms / 1000)
    base_url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    conversations = [template.render(text=c.text, source=c.source, n=3, turns=3, labels="") for c in chunks]

    with httpx.Client(timeout=30) as client:  # the baseline: one call after the other
        t0 = time.perf_counter()
        for conv in conversations:
            resp = client.post(f"{base_url}/chat/completions", json={"model": "bench", "messages": conv})
            resp.raise_for_status()
            json.loads(resp.json()["choices"][0]["message"]["content"])
        sequential_s = time.perf_counter() - t0

    results = {"server_latency_ms": args.latency_ms, "calls": args.n,
               "sequential": {"wall_s": round(sequential_s, 3), "calls_per_s": round(args.n / sequential_s, 2)},
               "tunelab": {}}
    for concurrency in (1, 4, 16):
        backend = OpenAIBackend("bench", base_url, concurrency=concurrency, timeout_s=30)
        prov = Provenance(backend.name, template.version, "qa")
        t0 = time.perf_counter()
        replies = ask_teacher(backend, template, chunks, MODES["qa"], prov, per_chunk=3)
        wall = time.perf_counter() - t0
        backend.close()
        assert all(r.result.ok for r in replies), "every bench call must succeed"
        results["tunelab"][str(concurrency)] = {
            "wall_s": round(wall, 3), "calls_per_s": round(args.n / wall, 2),
            "ratio_to_sequential": round(sequential_s / wall, 2), "ideal": concurrency}
    httpd.shutdown()

    if args.json:
        print(json.dumps(results))
        return
    print(f"synth HTTP teacher path, {args.n} calls, server latency fixed at {args.latency_ms:g} ms "
          "(the ratio measures the client's concurrency, not a model server)")
    print(f"  sequential httpx loop: {sequential_s:6.2f} s  {args.n / sequential_s:6.1f} calls/s  (1.00x)")
    for c, r in results["tunelab"].items():
        print(f"  tunelab concurrency {c:>2}: {r['wall_s']:6.2f} s  {r['calls_per_s']:6.1f} calls/s  "
              f"({r['ratio_to_sequential']:.2f}x, ideal {r['ideal']}x)")


if __name__ == "__main__":
    main()
