"""Tiny random Gemma 3 model with a Gemma-style tokenizer (sentencepiece BPE with byte fallback), for the
GGUF export tests. The tiny Llama is tests/conftest.py's.

The tokenizer is transformers' own GemmaTokenizer built from a vocabulary and merges learned here on a
few sentences, so it has Gemma's normalizer, pre-tokenizer and decoder without downloading anything:
control tokens first (as in Gemma's vocabulary), then the 256 `<0xNN>` byte pieces, then the learned
pieces. The model keeps what llama.cpp fixes for Gemma 3 (head_dim = query_pre_attn_scalar = 256, a
full-attention layer every sixth) and is otherwise as small as it gets.
"""

from __future__ import annotations

import json
from pathlib import Path

GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Employees get 25 days of paid leave per year.",
    "What is the capital of France? Paris is the capital of France.",
    "user model system hello world question answer",
] * 20


def build_tiny_gemma_tokenizer(out_dir: Path):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    from tunelab.models.templates import GEMMA_TURNS_TEMPLATE

    learner = Tokenizer(models.BPE())
    learner.normalizer = normalizers.Replace(" ", "\u2581")
    learner.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    learner.train_from_iterator(_CORPUS, trainer=trainers.BpeTrainer(vocab_size=300, show_progress=False))
    learned = learner.get_vocab()
    pieces = GEMMA_SPECIALS + [f"<0x{b:02X}>" for b in range(256)]
    pieces += sorted((p for p in learned if p not in pieces), key=lambda p: learned[p])
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = [tuple(m) for m in json.loads(learner.to_str())["model"]["merges"]]
    tok = GemmaTokenizer(vocab=vocab, merges=merges, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                         pad_token="<pad>", mask_token="<mask>")
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    tok.chat_template = GEMMA_TURNS_TEMPLATE
    tok.save_pretrained(out_dir)
    return tok


def build_tiny_gemma3(out_dir: Path, vocab_size: int, seed: int = 0):
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(seed)
    cfg = Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=2, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
        sliding_window=4, max_position_embeddings=256, bos_token_id=2, eos_token_id=1, pad_token_id=0,
    )
    model = Gemma3ForCausalLM(cfg)
    with torch.no_grad():  # random norms, so a missed 1 + w offset cannot hide behind all-zero weights
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0.0, 0.3)
    model.save_pretrained(out_dir)
    return model


def tiny_gemma3_dir(out_dir: Path) -> Path:
    tok = build_tiny_gemma_tokenizer(out_dir)
    build_tiny_gemma3(out_dir, vocab_size=len(tok))
    return out_dir
