"""GGML's k-quant block formats (Q4_K, Q5_K, Q6_K) written with numpy, and llama.cpp's k-quant mixes.

The `gguf` package reads these formats (gguf.quants.dequantize) but cannot write them; this module
writes them byte for byte in GGML's layout (ggml-common.h block_q4_K / block_q5_K / block_q6_K), with
the scale search of ggml's reference quantizers (ggml-quants.c, quantize_row_q{4,5,6}_K_ref: what
llama-quantize runs when no importance matrix is given), vectorised over all blocks of a tensor:

- Q4_K / Q5_K: super-blocks of 256 values, 8 sub-blocks of 32. Each sub-block gets a scale and a min
  from make_qkx2_quants' search (a weighted least-squares fit of scale and min over a sweep of
  candidate grids); the 8 scales and 8 mins are then quantized to 6 bits against the super-block's
  fp16 `d` and `dmin` and packed in 12 bytes; the values are 4 (5) bit indices, x ~ d*sc*q - dmin*m.
  Layout: d, dmin (fp16), scales[12], [qh[32] for Q5_K], qs[128].
- Q6_K: super-blocks of 256, 16 sub-blocks of 16 with int8 scales against an fp16 `d`; the sub-block
  scale comes from make_qx_quants' search (x^2-weighted fit over 19 candidate grids); values are 6-bit,
  x ~ d*sc*(q - 32). Layout: ql[128] (low nibbles), qh[64] (high 2 bits), scales[16] (int8), d (fp16).

`nstep=0` (Q4_K/Q5_K) and `refine=False` (Q6_K) skip the search: the plain min/max (abs-max) grid, kept
as the baseline the search is measured against.

The mixes (K_MIXES, mix_type) are llama.cpp's choice of type per tensor for a k-quant file type.
"""

from __future__ import annotations

import re

import numpy as np

QK_K = 256
_CHUNK = 2048  # super-blocks quantized at once: ~2 MB of float32 per working array, cache-friendly
_GROUP_MAX_EPS = 1e-15  # ggml-quants.c: a group whose largest |x| is below this is all zero


