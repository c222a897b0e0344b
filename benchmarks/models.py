"""The model shapes every benchmark uses, in one table: decoder-layer linears, activation
sites, parameter counts. Real checkpoints are not needed: the benchmarks build random layers
of these shapes. The rotation block is core.transform's own rule (`block_for`). Importing this
needs no torch (the capacity model is arithmetic only)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_BLOCK = 128  # DuQuantConfig.block_size


@dataclass(frozen=True)
class Model:
    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linears(self) -> list[tuple[int, int]]:
        """(out, in) of one decoder layer's linears: q, k, v, o, gate, up, down."""
        kv = self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]

    def site_linears(self) -> dict[str, tuple[int, int]]:
        """(out, in) of each activation site's fused linear, as the serving engine runs them."""
        kv = self.kv_heads * self.head_dim
        h, i = self.hidden, self.intermediate
        return {"qkv": (h + 2 * kv, h), "o": (h, h), "gate_up": (2 * i, h), "down": (h, i)}

    def sites(self) -> list[tuple[int, bool]]:
        """(input width, smoothed online) of one layer's sites: qkv, o, gate_up, down."""
        return [(self.hidden, False), (self.hidden, True), (self.hidden, False),
                (self.intermediate, False)]

    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    def params(self) -> int:
        per_layer = sum(o * k for o, k in self.linears()) + 2 * self.hidden  # + 2 RMSNorms
        return self.layers * per_layer + self.embedding_params() + self.hidden


MODELS = {m.name: m for m in (
    Model("llama2-7b", 32, 4096, 11008, 32, 32, 32000),
    Model("llama3-8b", 32, 4096, 14336, 32, 8, 128256),
    Model("llama2-70b", 80, 8192, 28672, 64, 8, 32000),
    Model("llama3-70b", 80, 8192, 28672, 64, 8, 128256),
    Model("smollm2-135m", 30, 576, 1536, 9, 3, 49152, tied=True),
    Model("tiny", 2, 128, 256, 4, 2, 4096),  # the dry runs' shape (CPU, seconds)
)}
KERNEL_MODELS = ("llama2-7b", "llama3-8b", "smollm2-135m")  # the GPU/CPU kernel sweeps' default


def site_shapes(names=KERNEL_MODELS) -> dict[str, dict[str, tuple[int, int]]]:
    """{model: {site: (N, K)}} for the kernel benchmarks."""
    return {n: MODELS[n].site_linears() for n in names}


def block_for(k: int, configured: int = DEFAULT_BLOCK) -> int:
    """The rotation block a K-wide input gets (core.transform.choose_block_size)."""
    from duquant_serve.core.transform import choose_block_size  # torch: only when asked

    return choose_block_size(k, configured)
