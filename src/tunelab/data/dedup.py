"""Exact and near-duplicate removal, and leak checks between a training split and evaluation splits.

Exact duplicates share a normalised form of `Record.dedup_text()` (casefolded, punctuation removed,
whitespace collapsed), so "Hello, world!" and "hello world" are the same record.

Near duplicates are found with MinHash over word 5-gram shingles and LSH banding, then VERIFIED: a
pair that shares an LSH bucket only counts when the estimated Jaccard similarity of the two full
signatures reaches the threshold, so LSH false positives never remove a record. Everything heavy is
vectorised with numpy:

- tokens are hashed straight from the UTF-8 bytes of a whole batch of records with a polynomial hash
  computed from prefix sums (no Python loop per word), and shingle hashes are rolled from token hashes;
- the permutations are the classic universal hashes (a*x + b) mod (2^31 - 1), computed for all
  shingles of a batch at once and min-reduced per record with `np.minimum.reduceat`;
- only records that share at least one LSH bucket with another record enter the (Python) bucket loop.

All hashes are fixed arithmetic (no Python `hash()`, which is salted per process), and the permutation
parameters come from splitmix64 of the seed, so results depend only on the input, its order and the seed.
Removal is greedy in input order: the first record of a group of duplicates is kept.
"""

from __future__ import annotations

import functools
import hashlib
import unicodedata
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import TunelabError
from .records import Record

SHINGLE_WORDS = 5
_P = (1 << 31) - 1  # Mersenne prime of the permutation family
_PRIME = np.uint64(_P)
_RECORDS_PER_BATCH = 8192  # a batch is hashed at once: bounded in records and in characters
_CHARS_PER_BATCH = 1 << 22
_SHINGLES_PER_BLOCK = 2048  # permutation block: 128 x 2048 uint64 = 2 MiB, stays in cache
_MAX_BLOCK = 1 << 16  # longest block computed at once (128 x 65536 uint64 = 64 MiB)
_POLY = np.uint64(0x100000001B3)  # odd, so it has an inverse modulo 2^64
_POLY_INV = np.uint64(pow(0x100000001B3, -1, 1 << 64))
_ROLL = np.uint64(0x9E3779B97F4A7C15)
_EMPTY_SHINGLE = np.uint64(0x5851F42D4C957F2D)  # the one "shingle" of a record with no words
_FALSE_NEGATIVE_WEIGHT = 0.9  # LSH parameter choice; see choose_bands


# ---------------------------------------------------------------------------------------- exact dedup
# Planes 0 and 1 and the tag block hold every punctuation, symbol, separator and format character
# that matters; scanning only them keeps the one-time table build ~10x cheaper than all 1.1M code points.
_TABLE_RANGES = (range(0, 0x20000), range(0xE0000, 0xE0080))


@functools.cache
def _punct_table() -> dict[int, str]:
    """Every Unicode punctuation code point -> space (built once)."""
    return {c: " " for rng in _TABLE_RANGES for c in rng if unicodedata.category(chr(c))[0] == "P"}


def normalise_for_exact(text: str) -> str:
    """Casefold, drop punctuation, collapse whitespace: the form two exact duplicates share."""
    return " ".join(text.casefold().translate(_punct_table()).split())


def exact_key(record: Record) -> bytes:
    return hashlib.blake2b(normalise_for_exact(record.dedup_text()).encode("utf-8"), digest_size=16).digest()


def exact_dedup(records: Sequence[Record]) -> tuple[list[Record], int]:
    """Drop records whose normalised text was already seen; keeps the first occurrence."""
    seen: set[bytes] = set()
    kept: list[Record] = []
    for rec in records:
        key = exact_key(rec)
        if key not in seen:
            seen.add(key)
            kept.append(rec)
    return kept, len(records) - len(kept)


