"""Plain-torch W{w}A{a} linear: the specification every kernel is tested against.

    prologue:  x [M, K] → x' = T(x) → per-token codes qx [M, K] u8, sx, zx [M] f32, Σqx [M] i32
    GEMM:      acc [M, N] = qx · qwᵀ              (exact integer arithmetic)
    epilogue:  y = sx·sw·(acc − zw·Σqx − zx·Σqw + K·zx·zw) + bias

which equals dequant(qx) · dequant(qw)ᵀ; the expanded form is what integer kernels compute
(docs/epilogue.md derives it). Runs on any device; exact, not fast.

A linear with G = act_groups > 1 (row-parallel linears of a tp_shards > 1 checkpoint; every
linear of an act_group_size checkpoint: DuQuantConfig.activation_groups) quantizes activations
per token *per group* of K/G contiguous channels (the permutation stays inside its group):

    y = Σ_g sx_g·sw·(acc_g − zw·Σqx_g − zx_g·Σqw_g + K_g·zx_g·zw) + bias

Within one shard that sum is taken before any rounding (a block-scaled GEMM folds each group
into one fp32 accumulator), so the output is rounded once, as without groups. Across the
`shards` row-parallel shards (tp_shards; each holds G/shards groups) the shard outputs are
summed in the output dtype, in tree_sum order: what tensor-parallel ranks and their all-reduce
compute, so any TP size dividing tp_shards gives the same numbers as TP = 1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .epilogue import rank2_rhs
from .pack import pack_weight_codes, unpack_weight_codes
from .quant import dequantize, fake_quantize_per_token, quantize_per_channel, quantize_per_token
from .transform import InputTransform


@dataclass
class QuantizedLinear:
    """One quantized linear as stored in a checkpoint (shapes for N outputs, K inputs).

    qweight: [N, K/2] uint8 (two 4-bit codes per byte) or [N, K] uint8 for > 4 bits
    weight_scale, weight_zero: [N] float32 (zero holds integers)
    transform: the input transform (R1, perm, R2, optional online smoothing)
    bias: [N] or None
    """

    qweight: torch.Tensor
    weight_scale: torch.Tensor
    weight_zero: torch.Tensor
    transform: InputTransform
    bias: torch.Tensor | None
    w_bits: int
    a_bits: int
    act_clip_ratio: float
    act_groups: int = 1  # per-token activation ranges per contiguous K/act_groups channels
    shards: int = 1  # row-parallel shards (tp_shards) summed in the output dtype; divides act_groups

    def __post_init__(self) -> None:
        if self.act_groups < 1 or self.shards < 1 or self.act_groups % self.shards:
            raise ValueError(f"{self.act_groups} activation groups cannot be spread evenly over "
                             f"{self.shards} row-parallel shards")

    @property
    def out_features(self) -> int:
        return self.weight_scale.numel()

    @property
    def in_features(self) -> int:
        return self.transform.width

    def groups(self) -> list[QuantizedLinear]:
        """The act_groups group linears, each alone (act_groups = 1); [self] when 1."""
        return self._split(self.act_groups)

    def shard_linears(self) -> list[QuantizedLinear]:
        """The `shards` row-parallel shard linears (each with its act_groups / shards groups, one
        shard); [self] when 1."""
        return self._split(self.shards)

    def _split(self, parts: int) -> list[QuantizedLinear]:
        """`parts` linears over contiguous input slices (column slices of qweight, the slice of
        the transform), bias in the first; groups spread evenly over them."""
        if parts == 1:
            return [self]
        if self.in_features % parts or self.act_groups % parts:
            raise ValueError(f"input width {self.in_features} ({self.act_groups} activation "
                             f"groups) does not split into {parts} parts")
        kg = self.in_features // parts
        per_byte = 2 if self.w_bits <= 4 else 1  # core.pack: two 4-bit codes per byte
        return [QuantizedLinear(
            qweight=self.qweight[:, i * kg // per_byte:(i + 1) * kg // per_byte],
            weight_scale=self.weight_scale, weight_zero=self.weight_zero,
            transform=self.transform.slice(i * kg, (i + 1) * kg),
            bias=self.bias if i == 0 else None, w_bits=self.w_bits, a_bits=self.a_bits,
            act_clip_ratio=self.act_clip_ratio, act_groups=self.act_groups // parts,
            shards=max(1, self.shards // parts)) for i in range(parts)]

    def to(self, device: torch.device | str) -> QuantizedLinear:
        """A copy with every tensor on `device` (dtypes kept: codes, fp32 scales)."""
        return replace(
            self, qweight=self.qweight.to(device), weight_scale=self.weight_scale.to(device),
            weight_zero=self.weight_zero.to(device), transform=self.transform.to(device),
            bias=None if self.bias is None else self.bias.to(device))

    def weight_codes(self) -> torch.Tensor:
        return unpack_weight_codes(self.qweight, self.w_bits)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """[N, K] weight in the transformed basis (what the fake-quant model uses); float64
        holds every value exactly."""
        return dequantize(self.weight_codes(), self.weight_scale.unsqueeze(1),
                          self.weight_zero.unsqueeze(1), dtype)


def quantize_linear(
    w_transformed: torch.Tensor,
    transform: InputTransform,
    bias: torch.Tensor | None,
    w_bits: int,
    a_bits: int,
    weight_clip_ratio: float,
    act_clip_ratio: float,
    lo_factor: torch.Tensor | None = None,
    hi_factor: torch.Tensor | None = None,
    act_groups: int = 1,
    shards: int = 1,
) -> QuantizedLinear:
    """Weight already in the transformed basis [N, K] → stored form."""
    q, s, z = quantize_per_channel(
        w_transformed, w_bits, weight_clip_ratio, lo_factor=lo_factor, hi_factor=hi_factor
    )
    return QuantizedLinear(
        qweight=pack_weight_codes(q, w_bits),
        weight_scale=s,
        weight_zero=z,
        transform=transform,
        bias=None if bias is None else bias.detach().clone(),
        w_bits=w_bits,
        a_bits=a_bits,
        act_clip_ratio=act_clip_ratio,
        act_groups=act_groups,
        shards=shards,
    )


def prologue_ref(
    x: torch.Tensor, transform: InputTransform, a_bits: int, clip_ratio: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [M, K] → (codes u8 [M, K], scale f32 [M], zero f32 [M], code_sum i32 [M])."""
    xt = transform.apply(x.float())
    q, s, z = quantize_per_token(xt, a_bits, clip_ratio, check_finite=False)
    return q, s, z, q.sum(dim=-1, dtype=torch.int32)