def _rint(a: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: round half to even, as np.rint does."""
    return np.rint(a, out=a)


def _fp16(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the fp16 bytes, the float32 value they hold), as GGML_FP32_TO_FP16 / FP16_TO_FP32 round."""
    half = a.astype(np.float16)
    return half.view(np.uint8).reshape(*a.shape, 2), half.astype(np.float32)


# -- Q4_K and Q5_K ----------------------------------------------------------------------------------------


def _qkx2(x: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int) -> tuple[np.ndarray, np.ndarray]:
    """make_qkx2_quants over the columns of x (32, n): the scale and the (positive) min of each column's
    grid min + scale*l, l in 0..nmax, minimising the weighted squared error with weights av|x| + |x|.

    Start from the min/max grid; then for each candidate step count nmax + rmin + rdelta*i, round to that
    grid and solve the weighted least-squares scale and min for those indices (min clamped to <= 0),
    keeping the best fit. As in ggml, a better fit's min becomes the next candidates' grid origin.
    Columns, not rows: numpy broadcasts a per-sub-block number along a long axis far faster.
    """
    w = np.sqrt((x * x).mean(axis=0)) + np.abs(x)
    lo = np.minimum(x.min(axis=0), 0)
    hi = x.max(axis=0)
    flat = hi <= lo
    hi = np.where(flat, lo + 1, hi)
    sum_w = w.sum(axis=0)
    wx = w * x
    sum_x = wx.sum(axis=0)
    sum_x2 = np.einsum("ij,ij->j", wx, x).astype(np.float64)

    grid = np.empty_like(x)
    wl = np.empty_like(x)

    def round_to(origin: np.ndarray, iscale: np.ndarray) -> np.ndarray:
        np.subtract(x, origin, out=grid)
        np.multiply(grid, iscale, out=grid)
        np.rint(grid, out=grid)
        return np.clip(grid, 0, nmax, out=grid)

    scale = (hi - lo) / np.float32(nmax)
    lmin = lo
    round_to(lo, np.float32(nmax) / (hi - lo))
    err = np.einsum("ij,ij->j", w, np.square(scale * grid + lo - x))
    for step in range(nstep + 1):
        round_to(lmin, (np.float32(rmin + rdelta * step) + np.float32(nmax)) / (hi - lmin))
        np.multiply(w, grid, out=wl)
        sl, sl2, sxl = wl.sum(axis=0), np.einsum("ij,ij->j", wl, grid), np.einsum("ij,ij->j", wl, x)
        det = sum_w * sl2 - sl * sl
        ok = det > 0
        det = np.where(ok, det, np.float32(1))
        s = (sum_w * sxl - sum_x * sl) / det
        m = (sl2 * sum_x - sl * sxl) / det
        pos = m > 0  # the grid must reach 0 or below: refit the scale alone with min = 0
        m = np.where(pos, np.float32(0), m)
        s = np.where(pos, sxl / np.where(sl2 > 0, sl2, np.float32(1)), s)
        # sum w (s*l + m - x)^2 from the sums already formed (float64: the terms nearly cancel)
        s64, m64 = s.astype(np.float64), m.astype(np.float64)
        e = (s64 * s64 * sl2 + 2 * s64 * m64 * sl - 2 * s64 * sxl + m64 * m64 * sum_w - 2 * m64 * sum_x
             + sum_x2)
        better = ok & (e < err)
        err = np.where(better, e, err)
        scale = np.where(better, s, scale)
        lmin = np.where(better, m, lmin)
    return np.where(flat, np.float32(0), scale), -lmin


def _scales_mins(blocks: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """quantize_row_q{4,5}_K_ref's common part for blocks (n, 256): the packed d, dmin, 12 scale bytes
    and the value indices L (n, 256) in 0..nmax."""
    n = blocks.shape[0]
    sub = np.ascontiguousarray(blocks.reshape(n * 8, 32).T)
    scales, mins = (v.reshape(n, 8) for v in _qkx2(sub, nmax, rmin, rdelta, nstep))
    max_scale = np.maximum(scales.max(axis=1), 0)
    max_min = np.maximum(mins.max(axis=1), 0)
    inv_scale = np.where(max_scale > 0, np.float32(63) / np.where(max_scale > 0, max_scale, 1), 0)
    inv_min = np.where(max_min > 0, np.float32(63) / np.where(max_min > 0, max_min, 1), 0)
    ls = np.clip(_rint(inv_scale[:, None] * scales), 0, 63).astype(np.uint8)
    lm = np.clip(_rint(inv_min[:, None] * mins), 0, 63).astype(np.uint8)
    d_bytes, d = _fp16(max_scale / np.float32(63))
    dmin_bytes, dmin = _fp16(max_min / np.float32(63))

    # 12 bytes: sub-blocks 0-3 keep their 6-bit scale and min in bytes 0-3 and 4-7; sub-blocks 4-7 put
    # their low 4 bits in bytes 8-11 and their top 2 bits in the free top bits of bytes 0-7 (get_scale_min_k4)
    packed = np.concatenate([
        ls[:, :4] | ((ls[:, 4:] >> 4) << 6),
        lm[:, :4] | ((lm[:, 4:] >> 4) << 6),
        (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4),
    ], axis=1)

    sub_d = (d[:, None] * ls.astype(np.float32))[:, :, None]
    sub_m = (dmin[:, None] * lm.astype(np.float32))[:, :, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        levels = _rint((blocks.reshape(n, 8, 32) + sub_m) / sub_d)
    levels = np.where(sub_d != 0, levels, 0)  # a zero scale decodes to -min whatever the index
    np.clip(levels, 0, nmax, out=levels)
    return d_bytes, dmin_bytes, packed, levels.astype(np.uint8).reshape(n, QK_K)


def _nibbles(levels: np.ndarray) -> np.ndarray:
    """qs[128]: per 64 values, value l in the low nibble of byte l and value 32 + l in its high nibble."""
    pairs = (levels & 0xF).reshape(-1, 4, 2, 32)
    return (pairs[:, :, 0] | (pairs[:, :, 1] << 4)).reshape(-1, QK_K // 2)


def _q4_k_blocks(blocks: np.ndarray, nstep: int = 20) -> np.ndarray:
    d, dmin, packed, levels = _scales_mins(blocks, 15, -1.0, 0.1, nstep)
    return np.concatenate([d, dmin, packed, _nibbles(levels)], axis=1)


def _q5_k_blocks(blocks: np.ndarray, nstep: int = 15) -> np.ndarray:
    d, dmin, packed, levels = _scales_mins(blocks, 31, -0.5, 0.1, nstep)
    # qh[32]: bit 2c (2c+1) of byte l is the fifth bit of value l (32 + l) of the c-th 64 values
    high = (levels >> 4).reshape(-1, 4, 2, 32)
    shifts = np.arange(8, dtype=np.uint8).reshape(1, 4, 2, 1)
    qh = np.bitwise_or.reduce(high << shifts, axis=(1, 2)).astype(np.uint8)
    return np.concatenate([d, dmin, packed, qh, _nibbles(levels)], axis=1)


# -- Q6_K -------------------------------------------------------------------------------------------------


def _qx(x: np.ndarray, nmax: int, refine: bool) -> np.ndarray:
    """make_qx_quants(rmse_type=1) over the columns of x (16, n): the signed scale of the grid scale*l,
    l in -nmax..nmax-1, with the x^2-weighted least-squares scale over 19 candidate step counts."""
    pick = np.abs(x).argmax(axis=0)
    top = np.take_along_axis(x, pick[None, :], axis=0)[0]
    zero = np.abs(top) < _GROUP_MAX_EPS
    top = np.where(zero, np.float32(1), top)
    if not refine:
        return np.where(zero, np.float32(0), top / -np.float32(nmax))
    w = x * x
    wx = w * x
    grid = np.empty_like(x)

    def fit(steps: np.float32):
        np.multiply(x, -steps / top, out=grid)
        np.rint(grid, out=grid)
        np.clip(grid, -nmax, nmax - 1, out=grid)
        return np.einsum("ij,ij->j", wx, grid), np.einsum("ij,ij->j", w, np.square(grid))

    sumlx, suml2 = fit(np.float32(nmax))
    scale = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, 1), np.float32(0))
    best = scale * sumlx
    for step in (*range(-9, 0), *range(1, 10)):
        sumlx, suml2 = fit(np.float32(nmax) + np.float32(0.1) * np.float32(step))
        take = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        scale = np.where(take, sumlx / np.where(suml2 > 0, suml2, 1), scale)
        best = np.where(take, scale * sumlx, best)
    return np.where(zero, np.float32(0), scale)


def _q6_k_blocks(blocks: np.ndarray, refine: bool = True) -> np.ndarray:
    n = blocks.shape[0]
    scales = _qx(np.ascontiguousarray(blocks.reshape(n * 16, 16).T), 32, refine).reshape(n, 16)
    pick = np.abs(scales).argmax(axis=1)
    max_scale = np.take_along_axis(scales, pick[:, None], axis=1)[:, 0]
    empty = np.abs(max_scale) < _GROUP_MAX_EPS
    iscale = np.float32(-128) / np.where(empty, np.float32(1), max_scale)
    d_bytes, d = _fp16(np.where(empty, np.float32(0), 1 / iscale))
    sc = np.minimum(_rint(iscale[:, None] * scales), 127)
    sc = np.where(empty[:, None], 0, sc).astype(np.int8)

    sub_d = (d[:, None] * sc.astype(np.float32))[:, :, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        levels = _rint(blocks.reshape(n, 16, 16) / sub_d)
    levels = np.where(sub_d != 0, levels, 0)
    np.clip(levels, -32, 31, out=levels)
    levels = (levels + 32).astype(np.uint8).reshape(n, 2, 4, 32)  # [half of 128][quarter of 32][l]

    low = levels & 0xF
    ql = (low[:, :, :2] | (low[:, :, 2:] << 4)).reshape(n, QK_K // 2)
    shifts = (2 * np.arange(4, dtype=np.uint8)).reshape(1, 1, 4, 1)
    qh = np.bitwise_or.reduce((levels >> 4) << shifts, axis=2).astype(np.uint8).reshape(n, QK_K // 4)
    return np.concatenate([ql, qh, sc.view(np.uint8), d_bytes], axis=1)


# -- whole tensors ----------------------------------------------------------------------------------------

_BLOCK_WRITERS = {"Q4_K": _q4_k_blocks, "Q5_K": _q5_k_blocks, "Q6_K": _q6_k_blocks}
TYPES = tuple(_BLOCK_WRITERS)


def quantize(data: np.ndarray, qtype, **search) -> np.ndarray:
    """`data` (float, last dimension a multiple of 256) in the GGML k-quant type `qtype` (a
    gguf.GGMLQuantizationType or its name), as uint8 of shape (*rows, row bytes) like gguf.quants'.
    Other types go to gguf.quants.quantize."""
    import gguf

    name = getattr(qtype, "name", qtype)
    if name not in _BLOCK_WRITERS:
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType[name])
    if data.shape[-1] % QK_K:
        raise ValueError(f"{name} needs rows of a multiple of {QK_K} values, not {data.shape[-1]}")
    write = _BLOCK_WRITERS[name]
    blocks = np.ascontiguousarray(data, dtype=np.float32).reshape(-1, QK_K)
    out = np.concatenate([write(blocks[i:i + _CHUNK], **search) for i in range(0, max(len(blocks), 1), _CHUNK)])
    return out.reshape(*data.shape[:-1], -1)


# -- llama.cpp's k-quant mixes -----------------------------------------------------------------------------

# Which GGML type each tensor gets, as llama.cpp's llama_tensor_get_type_impl (src/llama-quant.cpp)
# chooses for these file types in a dense model without a fused qkv and not Falcon (llama and gemma3):
# - "default": every quantizable 2-D weight not named below (attn_q/k/output, ffn_gate/up, untied token_embd);
# - "output": output.weight, or token_embd.weight when it is also the output (tied embeddings): Q6_K, or
#   Q8_0 when its rows are not a multiple of the default type's block (256);
# - "attn_v" / "ffn_down": (rule, type) for layer i of n, else the default. use_more_bits:
#   i < n/8 or i >= 7n/8 or (i - n/8) % 3 == 2; first_eighth: i < n/8; first_four: i < 4.
# Then tensor_type_fallback: rows not a multiple of the type's block take Q4_K -> Q5_0, Q5_K -> Q5_1,
# Q6_K -> Q8_0, and F16 when even that does not fit (llama.cpp would stop on a Q8_0 that does not fit;
# this writer stores it as F16, as its q8_0 export does).
K_MIXES = {
    "q4_k_m": {"default": "Q4_K", "output": "Q6_K", "attn_v": ("use_more_bits", "Q6_K"),
               "ffn_down": ("use_more_bits", "Q6_K")},
    "q4_k_s": {"default": "Q4_K", "output": "Q6_K", "attn_v": ("first_four", "Q5_K"),
               "ffn_down": ("first_eighth", "Q5_K")},
    "q6_k": {"default": "Q6_K", "output": "Q6_K"},
}
_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
_RULES = {
    "use_more_bits": lambda i, n: i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2,
    "first_eighth": lambda i, n: i < n // 8,
    "first_four": lambda i, n: i < 4,
}
_LAYER = re.compile(r"^blk\.(\d+)\.(attn_v|ffn_down)\.weight$")


def mix_type(gguf_name: str, row: int, mix: str, n_layers: int, tied: bool) -> str:
    """The GGML type name llama.cpp's `mix` gives the quantizable 2-D tensor `gguf_name` whose rows
    hold `row` values, in a model of `n_layers` blocks whose output matrix is (tied) or is not the
    token embedding."""
    rules = K_MIXES[mix]
    chosen = rules["default"]
    if gguf_name == "output.weight" or (tied and gguf_name == "token_embd.weight"):
        chosen = rules["output"] if row % QK_K == 0 else "Q8_0"
    elif (match := _LAYER.match(gguf_name)) and match.group(2) in rules:
        rule, bigger = rules[match.group(2)]
        if _RULES[rule](int(match.group(1)), n_layers):
            chosen = bigger
    if chosen in _FALLBACK and row % QK_K:
        chosen = _FALLBACK[chosen]
    return chosen if row % 32 == 0 else "F16"
