"""The bundled SmolLM2 exported as GGUF, read back through transformers' GGUF loader.

q8_0 answers like the model it came from (greedy, token for token), and its Modelfile carries SmolLM2's
template and stop.

q4_k_m: SmolLM2-135M's hidden size (576) is not a multiple of 256, so llama.cpp's q4_k_m stores most of
it as Q5_0 (the Q4_K fallback) and the tied embedding and the Q6_K attn_v as Q8_0; only ffn_down (rows
of 1536) is Q4_K / Q6_K. Agreement is measured teacher-forced: the HF model's greedy answer is fed to
the GGUF model and its top token compared at each answer position (free-running greedy answers part at
the first differing token and then say something else, so they are not compared). Measured: 0.86 of
answer tokens agree (q8_0 of the same model: 0.98); 105.5 MB against q8_0's 144.8 MB. The bundled model
is itself converted from a Q4_1 GGUF, so this re-quantizes 4-bit weights.
"""

from __future__ import annotations

import pytest

from tunelab.export.gguf import write_gguf
from tunelab.export.ollama import write_modelfile

PROMPTS = ["What is the capital of France?", "Give me two tips for writing clear emails.",
           "How many days are in a leap year?"]
MORE_PROMPTS = ["Write a haiku about the sea.", "Explain what a CPU does in one sentence."]


@pytest.fixture(scope="module")
def smollm2():
    """(the HF directory, its tokenizer, {prompt: (prompt ids, the HF model's greedy 32-token answer)})."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.models.registry import model_path

    source = model_path("smollm2-135m-instruct")
    tok = AutoTokenizer.from_pretrained(source)
    hf = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    answers = {}
    for prompt in PROMPTS + MORE_PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        answers[prompt] = ids, _greedy(hf, ids)
    return source, tok, answers


def _load_gguf(path):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)


def _greedy(model, ids):
    return model.generate(ids, max_new_tokens=32, do_sample=False, eos_token_id=2, pad_token_id=2)[0]


@pytest.mark.slow
def test_smollm2_q8_0_greedy_output_equals_the_hf_model(smollm2, tmp_path):
    source, tok, answers = smollm2
    out = tmp_path / "smollm2.q8_0.gguf"
    result = write_gguf(source, out, quant="q8_0")
    modelfile = write_modelfile(out, chat_template=result.chat_template, stop_tokens=result.template["stop_tokens"])
    assert 'PARAMETER stop "<|im_end|>"' in modelfile.read_text()
    assert "You are a helpful AI assistant named SmolLM" in modelfile.read_text()

    gg = _load_gguf(out)
    for prompt in PROMPTS:
        ids, want = answers[prompt]
        got = _greedy(gg, ids)
        assert got.tolist() == want.tolist(), (prompt, tok.decode(want), tok.decode(got))


@pytest.mark.slow
def test_smollm2_q4_k_m_types_size_and_agreement(smollm2, tmp_path):
    import torch

    source, _, answers = smollm2
    out = tmp_path / "smollm2.q4_k_m.gguf"
    result = write_gguf(source, out, quant="q4_k_m")
    # 30 layers; use_more_bits: layers 0-2, 5, 8, 11, 14, 17, 20, 23, 26-29 (14) take Q6_K for attn_v
    # (-> Q8_0, rows of 576) and ffn_down; the tied embedding is Q8_0; 61 norms stay F32
    assert result.tensor_types == {"Q8_0": 1 + 14, "Q5_0": 30 * 5 + 16, "Q6_K": 14, "Q4_K": 16, "F32": 61}
    q8_0_bytes = result.n_params * 34 / 32  # every SmolLM2 matrix at q8_0: 34 bytes per 32 values
    assert result.size_bytes < 0.75 * q8_0_bytes, (result.size_bytes, q8_0_bytes)

    gg = _load_gguf(out)
    agree, total = 0, 0
    for ids, answer in answers.values():
        with torch.no_grad():
            predicted = gg(answer[None]).logits[0, ids.shape[1] - 1:-1].argmax(-1)
        agree += int((predicted == answer[ids.shape[1]:]).sum())
        total += len(answer) - ids.shape[1]
    assert agree / total >= 0.75, f"{agree}/{total} answer tokens agree"
