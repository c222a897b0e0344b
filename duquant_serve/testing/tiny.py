"""Tiny random Hugging Face models (Llama, Mistral, Qwen2, Qwen3) with a byte-level tokenizer.

Sized so that every DuQuant path is exercised (GQA → online o_proj smoothing, widths that force
smaller rotation blocks) and vLLM's CPU attention accepts them (head_dim 64).
"""

from __future__ import annotations

from pathlib import Path

import torch

ARCHS = ("llama", "mistral", "qwen2", "qwen3")


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<unk>", "<s>", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + sorted(alphabet))}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", pad_token="</s>")


def tiny_config(arch: str, hidden: int = 256, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                intermediate: int = 384, vocab: int = 259, max_positions: int = 512):
    from transformers import AutoConfig

    if arch not in ARCHS:
        raise ValueError(f"unknown tiny arch {arch!r}")
    kw = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
              num_key_value_heads=kv_heads, intermediate_size=intermediate, vocab_size=vocab,
              max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=2, pad_token_id=2,
              tie_word_embeddings=False, head_dim=hidden // heads)
    if arch == "qwen2":
        kw.update(use_sliding_window=False)
    return AutoConfig.for_model(arch, **kw)


def build_random_model(arch: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32,
                       outliers: bool = True, init_std: float = 0.08, **cfg_kw):
    """A random transformers model in memory; `outliers` plants massive activation channels the
    way real LLMs have them (large RMSNorm gains on a few channels), so transforms have work
    to do. Any size: benchmarks build full-width layers of real models with it."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(arch, **cfg_kw)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, init_std)
        if outliers:
            for layer in model.model.layers:
                for norm in (layer.input_layernorm, layer.post_attention_layernorm):
                    idx = torch.randperm(norm.weight.numel())[:3]
                    norm.weight[idx] = 20.0
    return model.to(dtype).eval()


def make_tiny_model(path: str | Path, arch: str = "llama", seed: int = 0,
                    dtype: torch.dtype = torch.float32, outliers: bool = True, **cfg_kw) -> Path:
    """Write a random model directory (build_random_model) with a byte-level tokenizer."""
    model = build_random_model(arch, seed, dtype, outliers, **cfg_kw)
    path = Path(path)
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


# `duquant quantize` arguments that make a tiny model's checkpoint in seconds.
QUICK_QUANT_ARGS = ["--calib", "random", "--nsamples", "4", "--calib-seqlen", "64", "--steps", "16"]
