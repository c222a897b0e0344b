"""The decoder-layer topology every part of DuQuant agrees on (Llama, Mistral, Qwen2, Qwen3):
which linears share one input — an activation site, one input transform — which of them vLLM
fuses into one layer, and which are row-parallel under tensor parallelism. The offline
pipeline, the checkpoint validator and the vLLM plugin all read it from here."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Site:
    """One activation site of a decoder layer.

    name: report key; linears: module paths (relative to the layer) sharing this input, in
    vLLM's shard order; stats_from: the linear whose input/weight statistics drive smoothing
    (the reference uses q for attention and up for the MLP); norm: RMSNorm that smoothing
    divides (column-parallel sites); fold_rows_of: linear whose output rows absorb smoothing
    (row-parallel sites), None where folding is impossible (o_proj under GQA: smoothing is then
    applied online, offline_quant.models.layer_sites); row_parallel: the input is sharded under
    tensor parallelism; fused: the vLLM module the linears become (None: not fused).
    """

    name: str
    linears: tuple[str, ...]
    stats_from: str
    norm: str | None
    fold_rows_of: str | None
    row_parallel: bool
    fused: str | None = None


SITES = (
    Site("attn_in", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "self_attn.q_proj", "input_layernorm", None, False, "self_attn.qkv_proj"),
    Site("attn_out", ("self_attn.o_proj",), "self_attn.o_proj", None, "self_attn.v_proj", True),
    Site("mlp_in", ("mlp.gate_proj", "mlp.up_proj"), "mlp.up_proj", "post_attention_layernorm",
         None, False, "mlp.gate_up_proj"),
    Site("mlp_out", ("mlp.down_proj",), "mlp.down_proj", None, "mlp.up_proj", True),
)

# Linears vLLM fuses: they must carry one identical transform.
FUSED_GROUPS = tuple(s.linears for s in SITES if s.fused)
ROW_PARALLEL = tuple(name for s in SITES if s.row_parallel for name in s.linears)
# vLLM fused module → the checkpoint modules it is built from, in shard order (vLLM's
# packed_modules_mapping form, leaf names).
PACKED_MODULES = {s.fused.rpartition(".")[2]: [m.rpartition(".")[2] for m in s.linears]
                  for s in SITES if s.fused}
# A fused linear that is not its group's first → that first linear (which, from checkpoint
# format 4, alone stores the group's shared input transform).
FUSED_LEADER = {m: g[0] for g in FUSED_GROUPS for m in g[1:]}
