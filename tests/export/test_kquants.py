"""k-quants: bytes that gguf's own dequantizer (GGML's layout) reads back close to the input, the tensor
types of llama.cpp's mixes, and tiny llama / gemma3 models written at a mix that transformers loads back.

Error bound (random data): uniform rounding on a grid of step D has RMS error D/sqrt(12). The plain
min/max grid of each sub-block has D = (max - min(min, 0)) / nmax for Q4_K (nmax 15) and Q5_K (31), and
D = max|x| / 32 for Q6_K; `theory` is that RMS over the data. The scale search must do better than
theory (measured on N(0, 1): RMSE 0.0707 / 0.0361 / 0.0176 = 0.88 / 0.93 / 0.92 of it) and than the
same format without the search (0.0747 / 0.0370 / 0.0188: the search is 5.4% / 2.5% / 6.2% lower).
"""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pytest

from tunelab.export import kquants
from tunelab.export.gguf import tensor_type, write_gguf

NAIVE = {"Q4_K": {"nstep": 0}, "Q5_K": {"nstep": 0}, "Q6_K": {"refine": False}}


def _round_trip(x, name, **search):
    import gguf

    qtype = gguf.GGMLQuantizationType[name]
    stored = kquants.quantize(x, name, **search)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    assert stored.dtype == np.uint8 and stored.shape == (*x.shape[:-1], x.shape[-1] // block * size)
    back = gguf.quants.dequantize(stored, qtype)
    assert back.shape == x.shape
    return back


def _rmse(a, b):
    return float(np.sqrt(np.mean((a - b) ** 2)))


def _theory(x, name):
    if name == "Q6_K":
        step = np.abs(x.reshape(-1, 16)).max(axis=1) / 32
    else:
        sub = x.reshape(-1, 32)
        step = (sub.max(axis=1) - np.minimum(sub.min(axis=1), 0)) / (15 if name == "Q4_K" else 31)
    return float(np.sqrt(np.mean(step ** 2) / 12))


@pytest.mark.parametrize("name", kquants.TYPES)
def test_random_data_round_trips_within_the_grid_noise_and_beats_the_plain_grid(name):
    x = np.random.default_rng(0).standard_normal((8, 2048)).astype(np.float32)
    refined = _rmse(_round_trip(x, name), x)
    naive = _rmse(_round_trip(x, name, **NAIVE[name]), x)
    assert refined < _theory(x, name), (refined, _theory(x, name))
    assert refined < 0.985 * naive, (refined, naive)


@pytest.mark.parametrize("name", kquants.TYPES)
def test_structured_data(name):
    rng = np.random.default_rng(1)
    rows = {
        "zeros": np.zeros(512),
        "positive constant": np.full(512, 0.37),
        "negative constant": np.full(512, -1.9),
        "ramp": np.linspace(-1.0, 3.0, 512),
        "one-signed": np.abs(rng.standard_normal(512)),
        "sparse": rng.standard_normal(512) * (rng.random(512) < 0.1),
    }
    x = np.stack(list(rows.values())).astype(np.float32)
    back = _round_trip(x, name)
    assert np.array_equal(back[0], x[0])  # zeros stay exactly zero
    # a constant is one grid point: only fp16 d and dmin round it (relative 2^-11)
    np.testing.assert_allclose(back[1:3], x[1:3], rtol=2 ** -10)
    for i, label in list(enumerate(rows))[3:]:
        assert _rmse(back[i], x[i]) < _theory(x[i], name), label
    # the error is relative: the same rows 1000 times larger have (near) the same relative error
    scaled = x[3:] * np.float32(1000.0)
    assert _rmse(_round_trip(scaled, name), scaled) / 1000 == pytest.approx(_rmse(back[3:], x[3:]), rel=0.05)


def test_rows_not_of_256_values_are_refused():
    with pytest.raises(ValueError, match="multiple of 256"):
        kquants.quantize(np.zeros((2, 96), np.float32), "Q4_K")


def _types(quant, n_layers, hidden, ffn, tied, vocab=300):
    shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,)}
    if not tied:
        shapes["output.weight"] = (vocab, hidden)
    for i in range(n_layers):
        shapes |= {f"blk.{i}.attn_q.weight": (hidden, hidden), f"blk.{i}.attn_k.weight": (hidden // 2, hidden),
                   f"blk.{i}.attn_v.weight": (hidden // 2, hidden), f"blk.{i}.attn_output.weight": (hidden, hidden),
                   f"blk.{i}.ffn_gate.weight": (ffn, hidden), f"blk.{i}.ffn_up.weight": (ffn, hidden),
                   f"blk.{i}.ffn_down.weight": (hidden, ffn), f"blk.{i}.attn_norm.weight": (hidden,),
                   f"blk.{i}.ffn_norm.weight": (hidden,)}
    return {name: tensor_type(name, shape, quant, n_layers, tied).name for name, shape in shapes.items()}


def test_q4_k_m_mix_follows_llama_cpp():
    # 8 layers: use_more_bits picks layers 0 (< n/8), 7 (>= 7n/8), 3 and 6 ((i - 1) % 3 == 2)
    more = {0, 3, 6, 7}
    types = _types("q4_k_m", 8, 256, 512, tied=True)
    assert types["token_embd.weight"] == "Q6_K" and types["output_norm.weight"] == "F32"
    for i in range(8):
        assert types[f"blk.{i}.attn_v.weight"] == types[f"blk.{i}.ffn_down.weight"] == \
            ("Q6_K" if i in more else "Q4_K"), i
        assert {types[f"blk.{i}.{t}.weight"] for t in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up")} \
            == {"Q4_K"}
        assert types[f"blk.{i}.attn_norm.weight"] == "F32"
    untied = _types("q4_k_m", 8, 256, 512, tied=False)
    assert untied["output.weight"] == "Q6_K" and untied["token_embd.weight"] == "Q4_K"

    # SmolLM2's shapes (hidden 576, not a multiple of 256): Q4_K -> Q5_0, Q6_K -> Q8_0, the tied
    # embedding Q8_0; ffn_down's rows (1536) fit; 30 layers: use_more_bits 0-2, 5, 8, ..., 23, 26-29
    smol = _types("q4_k_m", 30, 576, 1536, tied=True)
    assert smol["token_embd.weight"] == "Q8_0" and smol["blk.4.attn_q.weight"] == "Q5_0"
    assert [smol[f"blk.{i}.attn_v.weight"] for i in (0, 3, 5, 26)] == ["Q8_0", "Q5_0", "Q8_0", "Q8_0"]
    assert [smol[f"blk.{i}.ffn_down.weight"] for i in (2, 3, 5, 25)] == ["Q6_K", "Q4_K", "Q6_K", "Q4_K"]
    # rows that fit no 32-value block stay F16
    assert _types("q4_k_m", 2, 48, 96, tied=True)["blk.0.attn_q.weight"] == "F16"


def test_q4_k_s_and_q6_k_mixes():
    s = _types("q4_k_s", 16, 256, 512, tied=True)
    assert [s[f"blk.{i}.attn_v.weight"] for i in (0, 3, 4)] == ["Q5_K", "Q5_K", "Q4_K"]
    assert [s[f"blk.{i}.ffn_down.weight"] for i in (0, 1, 2, 15)] == ["Q5_K", "Q5_K", "Q4_K", "Q4_K"]
    assert s["token_embd.weight"] == "Q6_K" and s["blk.0.ffn_up.weight"] == "Q4_K"
    six = _types("q6_k", 4, 256, 512, tied=False)
    assert set(six.values()) == {"Q6_K", "F32"}


@pytest.fixture(scope="module")
def llama256_dir(tiny_model_dir, tmp_path_factory):
    """The tiny llama's tokenizer with a model whose rows are 256 and 512 values long (k-quant blocks),
    4 layers (so the mix has both kinds of layer) and an untied output matrix."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("llama256")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if (tiny_model_dir / name).exists():
            shutil.copy(tiny_model_dir / name, out / name)
    source = LlamaForCausalLM.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=source.config.vocab_size, hidden_size=256, intermediate_size=512,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


# Tolerances. Each matrix read back (transformers dequantizes with gguf) is exactly this module's round
# trip of the source matrix, and so within its type's grid noise of the source (relative RMSE, random
# N(0, 0.02) weights; theory 0.081 for Q4_K, 0.019 for Q6_K, see the top; measured 0.072 and 0.018).
# The logits: largest |difference| / std of the source's logits. A random tiny model passes weight noise
# on amplified (the q8_0 export, 0.5% weight error, already moves the llama's logits by 0.07 std and the
# gemma's, with random norms, by 0.11); measured llama q4_k_m 0.50, q4_k_s 0.51, q6_k 0.16; gemma3 q4_k_m 1.11.
WEIGHT_TOLERANCE = {"q4_k_m": 0.08, "q4_k_s": 0.08, "q6_k": 0.02}
LOGIT_TOLERANCE = {"q4_k_m": 0.8, "q4_k_s": 0.8, "q6_k": 0.3}
GEMMA_LOGIT_TOLERANCE = 1.5


def _read_back(model_dir, gguf_path, arch):
    """Check that each matrix read back from the GGUF (transformers dequantizes with gguf) is this
    module's own round trip of the source matrix in the type the file gives it, and return (the
    largest relative RMSE of a matrix against the source, the largest |logit difference| / std of the
    source's logits)."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    source = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    types = {t.name: t.tensor_type for t in gguf.GGUFReader(str(gguf_path)).tensors}
    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.TensorNameMap(arch_enum, source.config.num_hidden_layers)
    want, got = source.state_dict(), loaded.state_dict()
    errors = {}
    for key, w in want.items():
        if w.ndim != 2 or key == "lm_head.weight" and source.config.tie_word_embeddings:
            continue
        qtype = types[names.get_name(key, try_suffixes=(".weight",))]
        # the q/k row permutation commutes with quantizing rows, so the source's own rows compare
        expected = gguf.quants.dequantize(kquants.quantize(w.numpy(), qtype), qtype)
        np.testing.assert_array_equal(got[key].numpy(), expected, err_msg=key)
        errors[key] = ((got[key] - w).pow(2).mean().sqrt() / w.std()).item()
    ids = torch.tensor([[2, 5, 9, 30, 100, 7, 270, 280, 290, 3, 10, 12]])
    with torch.no_grad():
        want_logits, got_logits = source(ids).logits, loaded(ids).logits
    return max(errors.values()), ((got_logits - want_logits).abs().max() / want_logits.std()).item()


@pytest.mark.parametrize("quant", list(LOGIT_TOLERANCE))
def test_tiny_llama_at_a_k_mix_loads_back_close_to_the_source(llama256_dir, tmp_path, quant, one_torch_thread):
    import gguf

    out = tmp_path / f"llama.{quant}.gguf"
    result = write_gguf(llama256_dir, out, quant=quant)
    reader = gguf.GGUFReader(str(out))
    stored = {t.name: t.tensor_type.name for t in reader.tensors}
    assert stored == _types(quant, 4, 256, 512, tied=False)  # the types depend on names and row lengths
    assert result.tensor_types == dict(Counter(stored.values()))
    assert reader.fields["general.file_type"].contents() == {
        "q4_k_m": gguf.LlamaFileType.MOSTLY_Q4_K_M, "q4_k_s": gguf.LlamaFileType.MOSTLY_Q4_K_S,
        "q6_k": gguf.LlamaFileType.MOSTLY_Q6_K}[quant]
    weights, logits = _read_back(llama256_dir, out, "llama")
    assert weights <= WEIGHT_TOLERANCE[quant] and logits <= LOGIT_TOLERANCE[quant], (weights, logits)


def test_tiny_gemma3_at_q4_k_m_loads_back(tmp_path, one_torch_thread):
    """Gemma 3, the other bundled architecture. Its hidden size is 64, so most matrices take the Q5_0 /
    Q8_0 fallbacks; o_proj's rows (2 heads x 256) are Q4_K."""
    from gguf_models import tiny_gemma3_dir

    source = tiny_gemma3_dir(tmp_path / "gemma3")
    out = tmp_path / "gemma3.q4_k_m.gguf"
    result = write_gguf(source, out, quant="q4_k_m")
    # 6 layers: use_more_bits picks 2 and 5 (attn_v, ffn_down: Q6_K -> Q8_0), plus the tied embedding
    assert result.tensor_types == {"Q4_K": 6, "Q5_0": 32, "Q8_0": 5, "F32": 37}
    weights, logits = _read_back(source, out, "gemma3")
    assert weights <= WEIGHT_TOLERANCE["q4_k_m"] and logits <= GEMMA_LOGIT_TOLERANCE, (weights, logits)