# ---------------------------------------------------------------------------------- stable hashing
def _splitmix64(z: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, vectorised (uint64 arithmetic wraps, which is what it wants)."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _splitmix64_int(state: int) -> tuple[int, int]:
    """Scalar splitmix64 step in Python ints: (next state, output). Used to derive parameters from a seed."""
    mask = (1 << 64) - 1
    state = (state + 0x9E3779B97F4A7C15) & mask
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return state, z ^ (z >> 31)


def _perm_params(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """a in [1, p), b in [0, p) for p = 2^31 - 1, derived from the seed with splitmix64."""
    state = seed & ((1 << 64) - 1)
    a, b = [], []
    for _ in range(num_perm):
        state, za = _splitmix64_int(state)
        state, zb = _splitmix64_int(state)
        a.append(za % (_P - 1) + 1)
        b.append(zb % _P)
    return np.array(a, dtype=np.uint64), np.array(b, dtype=np.uint64)


@functools.cache
def _separator_table() -> dict[int, str]:
    """Punctuation, symbols, separators and control/format characters -> space, for tokenising."""
    return {
        c: " "
        for rng in _TABLE_RANGES
        for c in rng
        if (cat := unicodedata.category(chr(c)))[0] in "PSZ" or cat in ("Cc", "Cf")
    }


# ASCII letters/digits and every non-ASCII byte are word bytes (non-ASCII punctuation was mapped to
# spaces before encoding, so what is left above 0x7F belongs to letters, marks and digits).
_WORD_BYTE = np.zeros(256, dtype=bool)
_WORD_BYTE[np.frombuffer(b"0123456789abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)] = True
_WORD_BYTE[0x80:] = True


@functools.lru_cache(maxsize=2)
def _powers(n: int) -> tuple[np.ndarray, np.ndarray]:
    """P^i and P^-i modulo 2^64 for i < n (cached: batches reuse the same positions)."""
    powers = np.full(n, _POLY, dtype=np.uint64)
    powers[0] = 1
    np.cumprod(powers, out=powers)
    inverse = np.full(n, _POLY_INV, dtype=np.uint64)
    inverse[0] = 1
    np.cumprod(inverse, out=inverse)
    return powers, inverse


def _token_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Hash every word of every text: (uint64 hash per token, record index per token), in text order."""
    table = _separator_table()
    # ASCII punctuation is already a separator byte; only non-ASCII text needs the Unicode table.
    encoded = [(t if t.isascii() else t.translate(table)).casefold().encode("utf-8") for t in texts]
    blob = np.frombuffer(b" ".join(encoded), dtype=np.uint8)
    if blob.size == 0:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
    rec_start = np.concatenate(([0], np.cumsum(lengths + 1)[:-1]))
    word = _WORD_BYTE[blob]
    edges = np.diff(word.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    # Polynomial hash sum(byte_i * P^(i - start)) from prefix sums of byte_i * P^i: the position factor
    # cancels when multiplied by P^-start, so the hash depends on the word's bytes only. Sizes are
    # rounded up so that the cached power tables are shared between batches.
    n = blob.size
    powers, inverse = _powers(max(1 << 20, 1 << (n - 1).bit_length()))
    prefix = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum(blob * powers[:n], out=prefix[1:])
    raw = (prefix[ends] - prefix[starts]) * inverse[starts]
    tok_hash = _splitmix64(raw ^ (ends - starts).astype(np.uint64))
    tok_rec = np.searchsorted(rec_start, starts, side="right") - 1
    return tok_hash, tok_rec


def _shingle_hashes(
    tok_hash: np.ndarray, tok_rec: np.ndarray, n_records: int
) -> tuple[np.ndarray, np.ndarray]:
    """Hash (< 2^31 - 1) of every word k-gram (k = 5, or all words of a shorter text), and the number
    of shingles of each record."""
    counts = np.bincount(tok_rec, minlength=n_records)
    width = np.minimum(counts, SHINGLE_WORDS)
    per_rec = np.where(counts > 0, counts - width + 1, 1)
    tok_off = np.cumsum(counts) - counts
    total = int(per_rec.sum())
    rec_of = np.repeat(np.arange(n_records), per_rec)
    within = np.arange(total) - np.repeat(np.cumsum(per_rec) - per_rec, per_rec)
    pos = tok_off[rec_of] + within
    w = width[rec_of]
    out = np.full(total, _EMPTY_SHINGLE, dtype=np.uint64)
    rolled = tok_hash
    for k in range(1, SHINGLE_WORDS + 1):
        if k > 1:
            rolled = rolled[:-1] * _ROLL + tok_hash[k - 1 :]
        sel = w == k
        if sel.any():
            out[sel] = rolled[pos[sel]]
    return _splitmix64(out) % _PRIME, per_rec


def _batches(texts: Sequence[str]) -> list[tuple[int, int]]:
    """Consecutive [start, end) ranges of at most _RECORDS_PER_BATCH texts and ~_CHARS_PER_BATCH chars."""
    out, start, chars = [], 0, 0
    for i, text in enumerate(texts):
        chars += len(text)
        if i + 1 - start >= _RECORDS_PER_BATCH or chars >= _CHARS_PER_BATCH:
            out.append((start, i + 1))
            start, chars = i + 1, 0
    if start < len(texts):
        out.append((start, len(texts)))
    return out


class _MinHasher:
    """Min over each segment of (a*x + b) mod (2^31 - 1), for every permutation, with reused buffers.

    With a, b, x < p = 2^31 - 1, a*x + b < 2^62 fits in uint64, so the modulus is exact and the family
    is the textbook universal one. Buffers are reused because fresh multi-MiB temporaries cost page
    faults on every block, which measured several times slower than the arithmetic itself.
    """

    def __init__(self, num_perm: int, seed: int):
        a, b = _perm_params(num_perm, seed)
        self.a, self.b = a[:, None], b[:, None]
        self.num_perm = num_perm
        self.buf = np.empty(0, dtype=np.uint64)

    def __call__(self, x: np.ndarray, seg: np.ndarray) -> np.ndarray:
        size = self.num_perm * x.size
        if self.buf.size < size:
            self.buf = np.empty(max(size, 2 * self.buf.size), dtype=np.uint64)
        y = self.buf[:size].reshape(self.num_perm, x.size)
        np.multiply(self.a, x, out=y)
        np.add(y, self.b, out=y)
        np.remainder(y, _PRIME, out=y)
        return np.minimum.reduceat(y, seg, axis=1).T


def minhash_signatures(texts: Sequence[str], num_perm: int = 128, seed: int = 0) -> np.ndarray:
    """MinHash signatures (uint32, shape (len(texts), num_perm)) over word 5-gram shingles."""
    if num_perm < 2:
        raise TunelabError(f"num_perm must be at least 2, got {num_perm}")
    hasher = _MinHasher(num_perm, seed)
    sig = np.empty((len(texts), num_perm), dtype=np.uint32)
    for r0, r1 in _batches(texts):
        batch = texts[r0:r1]
        tok_hash, tok_rec = _token_hashes(batch)
        x, per_rec = _shingle_hashes(tok_hash, tok_rec, len(batch))
        sh_end = np.cumsum(per_rec)
        sh_start = sh_end - per_rec
        # Blocks of whole records holding about _SHINGLES_PER_BLOCK shingles each.
        cuts = np.searchsorted(sh_end, np.arange(_SHINGLES_PER_BLOCK, int(sh_end[-1]), _SHINGLES_PER_BLOCK))
        bounds = np.unique(np.concatenate(([0], np.minimum(cuts + 1, len(batch)), [len(batch)])))
        for i0, i1 in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
            s0, s1 = sh_start[i0], sh_end[i1 - 1]
            if s1 - s0 <= _MAX_BLOCK:
                sig[r0 + i0 : r0 + i1] = hasher(x[s0:s1], sh_start[i0:i1] - s0)
                continue
            for i in range(i0, i1):  # a block with a very long document: one record at a time
                sig[r0 + i] = _long_record(hasher, x[sh_start[i] : sh_end[i]])
    return sig


def _long_record(hasher: _MinHasher, x: np.ndarray) -> np.ndarray:
    """Signature of one record in slices of _MAX_BLOCK shingles, so a book does not need GiBs at once."""
    out = hasher(x[:_MAX_BLOCK], np.zeros(1, dtype=np.int64))[0].copy()
    for c0 in range(_MAX_BLOCK, x.size, _MAX_BLOCK):
        np.minimum(out, hasher(x[c0 : c0 + _MAX_BLOCK], np.zeros(1, dtype=np.int64))[0], out=out)
    return out


# ------------------------------------------------------------------------------------------------ LSH
@functools.cache
def choose_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands*rows <= num_perm minimising false-positive + false-negative area.

    A pair with Jaccard s becomes a candidate with probability 1 - (1 - s^rows)^bands. The S-curve's
    area below the threshold counts false positives and its missing area above it false negatives.
    Unlike plain LSH (datasketch weighs both equally), every candidate here is verified, so a false
    positive costs one signature comparison while a false negative is a duplicate that stays: false
    negatives weigh 9 times more. At 0.85 and 128 permutations that picks 11 bands x 11 rows, which
    makes a pair at the threshold a candidate 87% of the time instead of 46% (8 x 16).
    """
    pairs = np.array(
        [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)], dtype=np.float64
    )
    s = np.linspace(0.0, 1.0, 201)
    p = 1.0 - (1.0 - s[None, :] ** pairs[:, 1:2]) ** pairs[:, 0:1]
    below, above = s <= threshold, s >= threshold
    false_pos = _area(p[:, below], s[below])
    false_neg = _area(1.0 - p[:, above], s[above])
    error = (1 - _FALSE_NEGATIVE_WEIGHT) * false_pos + _FALSE_NEGATIVE_WEIGHT * false_neg
    bands, rows = pairs[int(np.argmin(error))]
    return int(bands), int(rows)


def _area(y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Trapezoid rule along the last axis (np.trapezoid is numpy >= 2 only)."""
    if x.size < 2:
        return np.zeros(y.shape[:-1])
    return ((y[..., 1:] + y[..., :-1]) * np.diff(x)).sum(axis=-1) / 2


def _band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One uint64 key per (record, band): a hash of that band's `rows` signature values."""
    keys = np.empty((sig.shape[0], bands), dtype=np.uint64)
    for band in range(bands):
        h = np.full(sig.shape[0], (band * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF, dtype=np.uint64)
        for col in range(band * rows, (band + 1) * rows):
            h = _splitmix64(h ^ sig[:, col].astype(np.uint64))
        keys[:, band] = h
    return keys


def _shared(keys: np.ndarray) -> np.ndarray:
    """Bool mask (records, bands): True where another record has the same key in that band."""
    out = np.zeros(keys.shape, dtype=bool)
    for band in range(keys.shape[1]):
        _, inverse, counts = np.unique(keys[:, band], return_inverse=True, return_counts=True)
        out[:, band] = counts[inverse] > 1
    return out


def _check_threshold(threshold: float) -> None:
    if not 0.0 < threshold <= 1.0:
        raise TunelabError(f"near-duplicate threshold must be in (0, 1], got {threshold}")


def near_dedup(
    records: Sequence[Record], threshold: float = 0.85, num_perm: int = 128, seed: int = 0
) -> tuple[list[Record], int]:
    """Drop records whose estimated Jaccard with an earlier KEPT record is >= threshold."""
    _check_threshold(threshold)
    if len(records) < 2:
        return list(records), 0
    sig = minhash_signatures([r.dedup_text() for r in records], num_perm, seed)
    drop = _near_duplicate_mask(sig, threshold)
    kept = [r for r, d in zip(records, drop, strict=True) if not d]
    return kept, int(drop.sum())


def _near_duplicate_mask(sig: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy in order: a record is dropped when a verified candidate among the kept records matches it."""
    bands, rows = choose_bands(threshold, sig.shape[1])
    keys = _band_keys(sig, bands, rows)
    shared = _shared(keys)
    drop = np.zeros(sig.shape[0], dtype=bool)
    buckets: list[dict[int, list[int]]] = [{} for _ in range(bands)]
    for i in np.flatnonzero(shared.any(axis=1)).tolist():
        my_bands = np.flatnonzero(shared[i]).tolist()
        my_keys = keys[i].tolist()
        candidates: set[int] = set()
        for band in my_bands:
            candidates.update(buckets[band].get(my_keys[band], ()))
        if candidates:
            cand = np.fromiter(candidates, dtype=np.int64, count=len(candidates))
            if (sig[cand] == sig[i]).mean(axis=1).max() >= threshold:
                drop[i] = True
                continue
        for band in my_bands:
            buckets[band].setdefault(my_keys[band], []).append(i)
    return drop


# ----------------------------------------------------------------------------------------- leaks
def remove_leaks(
    train: Sequence[Record],
    other: Sequence[Record],
    threshold: float = 0.85,
    num_perm: int = 128,
    seed: int = 0,
) -> tuple[list[Record], list[dict[str, Any]]]:
    """Drop records of `other` (an eval split) that exactly or nearly duplicate a training record.

    Returns the kept `other` records and one report row per removed record: where it came from, the
    training record it matches (the most similar one; the first of equals) and the estimated Jaccard.
    """
    _check_threshold(threshold)
    if not train or not other:
        return list(other), []
    first_train: dict[bytes, int] = {}
    for i, rec in enumerate(train):
        first_train.setdefault(exact_key(rec), i)
    matches: dict[int, tuple[int, float, str]] = {}
    for j, rec in enumerate(other):
        hit = first_train.get(exact_key(rec))
        if hit is not None:
            matches[j] = (hit, 1.0, "exact")
    rest = [j for j in range(len(other)) if j not in matches]
    if rest:
        texts = [r.dedup_text() for r in train] + [other[j].dedup_text() for j in rest]
        sig = minhash_signatures(texts, num_perm, seed)
        for pos, (hit, sim) in _near_matches(sig[: len(train)], sig[len(train) :], threshold).items():
            matches[rest[pos]] = (hit, sim, "near")
    kept = [rec for j, rec in enumerate(other) if j not in matches]
    report = [_leak_row(other[j], train[hit], sim, how) for j, (hit, sim, how) in sorted(matches.items())]
    return kept, report


def _near_matches(
    train_sig: np.ndarray, other_sig: np.ndarray, threshold: float
) -> dict[int, tuple[int, float]]:
    """For each `other` row with a verified match among train rows: (best train row, estimated Jaccard)."""
    bands, rows = choose_bands(threshold, train_sig.shape[1])
    train_keys = _band_keys(train_sig, bands, rows)
    other_keys = _band_keys(other_sig, bands, rows)
    buckets: list[dict[int, list[int]]] = []
    hit_bands = np.zeros(other_keys.shape, dtype=bool)
    for band in range(bands):
        hit_bands[:, band] = np.isin(other_keys[:, band], train_keys[:, band])
        useful = np.flatnonzero(np.isin(train_keys[:, band], other_keys[hit_bands[:, band], band]))
        bucket: dict[int, list[int]] = {}
        for i, key in zip(useful.tolist(), train_keys[useful, band].tolist(), strict=True):
            bucket.setdefault(key, []).append(i)
        buckets.append(bucket)
    found: dict[int, tuple[int, float]] = {}
    for j in np.flatnonzero(hit_bands.any(axis=1)).tolist():
        my_keys = other_keys[j].tolist()
        candidates: set[int] = set()
        for band in np.flatnonzero(hit_bands[j]).tolist():
            candidates.update(buckets[band].get(my_keys[band], ()))
        cand = np.array(sorted(candidates), dtype=np.int64)
        sims = (train_sig[cand] == other_sig[j]).mean(axis=1)
        best = int(np.argmax(sims))
        if sims[best] >= threshold:
            found[j] = (int(cand[best]), float(sims[best]))
    return found


def _leak_row(rec: Record, match: Record, jaccard: float, how: str) -> dict[str, Any]:
    text = " ".join(rec.dedup_text().split())
    return {
        "file": rec.meta.get("file"),
        "line": rec.meta.get("line"),
        "train_file": match.meta.get("file"),
        "train_line": match.meta.get("line"),
        "match": how,
        "jaccard": round(jaccard, 4),
        "excerpt": text[:120] + ("..." if len(text) > 120 else ""),
    }
