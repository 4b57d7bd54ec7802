"""GGUF export: the file loads back (transformers' GGUF loader, which dequantizes) with the source model's
logits, carries the training chat template and the end-of-turn ids, and refuses what it cannot write.

Tolerances (largest absolute logit difference, tiny random models whose logits are below ~1): f32 and
the llama q/k permutation exact (1e-5); f16 2e-3; bf16 1e-2; q8_0 5e-2.
"""

from __future__ import annotations

import json
import shutil

import pytest
from gguf_models import tiny_gemma3_dir

from tunelab.errors import TunelabError
from tunelab.export.gguf import QUANTS, read_sidecar, write_gguf
from tunelab.models.templates import GEMMA_TURNS_TEMPLATE

TOLERANCE = {"f32": 1e-5, "f16": 2e-3, "bf16": 1e-2, "q8_0": 5e-2}


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return tiny_gemma3_dir(tmp_path_factory.mktemp("tiny-gemma3"))


@pytest.fixture(scope="module")
def sources(tiny_model_dir, gemma_dir):
    return {"llama": tiny_model_dir, "gemma3": gemma_dir}


def _logits(model_dir, gguf_file=None):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"gguf_file": gguf_file.name} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent if gguf_file else model_dir),
                                                 dtype=torch.float32, **kwargs)
    # 12 tokens: longer than the tiny Gemma's sliding window (4), so both attention kinds are exercised
    ids = torch.tensor([[2, 5, 9, 30, 100, 7, 270, 280, 290, 3, 10, 12]])
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("quant", ["f32", "f16", "bf16", "q8_0"])
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_gguf_loads_back_with_the_source_logits(sources, tmp_path, arch, quant, one_torch_thread):
    out = tmp_path / f"{arch}.{quant}.gguf"
    result = write_gguf(sources[arch], out, quant=quant)
    assert result.architecture == arch and out.is_file()
    diff = (_logits(sources[arch]) - _logits(None, out)).abs().max().item()
    assert diff <= TOLERANCE[quant], f"{arch} {quant}: logits differ by {diff}"


def _reader(path):
    import gguf

    reader = gguf.GGUFReader(str(path))

    def value(key):
        field = reader.fields[key]
        return field.contents()

    return reader, value


def test_metadata_carries_template_eos_and_eot(sources, tmp_path):
    from transformers import AutoTokenizer

    out = tmp_path / "g.gguf"
    result = write_gguf(sources["gemma3"], out, quant="q8_0")
    reader, value = _reader(out)
    tok = AutoTokenizer.from_pretrained(sources["gemma3"])
    assert value("tokenizer.chat_template") == GEMMA_TURNS_TEMPLATE == tok.chat_template
    assert value("tokenizer.ggml.model") == "llama" and value("tokenizer.ggml.pre") == "default"
    assert value("tokenizer.ggml.eos_token_id") == tok.convert_tokens_to_ids("<eos>")
    assert value("tokenizer.ggml.eot_token_id") == tok.convert_tokens_to_ids("<end_of_turn>")
    assert result.template["stop_tokens"] == ["<end_of_turn>", "<eos>"]
    assert value("gemma3.attention.sliding_window") == 4 and value("gemma3.attention.key_length") == 256
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["blk.0.attn_norm.weight"] == "F32" and types["blk.0.attn_q.weight"] == "Q8_0"
    assert read_sidecar(out)["files"] == ["g.gguf"]


def test_llama_metadata_and_a_given_training_template(sources, tmp_path):
    out = tmp_path / "l.gguf"
    template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    write_gguf(sources["llama"], out, quant="f16", chat_template=template)
    _, value = _reader(out)
    assert value("tokenizer.chat_template") == template
    assert value("tokenizer.ggml.model") == "gpt2" and value("tokenizer.ggml.pre") == "gpt-2"
    assert value("tokenizer.ggml.eos_token_id") == 2 and value("tokenizer.ggml.add_bos_token") is False
    assert "tokenizer.ggml.eot_token_id" not in dict(_reader(out)[0].fields)  # eos already ends a turn
    assert value("llama.rope.dimension_count") == 8 and value("llama.attention.head_count_kv") == 2


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_tokenizer_read_back_encodes_like_the_source(sources, tmp_path, arch):
    from transformers import AutoTokenizer

    out = tmp_path / "t.gguf"
    write_gguf(sources[arch], out, quant="f16")
    source = AutoTokenizer.from_pretrained(sources[arch])
    loaded = AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=out.name)
    for text in ["Employees get 25 days of paid leave.", "What is  the capital?\n\nParis Zürich"]:
        assert loaded(text)["input_ids"] == source(text)["input_ids"]


def test_bad_quant_names_the_ones_written_and_writes_nothing(sources, tmp_path):
    with pytest.raises(TunelabError, match="q3_k_m.*" + ", ".join(QUANTS)):
        write_gguf(sources["llama"], tmp_path / "x.gguf", quant="q3_k_m")
    assert list(tmp_path.iterdir()) == []


def test_never_replaces_a_users_file_but_replaces_its_own(sources, tmp_path):
    out = tmp_path / "model.gguf"
    out.write_bytes(b"my own model")
    with pytest.raises(TunelabError, match="tunelab did not write it"):
        write_gguf(sources["llama"], out, quant="f16")
    assert out.read_bytes() == b"my own model" and not (tmp_path / "model.gguf.tunelab.json").exists()
    mine = tmp_path / "mine.gguf"
    write_gguf(sources["llama"], mine, quant="f16")
    write_gguf(sources["llama"], mine, quant="q8_0")  # its own output: replaced
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_refuses_what_llama_cpp_would_run_differently(gemma_dir, tmp_path):
    changed = tmp_path / "src"
    shutil.copytree(gemma_dir, changed)
    config = json.loads((changed / "config.json").read_text())
    config["query_pre_attn_scalar"] = 64
    (changed / "config.json").write_text(json.dumps(config))
    with pytest.raises(TunelabError, match="query_pre_attn_scalar"):
        write_gguf(changed, tmp_path / "g.gguf")
    config["model_type"] = "mistral"
    (changed / "config.json").write_text(json.dumps(config))
    with pytest.raises(TunelabError, match="model_type 'mistral'"):
        write_gguf(changed, tmp_path / "g.gguf")
    assert not (tmp_path / "g.gguf").exists() and not (tmp_path / "g.gguf.tunelab.json").exists()


def test_cli_writes_gguf_and_modelfile(sources, tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli.app import app

    out = tmp_path / "out" / "tiny.gguf"
    runner = CliRunner()
    ok = runner.invoke(app, ["export", "gguf", str(sources["gemma3"]), "--out", str(out), "--quant", "q8_0", "--json"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.stdout)
    assert data["quant"] == "q8_0" and data["modelfile"] == str(out.with_suffix(".Modelfile"))
    modelfile = out.with_suffix(".Modelfile").read_text()
    assert 'PARAMETER stop "<end_of_turn>"' in modelfile and "FROM ./tiny.gguf" in modelfile
    bad = runner.invoke(app, ["export", "gguf", str(sources["gemma3"]), "--out", str(tmp_path / "b.gguf"),
                              "--quant", "q3_k"])
    assert bad.exit_code != 0 and "f32, f16, bf16, q8_0" in bad.output
