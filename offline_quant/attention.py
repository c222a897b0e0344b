"""Optional fake quantization of attention Q/K/V, to compare with the paper's W4A4 tables.

The paper quantizes Q and K after RoPE with a per-head Hadamard rotation and V without one, all
4-bit asymmetric per (token, head); softmax stays 16-bit. The served model keeps a 16-bit KV
cache, so this is an evaluation option only.
"""

from __future__ import annotations

import torch

from duquant_serve.core.quant import fake_quantize_per_token
from duquant_serve.core.transform import hadamard

NAME = "duquant_fq_sdpa"
KV_BITS = 4


def _fq_attention(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # query/key/value: [B, H, T, D]; rotating Q and K by the same orthogonal H keeps Q·Kᵀ.
    h = hadamard(query.shape[-1]).to(query)
    q = fake_quantize_per_token(query @ h, KV_BITS)
    k = fake_quantize_per_token(key @ h, KV_BITS)
    v = fake_quantize_per_token(value, KV_BITS)
    return sdpa_attention_forward(module, q, k, v, attention_mask, **kwargs)


def enable_attention_fake_quant(model: torch.nn.Module) -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, _fq_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
