"""Write a Hugging Face model directory (safetensors + config.json + tokenizer) as one GGUF file.

What llama.cpp's convert_hf_to_gguf.py does for the two architectures tunelab bundles, written with the
`gguf` package: hyperparameters under `<arch>.*`, the tokenizer under `tokenizer.ggml.*` (gguf_vocab.py),
`tokenizer.chat_template` = the template the model was trained with, and the tensors under llama.cpp's
names (gguf.TensorNameMap), in the layout llama.cpp expects:
- llama: q/k projection rows permuted from Hugging Face's rotary layout (two halves per head) to
  GGML's (interleaved pairs), as the converter's `permute` does; transformers' GGUF loader undoes it;
- gemma3: RMSNorm weights stored as 1 + w (Gemma multiplies by 1 + w, llama.cpp by the stored value).
  llama.cpp hard-codes the rest of Gemma 3 (a sliding window on five layers of six, local rope base
  10000, attention scale 1/sqrt(head_dim), embeddings scaled by sqrt(hidden)); a checkpoint that differs
  is refused rather than written as a file that would run differently.

Quantization: 1-D tensors and norms stay F32 (as llama.cpp keeps them); 2-D tensors take the requested
type through gguf.quants; a row length Q8_0 cannot block (not a multiple of 32) falls back to F16, as the
converter does. The k-quant mixes (q4_k_m, q4_k_s, q6_k) give each tensor the type llama-quantize would,
with rows that do not fit 256-value blocks falling back as it does (kquants.K_MIXES), and are written by
kquants.py, which the `gguf` package lacks. QUANTS lists what this module writes; anything else is an
error naming them.

Output ownership: the GGUF and the Modelfile beside it are recorded in a sidecar, `<file>.tunelab.json`.
An existing file is replaced only when that sidecar lists it (tunelab wrote it); a user's file of the
same name is never touched. The GGUF is written to a temporary file in the same folder and renamed.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..errors import TunelabError
from ..io import write_json
from .gguf_vocab import add_vocab, build_vocab
from .kquants import K_MIXES, mix_type

QUANTS = ("f32", "f16", "bf16", "q8_0", *K_MIXES)
SIDECAR_KIND = "gguf-export"
SIDECAR_SUFFIX = ".tunelab.json"

# config.json model_type -> the llama.cpp architecture name
ARCHITECTURES = {"llama": "llama", "gemma3_text": "gemma3"}

# llama.cpp's fixed Gemma 3 choices (src/llama-model.cpp): the pattern of sliding layers, the local rope base
_GEMMA3_SWA_PERIOD = 6
_GEMMA3_LOCAL_ROPE_BASE = 10000.0


@dataclass
class GgufResult:
    """What write_gguf wrote."""

    path: Path
    sidecar: Path
    architecture: str  # llama.cpp's name: "llama" or "gemma3"
    quant: str
    n_tensors: int
    n_params: int
    size_bytes: int
    tensor_types: dict[str, int]  # GGML type name -> number of tensors stored in it
    chat_template: str
    template: dict[str, Any]  # templates.ChatTemplate.info(): name, source, sha256, eos_token, stop_tokens
    special_ids: dict[str, int]  # bos, eos, unk, pad, eot as written
    context_length: int

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"], data["sidecar"] = str(self.path), str(self.sidecar)
        data.pop("chat_template")
        return data


# -- ownership of the output pair -------------------------------------------------------------------------


def sidecar_path(gguf_path: Path) -> Path:
    return gguf_path.with_name(gguf_path.name + SIDECAR_SUFFIX)


def read_sidecar(gguf_path: Path) -> dict[str, Any] | None:
    """The sidecar of `gguf_path` if tunelab wrote it, else None (missing or not ours)."""
    try:
        data = json.loads(sidecar_path(gguf_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("kind") != SIDECAR_KIND or not isinstance(data.get("files"), list):
        return None
    return data


def check_may_write(target: Path, gguf_path: Path) -> dict[str, Any]:
    """Raise unless `target` is missing or recorded as tunelab's in `gguf_path`'s sidecar; return the
    sidecar's content to extend (empty when there is none yet)."""
    side = sidecar_path(gguf_path)
    record = read_sidecar(gguf_path)
    if side.exists() and record is None:
        raise TunelabError(f"{side} exists and is not a tunelab export record, so nothing beside it is written: "
                           "choose another output name (nothing was changed)")
    if target.is_dir():
        raise TunelabError(f"the output {target} is a directory; give a file name such as {target / 'model.gguf'}")
    if target.exists() and target.name not in (record or {}).get("files", []):
        raise TunelabError(f"{target} exists and tunelab did not write it (it is not listed in {side.name}), so it "
                           "is not replaced: choose another output name or move the file away (nothing was changed)")
    return dict(record or {"kind": SIDECAR_KIND, "written_by": "tunelab", "files": []})