def prologue_groups_ref(
    x: torch.Tensor, transform: InputTransform, a_bits: int, clip_ratio: float, groups: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [M, K] → (codes u8 [M, K], scale f32 [M, G], zero f32 [M, G], code_sum i32 [M, G]):
    the whole transform once, then one range per token and group of K/G channels."""
    m, k = x.shape
    if k % groups:
        raise ValueError(f"width {k} does not split into {groups} activation groups")
    xt = transform.apply(x.float()).reshape(m, groups, k // groups)
    q, s, z = quantize_per_token(xt, a_bits, clip_ratio, check_finite=False)
    return q.reshape(m, k), s, z, q.sum(dim=-1, dtype=torch.int32)


def epilogue_ref(
    acc: torch.Tensor,
    sx: torch.Tensor,
    zx: torch.Tensor,
    sum_qx: torch.Tensor,
    sw: torch.Tensor,
    zw: torch.Tensor,
    sum_qw: torch.Tensor,
    bias: torch.Tensor | None,
    k: int,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Integer accumulator acc [M, N] → sx·sw·(acc − zw·Σqx − zx·Σqw + k·zx·zw) + bias.

    Every term of the bracket is an integer, so float64 holds each exactly and the only
    rounding is the scaling. The bracket is computed as acc − [Σqx, zx]·[zw; Σqw − k·zw], one
    rank-2 update (the same exact integers, in a dozen fewer passes over [M, N] doubles)."""
    lhs = torch.stack((sum_qx.double(), zx.double()), dim=1)  # [M, 2]
    rhs = rank2_rhs(zw, sum_qw, k)  # [2, N]
    bracket = torch.addmm(acc.double(), lhs, rhs, alpha=-1)
    y = (sx.double().unsqueeze(1) * sw.double().unsqueeze(0)).mul_(bracket)
    if bias is not None:
        y = y.add_(bias.double().unsqueeze(0))
    return y.to(out_dtype)


def gemm_epilogue_ref(
    qx: torch.Tensor,
    sx: torch.Tensor,
    zx: torch.Tensor,
    sum_qx: torch.Tensor,
    qw: torch.Tensor,
    sw: torch.Tensor,
    zw: torch.Tensor,
    sum_qw: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Integer GEMM + scale/zero-point epilogue. qx [M, K], qw [N, K] unpacked codes → [M, N]."""
    # fp32 products of small integers are exact while every partial sum stays below 2^24.
    bound = qx.shape[-1] * int(qx.max()) * int(qw.max()) if qx.numel() and qw.numel() else 0
    acc_dtype = torch.float32 if bound < 2**24 else torch.float64
    acc = qx.to(acc_dtype) @ qw.to(acc_dtype).t()
    return epilogue_ref(acc, sx, zx, sum_qx, sw, zw, sum_qw, bias, qx.shape[-1], out_dtype)


def gemm_epilogue_groups_ref(
    qx: torch.Tensor,
    sx: torch.Tensor,
    zx: torch.Tensor,
    sum_qx: torch.Tensor,
    qw: torch.Tensor,
    sw: torch.Tensor,
    zw: torch.Tensor,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Block-scaled integer GEMM + epilogue: qx [M, K], qw [N, K] codes; sx, zx, Σqx [M, G]
    per token and group of K/G channels → y = sw·Σ_g sx_g·bracket_g + bias [M, N], every
    bracket_g = acc_g − zw·Σqx_g − zx_g·(Σqw_g − K_g·zw) an exact integer, summed in float64
    and rounded once."""
    m, k = qx.shape
    g = sx.shape[-1]
    kg = k // g
    # Exact: fp32 products of codes ≤ 15 summed over K_g ≤ 2^16 stay below 2^24; else float64.
    acc_dtype = torch.float32 if kg * 225 < 2**24 else torch.float64
    a = qx.reshape(m, g, kg).transpose(0, 1).to(acc_dtype)  # [G, M, K_g]
    w = qw.reshape(-1, g, kg).transpose(0, 1).to(acc_dtype)  # [G, N, K_g]
    zwd = zw.double()
    rhs = (w.sum(dim=-1).double() - kg * zwd[None, :])[:, None, :]  # [G, 1, N] Σqw_g − K_g·zw
    sqx, zxt, sxt = sum_qx.t().double(), zx.t().double(), sx.t().double()  # [G, M]
    y = torch.empty(m, qw.shape[0], dtype=torch.float64, device=qx.device)
    # Row blocks keep the [G, rows, N] float64 brackets in cache (~10× faster per SmolLM2
    # linear at M = 2048 than whole-M temporaries); every bracket is an exact integer whatever
    # the order, and the per-element group sum runs in the same order: the blocks change no bits.
    for r in range(0, m, 128):
        sl = slice(r, r + 128)
        bracket = torch.bmm(a[:, sl], w.transpose(1, 2)).double()  # [G, rows, N]
        bracket.addcmul_(sqx[:, sl, None], zwd[None, None, :], value=-1)
        bracket.addcmul_(zxt[:, sl, None], rhs, value=-1)
        y[sl] = bracket.mul_(sxt[:, sl, None]).sum(dim=0)
    y.mul_(sw.double()[None, :])
    if bias is not None:
        y.add_(bias.double()[None, :])
    return y.to(out_dtype)


def tree_sum(ys: list[torch.Tensor]) -> torch.Tensor:
    """Σ ys as a balanced binary tree, the order every runtime sums group outputs in: a rank
    holding the first half of the groups computes the left subtree, so TP = 2 (and TP = 1)
    reproduce the same floating-point sum for any power-of-two number of groups."""
    if len(ys) == 1:
        return ys[0]
    h = len(ys) // 2
    return tree_sum(ys[:h]) + tree_sum(ys[h:])


def w4a4_linear_ref(x: torch.Tensor, layer: QuantizedLinear) -> torch.Tensor:
    """x [..., K] → [..., N] in x's dtype through real integer codes."""
    if layer.shards > 1:
        kg = layer.in_features // layer.shards
        return tree_sum([w4a4_linear_ref(x[..., i * kg:(i + 1) * kg], s)
                         for i, s in enumerate(layer.shard_linears())])
    shape = x.shape
    x2 = x.reshape(-1, shape[-1])
    qw = layer.weight_codes()
    if layer.act_groups > 1:
        qx, sx, zx, sum_qx = prologue_groups_ref(x2, layer.transform, layer.a_bits,
                                                 layer.act_clip_ratio, layer.act_groups)
        y = gemm_epilogue_groups_ref(qx, sx, zx, sum_qx, qw, layer.weight_scale,
                                     layer.weight_zero, layer.bias, x.dtype)
        return y.reshape(*shape[:-1], -1)
    qx, sx, zx, sum_qx = prologue_ref(x2, layer.transform, layer.a_bits, layer.act_clip_ratio)
    sum_qw = qw.sum(dim=-1, dtype=torch.int32)
    y = gemm_epilogue_ref(
        qx, sx, zx, sum_qx, qw, layer.weight_scale, layer.weight_zero, sum_qw, layer.bias, x.dtype
    )
    return y.reshape(*shape[:-1], -1)


def fake_quant_linear(x: torch.Tensor, layer: QuantizedLinear,
                      weight: torch.Tensor | None = None) -> torch.Tensor:
    """Simulated W/A quantization (dequantize, then float matmul): the `duquant` eval rows.
    `weight`: layer.dequantized_weight(), when the caller keeps it. Under autocast only the
    final product runs in low precision: the transform and the quantizer stay in float32, so
    the 4-bit grid never sees bfloat16 rounding."""
    with torch.autocast(x.device.type, enabled=False):
        xt = layer.transform.apply(x.float())
        xq = fake_quantize_per_token(xt, layer.a_bits, layer.act_clip_ratio, layer.act_groups)
    w = layer.dequantized_weight() if weight is None else weight
    y = xq @ w.t()
    if layer.bias is not None:
        y = y + layer.bias.float()
    return y.to(x.dtype)


def exact_quant_linear(x: torch.Tensor, layer: QuantizedLinear,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """The exact value of the quantized linear, rounded once per shard to x's dtype: the same
    codes as `w4a4_linear_ref`, dequantized and multiplied in float64. Every dequantized value
    (float32 scale × integer) is exact in float64 and the product's rounding is ~1e-16, so this
    equals the integer reference except where the exact sum lies within that of a float32
    rounding midpoint: the real-valued statement of what integer kernels compute, for method
    rows that a checkpoint must reproduce. fp32 fake quantization (`fake_quant_linear`) differs
    from both by ~1e-7 per linear, which a W4A4 model amplifies (a code that crosses a rounding
    boundary moves the next layer's ranges) to ~1% of perplexity on 8 windows.
    `weight`: layer.dequantized_weight(torch.float64), when the caller keeps it."""
    w = layer.dequantized_weight(torch.float64) if weight is None else weight
    shape = x.shape
    k = layer.in_features
    with torch.autocast(x.device.type, enabled=False):
        xt = layer.transform.apply(x.reshape(-1, k).float())
        g = layer.act_groups
        q, s, z = quantize_per_token(xt.reshape(-1, g, k // g), layer.a_bits,
                                     layer.act_clip_ratio, check_finite=False)
        xd = dequantize(q, s.unsqueeze(-1), z.unsqueeze(-1), torch.float64).reshape(-1, k)
        kg = k // layer.shards
        parts = []
        for i in range(layer.shards):  # row-parallel shards: rounded, then summed as ranks do
            y = xd[:, i * kg:(i + 1) * kg] @ w[:, i * kg:(i + 1) * kg].t()
            if i == 0 and layer.bias is not None:
                y = y + layer.bias.double()
            parts.append(y.to(x.dtype))
        return tree_sum(parts).reshape(*shape[:-1], -1)


class QuantLinearModule(torch.nn.Module):
    """Drop-in replacement for nn.Linear running a `QuantizedLinear` in plain torch.

    mode "fake":  dequantize-then-matmul in float32 (the paper's simulation; fast, used while
                  calibrating);
    mode "exact": dequantize-then-matmul in float64, rounded once (`exact_quant_linear`: what
                  `duquant eval`'s method rows report);
    mode "int":   real integer codes through `w4a4_linear_ref` (how a checkpoint is evaluated).
    """

    MODES = ("fake", "exact", "int")

    def __init__(self, layer: QuantizedLinear, mode: str = "fake") -> None:
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.layer = layer
        self.mode = mode
        self.in_features = layer.in_features
        self.out_features = layer.out_features
        # Dequantized weights are cached once: these modes are evaluation tools, not a server.
        self._w = (None if mode == "int" else
                   layer.dequantized_weight(torch.float64 if mode == "exact" else torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "int":
            return w4a4_linear_ref(x, self.layer)
        if self.mode == "exact":
            return exact_quant_linear(x, self.layer, self._w)
        return fake_quant_linear(x, self.layer, self._w)

    def extra_repr(self) -> str:
        lay = self.layer
        return (f"in={self.in_features}, out={self.out_features}, W{lay.w_bits}A{lay.a_bits}, "
                f"block={lay.transform.block_size}, act_groups={lay.act_groups}, mode={self.mode}")
