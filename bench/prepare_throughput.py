"""Throughput of tunelab's data-preparation core (clean -> PII -> exact dedup -> near dedup) at growing
sizes, and of near-dedup against a named peer: datasketch MinHash + MinHashLSH used the way its docs show.

Synthetic chat records (a ~15-word user question, a ~40-word assistant answer) are generated with
injected exact duplicates (~5%, differing only in case, spacing or punctuation), near duplicates (~5%:
a changed last word, an appended sentence, or a one-word edit in the middle, which sits just below a
0.85 threshold on purpose), some PII and some whitespace/control-character noise.

    python bench/prepare_throughput.py                      # 10k, 100k, 1M rows
    python bench/prepare_throughput.py --sizes 10000,100000 --peer-max-seconds 60

Prints rows/s per stage, how time per row grows with size, and for the peer: its time, the ratio
tunelab/peer, and how many records each removes (plus how many removals they share).
"""

from __future__ import annotations

import argparse
import gc
import re
import time
from dataclasses import dataclass, field

import numpy as np

from tunelab.data.clean import CleanOptions, clean_records
from tunelab.data.dedup import choose_bands, exact_dedup, near_dedup
from tunelab.data.pii import scrub_records
from tunelab.data.records import Record

STAGES = ("clean", "pii", "exact", "near")
_SYLLABLES = (
    "ka lo mi ne ru sa ti vo be da fe gi ho ju la mo ni po qu re si to vu wa xe yo ze an el in on".split()
)


# ------------------------------------------------------------------------------------------ data
def _vocab(rng: np.random.Generator, size: int) -> np.ndarray:
    words: set[str] = set()
    while len(words) < size:
        n = int(rng.integers(1, 4))
        words.add("".join(rng.choice(_SYLLABLES, n)))
    return np.array(sorted(words))


def _card(rng: np.random.Generator) -> str:
    digits = [4] + [int(d) for d in rng.integers(0, 10, 14)]
    total = 0
    for i, d in enumerate(reversed(digits)):  # Luhn check digit for the 15 digits so far
        total += (d * 2 - 9 if d > 4 else d * 2) if i % 2 == 0 else d
    digits.append((10 - total % 10) % 10)
    s = "".join(map(str, digits))
    return " ".join(s[i : i + 4] for i in range(0, 16, 4))


def _pii(rng: np.random.Generator) -> str:
    kind = int(rng.integers(0, 4))
    if kind == 0:
        return f"user{int(rng.integers(0, 10**6))}@example.com"
    if kind == 1:
        return f"+1 (415) 555-{int(rng.integers(0, 10**4)):04d}"
    if kind == 2:
        return _card(rng)
    return ".".join(str(int(x)) for x in rng.integers(1, 255, 4))