def record_files(gguf_path: Path, record: dict[str, Any], *names: str, **facts: Any) -> None:
    """Write the sidecar listing `names` as tunelab's (before the files themselves are renamed into place,
    so a crash leaves a claim on a name tunelab was about to write, never an unclaimed tunelab file)."""
    record = dict(record)
    record["files"] = sorted(set(record.get("files", [])) | set(names))
    record.update(facts)
    write_json(sidecar_path(gguf_path), record)


@contextlib.contextmanager
def _temp_beside(target: Path):
    """A temporary path next to `target`, renamed over it when the block succeeds and removed otherwise."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# -- reading the source ---------------------------------------------------------------------------------


def _read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TunelabError(f"{model_dir} is not a Hugging Face model directory: {path.name} is missing ({exc})") from exc
    except ValueError as exc:
        raise TunelabError(f"{path}: not valid JSON ({exc})") from exc
    model_type = config.get("model_type")
    if model_type not in ARCHITECTURES:
        raise TunelabError(f"{path}: model_type {model_type!r} is not one this GGUF writer knows "
                           f"(known: {', '.join(ARCHITECTURES)})")
    return config


def _safetensors_files(model_dir: Path) -> list[Path]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError) as exc:
            raise TunelabError(f"{index}: cannot read its weight_map ({exc})") from exc
        files = [model_dir / n for n in names]
    else:
        files = sorted(model_dir.glob("model*.safetensors"))
    missing = [f for f in files if not f.is_file()]
    if not files or missing:
        raise TunelabError(f"{model_dir}: no model safetensors to export ({'missing ' + str(missing[0]) if missing else 'none found'})")
    return files


def _iter_tensors(model_dir: Path):
    """(name, float32 numpy array) for each stored tensor, one file at a time."""
    import torch
    from safetensors import safe_open

    for path in _safetensors_files(model_dir):
        with safe_open(str(path), framework="pt") as fh:
            for name in fh.keys():
                yield name, fh.get_tensor(name).to(torch.float32).numpy()


def _rope(config: dict[str, Any], layer_kind: str | None = None) -> dict[str, Any]:
    params = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if layer_kind and isinstance(params.get(layer_kind), dict):
        params = params[layer_kind]
    theta = params.get("rope_theta", config.get("rope_theta"))
    return {"theta": theta, "type": params.get("rope_type") or params.get("type") or "default",
            "factor": params.get("factor")}


# -- hyperparameters ------------------------------------------------------------------------------------


def _head_dim(config: dict[str, Any]) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def _common_hparams(w, config: dict[str, Any]) -> None:
    w.add_context_length(int(config["max_position_embeddings"]))
    w.add_embedding_length(int(config["hidden_size"]))
    w.add_block_count(int(config["num_hidden_layers"]))
    w.add_feed_forward_length(int(config["intermediate_size"]))
    w.add_head_count(int(config["num_attention_heads"]))
    w.add_head_count_kv(int(config.get("num_key_value_heads") or config["num_attention_heads"]))
    w.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    w.add_key_length(_head_dim(config))
    w.add_value_length(_head_dim(config))


def _add_rope_scaling(w, rope: dict[str, Any], where: str) -> None:
    import gguf

    if rope["type"] == "default":
        return
    if rope["type"] == "linear" and rope["factor"]:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(float(rope["factor"]))
        return
    raise TunelabError(f"{where}: rope scaling {rope['type']!r} is not written by this exporter (default and "
                       "linear are); nothing was written")


def _llama_hparams(w, config: dict[str, Any], where: str) -> None:
    if config.get("hidden_act", "silu") != "silu":
        raise TunelabError(f"{where}: hidden_act {config['hidden_act']!r}; llama.cpp's llama runs silu only")
    _common_hparams(w, config)
    rope = _rope(config)
    w.add_rope_freq_base(float(rope["theta"] or 10000.0))
    w.add_rope_dimension_count(_head_dim(config))
    _add_rope_scaling(w, rope, where)
    w.add_vocab_size(int(config["vocab_size"]))


def _gemma3_hparams(w, config: dict[str, Any], where: str) -> None:
    head_dim = _head_dim(config)
    layers = int(config["num_hidden_layers"])
    expected = ["full_attention" if (i + 1) % _GEMMA3_SWA_PERIOD == 0 else "sliding_attention" for i in range(layers)]
    problems = []
    if config.get("layer_types") not in (None, expected):
        problems.append("layer_types is not a full-attention layer every 6th layer")
    local = _rope(config, "sliding_attention")
    if local["theta"] not in (None, _GEMMA3_LOCAL_ROPE_BASE) and "sliding_attention" in (config.get("rope_parameters") or {}):
        problems.append(f"the sliding layers' rope base is {local['theta']}, not 10000")
    if config.get("rope_local_base_freq") not in (None, _GEMMA3_LOCAL_ROPE_BASE):
        problems.append(f"rope_local_base_freq is {config['rope_local_base_freq']}, not 10000")
    if config.get("query_pre_attn_scalar", head_dim) != head_dim:
        problems.append(f"query_pre_attn_scalar {config['query_pre_attn_scalar']} differs from head_dim {head_dim}")
    if config.get("attn_logit_softcapping") is not None:
        problems.append("attn_logit_softcapping is set (Gemma 3 has none)")
    if config.get("hidden_activation", "gelu_pytorch_tanh") != "gelu_pytorch_tanh":
        problems.append(f"hidden_activation is {config['hidden_activation']!r}")
    if problems:
        raise TunelabError(f"{where}: llama.cpp fixes these Gemma 3 settings, and this model differs: "
                           f"{'; '.join(problems)}. A GGUF would run differently from the model, so none was written")
    _common_hparams(w, config)
    rope = _rope(config, "full_attention")
    w.add_rope_freq_base(float(rope["theta"] or 1_000_000.0))
    _add_rope_scaling(w, rope, where)
    if config.get("sliding_window") and "sliding_attention" in expected:
        w.add_sliding_window(int(config["sliding_window"]))
    if config.get("final_logit_softcapping"):
        w.add_final_logit_softcapping(float(config["final_logit_softcapping"]))
    w.add_vocab_size(int(config["vocab_size"]))


# -- tensors --------------------------------------------------------------------------------------------


def permute_qk(weights, n_head: int):
    """Hugging Face's rotary row order (per head: first halves, then second halves) -> GGML's (pairs)."""
    rows = weights.shape[0]
    return (weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def tensor_type(gguf_name: str, shape: tuple[int, ...], quant: str, n_layers: int = 0, tied: bool = True):
    """The GGML type a tensor is stored in for `quant` (llama.cpp's choice for these outtypes). The
    k-quant mixes also need the model's block count and whether output.weight is the token embedding."""
    import gguf

    T = gguf.GGMLQuantizationType
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight"):
        return T.F32
    if quant in K_MIXES:
        return T[mix_type(gguf_name, shape[-1], quant, n_layers, tied)]
    if quant == "q8_0":
        return T.Q8_0 if shape[-1] % 32 == 0 else T.F16
    return {"f32": T.F32, "f16": T.F16, "bf16": T.BF16}[quant]


def _convert_tensor(name: str, data, arch: str, config: dict[str, Any]):
    """llama.cpp's layout of one Hugging Face tensor (still float32)."""
    if arch == "llama":
        heads = int(config["num_attention_heads"])
        if name.endswith(("q_proj.weight", "q_proj.bias")):
            return permute_qk(data, heads)
        if name.endswith(("k_proj.weight", "k_proj.bias")):
            return permute_qk(data, int(config.get("num_key_value_heads") or heads))
    elif arch == "gemma3" and name.endswith("norm.weight"):
        return data + 1.0
    return data


def _add_tensors(w, model_dir: Path, arch: str, config: dict[str, Any], quant: str) -> tuple[Counter, int]:
    import gguf
    import numpy as np

    from . import kquants

    arch_enum = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch)
    names = gguf.TensorNameMap(arch_enum, int(config["num_hidden_layers"]))
    tied = bool(config.get("tie_word_embeddings", arch == "gemma3"))
    types: Counter = Counter()
    n_params = 0
    for name, data in _iter_tensors(model_dir):
        if name.endswith(".rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
            continue  # recomputed by llama.cpp / the same matrix as the embeddings
        new_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new_name is None:
            raise TunelabError(f"{model_dir}: tensor {name} has no llama.cpp name for {arch}; nothing was written")
        data = np.ascontiguousarray(_convert_tensor(name, data, arch, config), dtype=np.float32)
        qtype = tensor_type(new_name, data.shape, quant, int(config["num_hidden_layers"]), tied)
        stored = kquants.quantize(data, qtype)
        w.add_tensor(new_name, stored, raw_dtype=qtype)
        types[qtype.name] += 1
        n_params += data.size
    return types, n_params


# -- the writer -----------------------------------------------------------------------------------------


def _check_quant(quant: str) -> str:
    quant = (quant or "").strip().lower()
    if quant not in QUANTS:
        raise TunelabError(f"quantization {quant!r} is not one this exporter writes; choose one of "
                           f"{', '.join(QUANTS)}")
    return quant


def _training_template(tokenizer, chat_template: str | None):
    from ..models.templates import chat_template_for, describe_template

    if chat_template is None:
        return chat_template_for(tokenizer)
    return describe_template(chat_template, tokenizer.get_vocab(), tokenizer.eos_token)


def _file_type(quant: str):
    import gguf

    F = gguf.LlamaFileType
    return {"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0,
            "q4_k_m": F.MOSTLY_Q4_K_M, "q4_k_s": F.MOSTLY_Q4_K_S, "q6_k": F.MOSTLY_Q6_K}[quant]


def _write(path: Path, model_dir: Path, config: dict[str, Any], arch: str, quant: str, name: str | None,
           vocab, template: str) -> tuple[Counter, int]:
    import gguf

    w = gguf.GGUFWriter(str(path), arch)
    try:
        w.add_name(name or model_dir.name)
        w.add_file_type(_file_type(quant))
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        (_llama_hparams if arch == "llama" else _gemma3_hparams)(w, config, str(model_dir / "config.json"))
        add_vocab(w, vocab)
        w.add_chat_template(template)
        types, n_params = _add_tensors(w, model_dir, arch, config, quant)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
    finally:
        w.close()
    return types, n_params


def write_gguf(model_dir: Path, out: Path, *, quant: str = "f16", name: str | None = None,
               chat_template: str | None = None) -> GgufResult:
    """Write `model_dir` (a Hugging Face model directory) as the GGUF file `out`.

    quant: one of QUANTS. name: general.name (default: the directory's name). chat_template: the
    template the model was trained with (default: the one in `model_dir`, or the tunelab default a
    template-less tokenizer trains with); it is stored as tokenizer.chat_template, and its end-of-turn
    token as the eot id where that differs from eos.
    """
    from transformers import AutoTokenizer

    quant = _check_quant(quant)
    model_dir, out = Path(model_dir), Path(out)
    config = _read_config(model_dir)
    arch = ARCHITECTURES[config["model_type"]]
    record = check_may_write(out, out)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except (OSError, ValueError) as exc:
        raise TunelabError(f"{model_dir}: cannot load its tokenizer ({exc})") from exc
    template = _training_template(tokenizer, chat_template)
    vocab = build_vocab(model_dir, tokenizer, int(config["vocab_size"]), template.eos_token or None)

    record_files(out, record, out.name, source=str(model_dir), quant=quant, architecture=arch,
                 template=template.info())
    try:
        with _temp_beside(out) as tmp:
            types, n_params = _write(tmp, model_dir, config, arch, quant, name, vocab, template.template)
    except BaseException:
        if not record["files"] and not out.exists():  # drop the claim this call made on a name it never wrote
            sidecar_path(out).unlink(missing_ok=True)
        raise
    return GgufResult(
        path=out, sidecar=sidecar_path(out), architecture=arch, quant=quant, n_tensors=sum(types.values()),
        n_params=n_params, size_bytes=out.stat().st_size, tensor_types=dict(types),
        chat_template=template.template, template=template.info(), special_ids=dict(vocab.special_ids),
        context_length=int(config["max_position_embeddings"]),
    )
