"""Generation throughput: tunelab's batched engine against a per-example `model.generate` loop.

The same 100 handbook questions (examples/handbook/eval.jsonl, topped up with the first unique
questions of train.jsonl) go through both, in one run, on the bundled SmolLM2-135M-Instruct with
its chat template, greedy, max_new_tokens 64, both stopping on the same end tokens:

- peer: for each question, `model.generate(input_ids, do_sample=False)` at batch size 1, the loop
  most evaluation scripts write;
- tunelab: `Generator.generate` (length-sorted, left-padded batches with a KV cache, the shared
  chat-template prefix computed once), all 100 questions in one batch by default.

It prints both wall times, tokens/s, the speedup and how many greedy answers are token-identical.
Where answers differ it shows, at the first differing token, the gap between the two top logits of
a batch-1 forward: a gap near float rounding means batched/padded matmuls (different summation
order) flipped a near tie, not a decoding bug.

    .venv/bin/python bench/eval_throughput.py [--n 100] [--batch-size 100] [--threads N] [--json]

float32 by default: bf16 is only faster on CPUs with avx512_bf16/AMX, and fp32 keeps the greedy
comparison free of bf16 rounding. On a machine shared with other jobs, --threads 1 gives steadier
numbers (two OpenMP threads on an oversubscribed machine spin against each other).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tunelab.models.generate import GenerationConfig, Generator  # noqa: E402

HANDBOOK = ROOT / "examples" / "handbook"


def handbook_questions(n: int, data: list[Path] | None = None) -> list[str]:
    files = data or [HANDBOOK / "eval.jsonl", HANDBOOK / "train.jsonl"]
    seen: dict[str, None] = {}
    for path in files:
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line) if line.strip() else {}
            msgs = row.get("messages") or []
            user = next((m["content"] for m in msgs if m.get("role") == "user"), None)
            if user:
                seen.setdefault(user, None)
            if len(seen) >= n:
                return list(seen)
    if not seen:
        raise SystemExit(f"no questions found in {', '.join(map(str, files))}")
    return list(seen)


def load(dtype: str):
    from tunelab.models import load_model_and_tokenizer

    return load_model_and_tokenizer("smollm2-135m-instruct", dtype=dtype, device="cpu")


def run_peer(model, tok, prompts, max_new: int, stop_ids: list[int], pad_id: int):
    """(new tokens per prompt, wall seconds, CPU seconds of this process)."""
    outs = []
    cpu = time.process_time()
    start = time.perf_counter()
    for i, p in enumerate(prompts, start=1):
        if i % 20 == 0:
            print(f"  peer: {i}/{len(prompts)} after {time.perf_counter() - start:.0f} s", file=sys.stderr)
        enc = tok.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.inference_mode():
            seq = model.generate(**enc, max_new_tokens=max_new, do_sample=False, eos_token_id=stop_ids,
                                 pad_token_id=pad_id)
        outs.append(seq[0, enc["input_ids"].shape[1]:].tolist())
    return outs, time.perf_counter() - start, time.process_time() - cpu


def strip_end(tokens: list[int], stop_ids: set[int]) -> list[int]:
    cut = next((i for i, t in enumerate(tokens) if t in stop_ids), len(tokens))
    return tokens[:cut]


def top2_gap(model, prompt_ids: list[int], prefix: list[int]) -> float:
    """Gap between the two largest next-token logits after prompt + prefix, at batch size 1."""
    ids = torch.tensor([prompt_ids + prefix])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, -1].float()
    top = torch.topk(logits, 2).values
    return float(top[0] - top[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: physical cores)")
    ap.add_argument("--skip-peer", action="store_true", help="time tunelab's engine only")
    ap.add_argument("--data", type=Path, nargs="*", help="chat JSONL files to take questions from")
    ap.add_argument("--json", action="store_true", help="also print one JSON line with the numbers")
    args = ap.parse_args()

    questions = handbook_questions(args.n, args.data)
    prompts = [[{"role": "user", "content": q}] for q in questions]
    t0 = time.perf_counter()
    model, tok = load(args.dtype)
    model.eval()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"loaded smollm2-135m-instruct ({args.dtype}) in {time.perf_counter() - t0:.1f} s; "
          f"{len(prompts)} questions, max_new_tokens {args.max_new_tokens}, torch threads {torch.get_num_threads()}")

    gen = Generator(model, tok, threads=args.threads)
    stop_ids = sorted(gen.stop_token_ids)
    # warm both paths once (first-call allocations, lazy initialisation) outside the timings
    run_peer(model, tok, prompts[:1], 4, stop_ids, gen.pad_id)
    gen.generate(prompts[:2], GenerationConfig(max_new_tokens=4))

    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    cpu = time.process_time()
    start = time.perf_counter()
    ours = gen.generate(prompts, cfg)
    ours_s = time.perf_counter() - start
    ours_cpu = time.process_time() - cpu
    ours_tokens = sum(o.n_new_tokens for o in ours)
    print(f"tunelab: {ours_s:.1f} s, {ours_tokens} tokens", file=sys.stderr)
    if args.skip_peer:
        return
    peer_raw, peer_s, peer_cpu = run_peer(model, tok, prompts, args.max_new_tokens, stop_ids, gen.pad_id)

    peer = [strip_end(t, set(stop_ids)) for t in peer_raw]
    peer_tokens = sum(len(t) for t in peer_raw)
    same = [p == o.token_ids for p, o in zip(peer, ours, strict=True)]
    report = {
        "model": "smollm2-135m-instruct", "dtype": args.dtype, "n": len(prompts),
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "peer_s": round(peer_s, 2), "tunelab_s": round(ours_s, 2),
        "peer_tokens": peer_tokens, "tunelab_tokens": ours_tokens,
        "peer_tok_s": round(peer_tokens / peer_s, 1), "tunelab_tok_s": round(ours_tokens / ours_s, 1),
        "speedup": round(peer_s / ours_s, 2), "peer_cpu_s": round(peer_cpu, 1), "tunelab_cpu_s": round(ours_cpu, 1),
        "cpu_time_ratio": round(peer_cpu / ours_cpu, 2), "identical": sum(same),
    }
    print(f"peer    (per-example model.generate, batch 1): {peer_s:8.1f} s  {peer_tokens:6d} tokens  "
          f"{report['peer_tok_s']:7.1f} tok/s")
    print(f"tunelab (Generator, batch {args.batch_size:3d})             : {ours_s:8.1f} s  {ours_tokens:6d} tokens  "
          f"{report['tunelab_tok_s']:7.1f} tok/s")
    print(f"speedup end to end: {report['speedup']:.2f}x; identical greedy outputs: {sum(same)}/{len(same)}")
    # CPU seconds of this process: steadier than wall time when other jobs share the machine
    print(f"CPU time: peer {peer_cpu:.1f} s, tunelab {ours_cpu:.1f} s, ratio {report['cpu_time_ratio']:.2f}x")
    for i, ok in enumerate(same):
        if ok:
            continue
        a, b = peer[i], ours[i].token_ids
        k = next((j for j in range(min(len(a), len(b))) if a[j] != b[j]), min(len(a), len(b)))
        gap = top2_gap(model, gen.encode(prompts[i]), a[:k])
        print(f"  differs #{i} at token {k}: top-2 logit gap at batch 1 = {gap:.2e}\n"
              f"    peer:    {tok.decode(a, skip_special_tokens=True)!r}\n"
              f"    tunelab: {ours[i].text!r}")
    if args.json:
        print(json.dumps(report))


if __name__ == "__main__":
    main()
