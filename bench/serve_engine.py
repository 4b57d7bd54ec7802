"""Serving engine throughput: continuous batching against one-request-at-a-time serving of the same engine.

N chat requests (handbook questions, the bundled SmolLM2-135M-Instruct with its chat template, greedy,
max_tokens each) are submitted to the transformers engine at once, from N threads, first with
max_batch=N (continuous batching: all of them decode together, and each leaves the batch when it is done)
and then with max_batch=1 (the baseline: each request waits for the one before it; --baseline-n of the
same requests, as one-at-a-time tokens/s does not depend on how many wait, and it keeps the run bounded on a
slow machine). It prints the
aggregate generated tokens/s of each, the ratio, p50/p95 request latency, and whether every request got
the same greedy tokens both ways (they must: a row computes exactly what it would alone).

This measures the engine without HTTP; bench/serve_load.py measures the server end to end.

    .venv/bin/python bench/serve_engine.py [--n 32] [--baseline-n 8] [--max-tokens 48] [--threads N] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunelab.serve.engine import GenerationRequest  # noqa: E402
from tunelab.serve.engines import load_engine  # noqa: E402

HANDBOOK = ROOT / "examples" / "handbook"


def questions(n: int) -> list[str]:
    seen: list[str] = []
    for name in ("eval.jsonl", "train.jsonl"):
        file = HANDBOOK / name
        if not file.is_file():
            continue
        for line in file.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            q = row.get("question") or row.get("prompt") or next(
                (m["content"] for m in row.get("messages", []) if m.get("role") == "user"), None)
            if q and q not in seen:
                seen.append(q)
            if len(seen) >= n:
                return seen
    return (seen or ["Tell me about paid leave."]) * (n // max(1, len(seen)) + 1)


def serve_all(model: str, prompts: list[str], max_batch: int, max_tokens: int, dtype: str,
              threads: int | None) -> dict:
    import os

    if threads:
        os.environ["TUNELAB_THREADS"] = str(threads)
    engine = load_engine("transformers", model, {}, device="cpu", max_batch=max_batch, dtype=dtype)
    try:
        ids = [engine.render_chat([{"role": "user", "content": p}]) for p in prompts]
        engine.submit(GenerationRequest(engine.base_name, ids[0], 4)).result()  # warm-up
        results: list = [None] * len(ids)
        latencies = [0.0] * len(ids)
        start = threading.Barrier(len(ids) + 1)

        def client(i: int) -> None:
            start.wait()
            t0 = time.perf_counter()
            results[i] = engine.submit(GenerationRequest(engine.base_name, ids[i], max_tokens)).result()
            latencies[i] = time.perf_counter() - t0

        workers = [threading.Thread(target=client, args=(i,)) for i in range(len(ids))]
        for w in workers:
            w.start()
        start.wait()
        t0 = time.perf_counter()
        for w in workers:
            w.join()
        wall = time.perf_counter() - t0
        trace = list(engine.batch_trace)
    finally:
        engine.close()
    tokens = sum(r[2].completion_tokens for r in results)
    lat = sorted(latencies)
    return {"max_batch": max_batch, "wall_s": round(wall, 2), "tokens": tokens, "tokens_per_s": round(tokens / wall, 1),
            "p50_latency_s": round(statistics.median(lat), 2), "p95_latency_s": round(lat[int(0.95 * (len(lat) - 1))], 2),
            "mean_batch": round(sum(trace) / max(1, len(trace)), 1), "token_ids": [r[1] for r in results]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--baseline-n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    prompts = questions(args.n)[: args.n]
    batched = serve_all(args.model, prompts, args.n, args.max_tokens, args.dtype, args.threads)
    print(f"continuous batching done in {batched['wall_s']}s", file=sys.stderr, flush=True)
    k = min(args.baseline_n, args.n)
    single = serve_all(args.model, prompts[:k], 1, args.max_tokens, args.dtype, args.threads)
    same = sum(a == b for a, b in zip(batched.pop("token_ids")[:k], single.pop("token_ids"), strict=True))
    ratio = batched["tokens_per_s"] / single["tokens_per_s"]
    report = {"n": args.n, "baseline_n": k, "max_tokens": args.max_tokens, "continuous": batched, "one_at_a_time": single,
              "throughput_ratio": round(ratio, 2), "identical_greedy_outputs": f"{same}/{k}"}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for label, r in (("continuous batching", batched), ("one at a time", single)):
        print(f"{label:>20}: max_batch={r['max_batch']:>3}  {r['tokens']} tokens in {r['wall_s']}s = "
              f"{r['tokens_per_s']} tok/s  p50 {r['p50_latency_s']}s  p95 {r['p95_latency_s']}s  "
              f"mean batch {r['mean_batch']}")
    print(f"throughput ratio: {ratio:.2f}x   identical greedy outputs (the baseline's {k}): {same}/{k}")


if __name__ == "__main__":
    main()