def make_records(n: int, seed: int = 0) -> list[Record]:
    """n synthetic chat records with ~5% exact and ~5% near duplicates, PII and whitespace noise."""
    rng = np.random.default_rng(seed)
    vocab = _vocab(rng, 20_000)
    weights = 1.0 / np.arange(1, len(vocab) + 1) ** 1.05  # Zipf-like word frequencies
    weights /= weights.sum()
    q_len = rng.integers(12, 19, n)
    a_len = rng.integers(34, 47, n)
    # Word indices, not word strings: a list of 55M fresh strings would need several GB at 1M rows.
    picks = rng.choice(len(vocab), int(q_len.sum() + a_len.sum()), p=weights).astype(np.int32)
    vocab_list = vocab.tolist()
    roles = rng.random(n)
    pos = 0
    records: list[Record] = []
    for i in range(n):
        q = [vocab_list[j] for j in picks[pos : pos + q_len[i]].tolist()]
        pos += q_len[i]
        a = [vocab_list[j] for j in picks[pos : pos + a_len[i]].tolist()]
        pos += a_len[i]
        if roles[i] < 0.10:
            a.insert(len(a) // 2, _pii(rng))
        if roles[i] > 0.97:
            q.append("  \t")  # whitespace noise for the cleaner
            a.insert(3, "\x07")
        records.append(_chat(" ".join(q).capitalize() + "?", " ".join(a).capitalize() + ".", i))
    _inject_duplicates(records, rng)
    return records


def _chat(question: str, answer: str, i: int) -> Record:
    messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return Record(kind="chat", messages=messages, meta={"file": "synthetic.jsonl", "line": i + 1})


def _inject_duplicates(records: list[Record], rng: np.random.Generator) -> None:
    n = len(records)
    if n < 20:
        return
    targets = rng.permutation(np.arange(n // 10, n))[: n // 10]
    for k, t in enumerate(targets.tolist()):
        src = records[int(rng.integers(0, t))]
        q, a = src.messages[0]["content"], src.messages[1]["content"]
        if k % 2 == 0:  # exact after normalisation
            q, a = q.upper(), a.replace(" ", "  ").rstrip(".") + "!"
        elif k % 6 == 1:
            a = a.rsplit(" ", 1)[0] + " changed."
        elif k % 6 == 3:
            a = a + " Hope this helps."
        else:
            w = a.split(" ")
            w[len(w) // 2] = "edited"
            a = " ".join(w)
        records[t] = _chat(q, a, t)


# ------------------------------------------------------------------------------------------- runs
@dataclass
class Run:
    rows: int
    seconds: dict[str, float] = field(default_factory=dict)  # wall clock
    cpu: dict[str, float] = field(default_factory=dict)  # process CPU time: robust to a busy machine
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> float:
        return sum(self.seconds[s] for s in STAGES)

    @property
    def total_cpu(self) -> float:
        return sum(self.cpu[s] for s in STAGES)


class _Stage:
    def __init__(self, run: Run, name: str):
        self.run, self.name = run, name

    def __enter__(self) -> None:
        self.t, self.c = time.perf_counter(), time.process_time()

    def __exit__(self, *exc: object) -> None:
        self.run.seconds[self.name] = time.perf_counter() - self.t
        self.run.cpu[self.name] = time.process_time() - self.c


def run_tunelab(
    records: list[Record], threshold: float, num_perm: int, seed: int
) -> tuple[Run, list[Record]]:
    run = Run(rows=len(records))
    with _Stage(run, "clean"):
        recs, dropped = clean_records(records, CleanOptions())
    run.counts["clean_dropped"] = sum(dropped.values())
    with _Stage(run, "pii"):
        recs, pii = scrub_records(recs)
    run.counts["pii_spans"] = sum(pii.values())
    with _Stage(run, "exact"):
        recs, n_exact = exact_dedup(recs)
    run.counts["exact_removed"] = n_exact
    with _Stage(run, "near"):
        _, n_near = near_dedup(recs, threshold=threshold, num_perm=num_perm, seed=seed)
    run.counts["near_removed"] = n_near
    return run, recs


_WORD = re.compile(r"\w+")


def run_peer(
    records: list[Record], threshold: float, num_perm: int, seed: int
) -> tuple[float, float, set[int]]:
    """datasketch as its docs show it: one MinHash per record, update per shingle, query then insert.

    Returns (wall seconds, CPU seconds, removed indices)."""
    from datasketch import MinHash, MinHashLSH

    t, c = time.perf_counter(), time.process_time()
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    removed: set[int] = set()
    for i, rec in enumerate(records):
        words = _WORD.findall(rec.dedup_text().casefold())
        k = min(5, len(words))
        m = MinHash(num_perm=num_perm, seed=seed)
        for j in range(max(1, len(words) - k + 1)):
            m.update(" ".join(words[j : j + k]).encode("utf-8"))
        if lsh.query(m):
            removed.add(i)
        else:
            lsh.insert(str(i), m)
    return time.perf_counter() - t, time.process_time() - c, removed


def tunelab_removed(records: list[Record], threshold: float, num_perm: int, seed: int) -> set[int]:
    """Indices near_dedup removes (records are tagged with their position to recover them)."""
    tagged = [Record(kind=r.kind, messages=r.messages, meta={"i": i}) for i, r in enumerate(records)]
    kept, _ = near_dedup(tagged, threshold=threshold, num_perm=num_perm, seed=seed)
    return set(range(len(records))) - {r.meta["i"] for r in kept}


# ----------------------------------------------------------------------------------------- report
def _fmt_rate(rows: int, seconds: float) -> str:
    return f"{rows / seconds:,.0f}" if seconds > 0 else "inf"


def print_runs(runs: list[Run]) -> None:
    print("\ntunelab pipeline: rows/s per stage (wall seconds, CPU seconds)")
    print(f"{'rows':>10} " + " ".join(f"{s:>22}" for s in STAGES) + f" {'total':>22}")
    for r in runs:
        cells = [f"{_fmt_rate(r.rows, r.seconds[s])} ({r.seconds[s]:.1f}s,{r.cpu[s]:.1f}c)" for s in STAGES]
        cells.append(f"{_fmt_rate(r.rows, r.total)} ({r.total:.1f}s,{r.total_cpu:.1f}c)")
        print(f"{r.rows:>10,} " + " ".join(f"{c:>22}" for c in cells))
    print("\nremovals: " + "; ".join(f"{r.rows:,} rows -> {r.counts}" for r in runs))
    for prev, cur in zip(runs, runs[1:], strict=False):
        wall = (cur.total / cur.rows) / (prev.total / prev.rows)
        cpu = (cur.total_cpu / cur.rows) / (prev.total_cpu / prev.rows)
        near = (cur.cpu["near"] / cur.rows) / (prev.cpu["near"] / prev.rows)
        print(
            f"scaling {prev.rows:,} -> {cur.rows:,}: time per row x{wall:.2f} wall, x{cpu:.2f} CPU "
            f"(1.00 = linear); near dedup x{near:.2f} CPU"
        )


def compare_peer(n: int, records: list[Record], args: argparse.Namespace) -> float:
    """Run both near-dedups on the same (cleaned, scrubbed, exact-deduped) records; print one row.

    Returns the peer's wall seconds (to predict the next size)."""
    t, c = time.perf_counter(), time.process_time()
    ours = tunelab_removed(records, args.threshold, args.num_perm, args.seed)
    t_ours, c_ours = time.perf_counter() - t, time.process_time() - c
    t_peer, c_peer, theirs = run_peer(records, args.threshold, args.num_perm, args.seed)
    print(
        f"{n:>10,} {len(records):>10,} {t_ours:>8.2f}s {c_ours:>8.2f}c {t_peer:>8.2f}s {c_peer:>8.2f}c "
        f"{t_ours / t_peer:>10.4f} {c_ours / c_peer:>10.4f} "
        f"{len(ours):>9,} {len(theirs):>9,} {len(ours & theirs):>8,}"
    )
    return t_peer


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated row counts")
    parser.add_argument("--threshold", type=float, default=0.85)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--peer-max-seconds", type=float, default=180.0, help="skip peer sizes predicted to take longer"
    )
    parser.add_argument("--no-peer", action="store_true")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    bands, rows = choose_bands(args.threshold, args.num_perm)
    print(
        f"near dedup: threshold {args.threshold}, {args.num_perm} permutations, "
        f"LSH {bands} bands x {rows} rows"
    )

    # Warm up once: one-time work (Unicode tables, LSH parameters) would otherwise be billed to the
    # first size and distort the scaling ratios.
    run_tunelab(make_records(2000, args.seed + 1), args.threshold, args.num_perm, args.seed)
    runs: list[Run] = []
    deduped: dict[int, list[Record]] = {}
    for n in sizes:
        t = time.perf_counter()
        records = make_records(n, args.seed)
        print(f"generated {n:,} records in {time.perf_counter() - t:.1f}s", flush=True)
        run, after_exact = run_tunelab(records, args.threshold, args.num_perm, args.seed)
        runs.append(run)
        stages = ", ".join(f"{s} {run.seconds[s]:.1f}s" for s in STAGES)
        print(f"  {n:,} rows: {run.total:.1f}s wall, {run.total_cpu:.1f}s CPU ({stages})", flush=True)
        if not args.no_peer and n <= 100_000:
            deduped[n] = after_exact
        del records
        gc.collect()
    print_runs(runs)

    if args.no_peer or not deduped:
        return
    print("\nnear dedup vs peer (datasketch MinHash + MinHashLSH, same shingles, threshold and permutations)")
    print("on the records left after clean + PII + exact dedup; s = wall seconds, c = CPU seconds")
    print(
        f"{'rows':>10} {'deduped':>10} {'tunelab':>19} {'peer':>19} {'ratio_wall':>10} {'ratio_cpu':>10} "
        f"{'tl_remove':>9} {'dk_remove':>9} {'shared':>8}"
    )
    last: tuple[int, float] | None = None
    for n in sorted(deduped):
        predicted = last[1] * n / last[0] if last else 0.0
        if predicted > args.peer_max_seconds:
            print(
                f"{n:>10,} peer skipped: predicted {predicted:.0f}s > "
                f"--peer-max-seconds {args.peer_max_seconds:.0f}"
            )
            continue
        last = (n, compare_peer(n, deduped[n], args))
    print(
        "(peer removals are LSH candidates without verification, as in its docs; tunelab removes a "
        "record only when the estimated Jaccard with a kept record reaches the threshold)"
    )


if __name__ == "__main__":
    main()
