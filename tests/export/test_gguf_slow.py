"""The bundled SmolLM2 exported at q8_0 answers like the model it came from (greedy, token for token),
read back through transformers' GGUF loader; and its Modelfile carries SmolLM2's template and stop."""

from __future__ import annotations

import pytest

from tunelab.export.gguf import write_gguf
from tunelab.export.ollama import write_modelfile

PROMPTS = ["What is the capital of France?", "Give me two tips for writing clear emails.",
           "How many days are in a leap year?"]


@pytest.mark.slow
def test_smollm2_q8_0_greedy_output_equals_the_hf_model(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.models.registry import model_path

    source = model_path("smollm2-135m-instruct")
    out = tmp_path / "smollm2.q8_0.gguf"
    result = write_gguf(source, out, quant="q8_0")
    modelfile = write_modelfile(out, chat_template=result.chat_template, stop_tokens=result.template["stop_tokens"])
    assert 'PARAMETER stop "<|im_end|>"' in modelfile.read_text()
    assert "You are a helpful AI assistant named SmolLM" in modelfile.read_text()

    tok = AutoTokenizer.from_pretrained(source)
    hf = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    gg = AutoModelForCausalLM.from_pretrained(str(tmp_path), gguf_file=out.name, dtype=torch.float32)
    for prompt in PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                      return_tensors="pt", return_dict=True)["input_ids"]
        answers = [m.generate(ids, max_new_tokens=24, do_sample=False, eos_token_id=2, pad_token_id=2)[0].tolist()
                   for m in (hf, gg)]
        assert answers[0] == answers[1], (prompt, tok.decode(answers[0]), tok.decode(answers[1]))
