"""DuQuant input transforms: smoothing, greedy block rotation (Algorithm 1), zigzag permutation.

One module defines the transform both ways:
- offline, `build_input_transform` calibrates R1 / perm / R2 on a layer input and
  `InputTransform.apply_to_weight` rewrites the weight along its input dim;
- at run time, `InputTransform.apply` (and `rotate_permute_rotate`) is the reference every
  prologue kernel must reproduce.

For an activation row x (width C, block b, K = C / b blocks):

    x' = ((x / smooth) · BlockDiag(R1)) [perm] · BlockDiag(R2)      (perm is a gather)
    W' = ((W · smooth) · BlockDiag(R1)) [:, perm] · BlockDiag(R2)

so x'·W'ᵀ = x·Wᵀ because BlockDiag(R)·P is orthogonal.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import DuQuantConfig, largest_power_of_two_divisor


class TransformError(ValueError):
    """A transform that cannot be built or is not valid for the width it is used on."""


# ---------------------------------------------------------------------------------------------
# Shapes
# ---------------------------------------------------------------------------------------------


def choose_block_size(width: int, configured: int, shards: int = 1, minimum: int = 8) -> int:
    """Largest power of two <= `configured` dividing the per-shard width (DESIGN: SmolLM2 576 → 64)."""
    if configured < 2 or configured & (configured - 1):
        raise TransformError(f"block size must be a power of two, got {configured}")
    if shards < 1 or width % shards:
        raise TransformError(f"width {width} cannot be split into {shards} equal shards")
    shard = width // shards
    b = largest_power_of_two_divisor(shard, configured, minimum)
    if not b:
        raise TransformError(
            f"no rotation block size between {minimum} and {configured} divides the shard width "
            f"{shard} (width {width}, {shards} shard(s))"
        )
    return b


def input_layout(qcfg: DuQuantConfig, width: int, row_parallel: bool) -> tuple[int, int]:
    """(activation groups, rotation block) of a linear input of `width` channels: the groups
    `qcfg.activation_groups` gives and the widest configured block dividing one of them. The
    pipeline and the vLLM plugin both size inputs through this."""
    groups = qcfg.activation_groups(width, row_parallel)
    return groups, choose_block_size(width, qcfg.block_size, groups)


# ---------------------------------------------------------------------------------------------
# Rotations
# ---------------------------------------------------------------------------------------------


def initial_rotation(n: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """R̃ [n, n]: orthogonal, first row uniform 1/√n (so x_d·R̃ spreads channel d evenly).

    Product of Givens rotations on planes (i, i+1) with cos = 1/√(i+2), sin = √(i+1)/√(i+2),
    whose last column comes out uniform; moving it to column 0 and transposing puts it in row 0.
    """
    r = torch.eye(n, dtype=torch.float64)
    for i in range(n - 1):
        c = 1.0 / math.sqrt(i + 2)
        s = math.sqrt(i + 1) / math.sqrt(i + 2)
        col_i, col_j = r[:, i].clone(), r[:, i + 1].clone()
        r[:, i] = c * col_i + s * col_j
        r[:, i + 1] = -s * col_i + c * col_j
    r[:, [0, n - 1]] = r[:, [n - 1, 0]]
    return r.t().contiguous().to(dtype)


def random_orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    """Haar-random orthogonal [n, n] (QR of a Gaussian matrix with the sign fix), float64."""
    a = torch.randn(n, n, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(a)
    return q * torch.sign(torch.diagonal(r)).unsqueeze(0)


def orthonormalize(r: torch.Tensor) -> torch.Tensor:
    """Nearest orthogonal matrix (polar factor) — removes drift accumulated over greedy steps."""
    u, _, vh = torch.linalg.svd(r.double())
    return u @ vh


def greedy_rotation(
    x: torch.Tensor,
    steps: int,
    generator: torch.Generator,
    channel_select: str = "column",
) -> torch.Tensor:
    """Algorithm 1 on x [T, b] (a layer input reshaped to blocks) → orthogonal R [b, b] float64.

    Each step moves the current largest-|x| channel to position 0 of R̃·diag(1, Q') (one Q' per
    call, as the reference does), applies it, and the prefix of steps with the smallest
    max |x·R| is kept (possibly none: identity).

    x may live on any device: the [T, b] products run there, while the [b, b] rotations and the
    generator stay on the CPU, so the random draws (and R, up to rounding) do not depend on it.
    """
    if x.dim() != 2:
        raise TransformError(f"greedy_rotation expects [T, b], got {tuple(x.shape)}")
    b = x.shape[1]
    eye = torch.eye(b, dtype=torch.float64)
    if b == 1 or steps == 0:
        return eye
    q = torch.eye(b, dtype=torch.float64)
    q[1:, 1:] = random_orthogonal(b - 1, generator)
    base = initial_rotation(b) @ q
    if channel_select not in ("column", "row"):
        raise TransformError(f"unknown channel_select {channel_select!r}")
    cur = x.float().clone()
    acc = eye.clone()
    best = eye.clone()
    # Per-channel |max| of the current x·R: its max is this step's peak and its argmax the next
    # step's channel, so one pass over [T, b] serves both.
    col = cur.abs().amax(dim=0)
    best_peak = col.max().item()
    for _ in range(steps):
        if channel_select == "column":
            ch = int(col.argmax())
        else:  # reference-code quirk: row index of the flat argmax, mod b
            ch = int(cur.abs().argmax()) // b % b
        step = base.clone()
        if ch:
            step[:, [0, ch]] = step[:, [ch, 0]]
            step[[0, ch], :] = step[[ch, 0], :]
        acc = acc @ step
        cur = cur @ step.to(device=cur.device, dtype=torch.float32)
        col = cur.abs().amax(dim=0)
        peak = col.max().item()
        if peak < best_peak:
            best_peak = peak
            best = acc.clone()
    return orthonormalize(best)


def hadamard(n: int) -> torch.Tensor:
    """Normalized Sylvester Hadamard [n, n] float64 (n a power of two): the QuaRot-style baseline."""
    if n < 1 or n & (n - 1):
        raise TransformError(f"Hadamard size must be a power of two, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat((torch.cat((h, h), 1), torch.cat((h, -h), 1)), 0)
    return h / math.sqrt(n)


# ---------------------------------------------------------------------------------------------
# Permutation
# ---------------------------------------------------------------------------------------------


def zigzag_permutation(channel_absmax: torch.Tensor, block: int, shards: int = 1) -> torch.Tensor:
    """Gather indices [C] (int64) dealing channels to blocks in a zigzag, within each shard.

    Channels sorted by descending |max| go to blocks 0, 1, …, K−1, K−1, …, 0, 0, 1, …; each block
    keeps descending order; blocks are concatenated. With `shards` > 1 this runs independently on
    each contiguous shard, so a row-parallel rank only ever gathers its own channels.
    """
    c = channel_absmax.numel()
    if c % shards or (c // shards) % block:
        raise TransformError(f"width {c} is not {shards} shard(s) of whole {block}-blocks")
    shard_w = c // shards
    k = shard_w // block
    out = []
    absmax = channel_absmax.detach().double().cpu()  # a sort of C values: the CPU's job
    for s in range(shards):
        vals = absmax[s * shard_w : (s + 1) * shard_w]
        order = torch.argsort(vals, descending=True, stable=True)
        i = torch.arange(shard_w)
        cycle, pos = i // k, i % k
        bucket = torch.where(cycle % 2 == 0, pos, k - 1 - pos)
        # Stable sort by bucket keeps each bucket's channels in descending-|max| order.
        by_bucket = torch.argsort(bucket, stable=True)
        out.append(order[by_bucket] + s * shard_w)
    return torch.cat(out)


def is_permutation(perm: torch.Tensor, n: int) -> bool:
    if perm.dim() != 1 or perm.numel() != n:
        return False
    seen = torch.zeros(n, dtype=torch.bool)
    p = perm.long()
    if p.numel() and (p.min() < 0 or p.max() >= n):
        return False
    seen[p] = True
    return bool(seen.all())


def permutation_respects_shards(perm: torch.Tensor, shards: int) -> bool:
    n = perm.numel()
    if n % shards:
        return False
    w = n // shards
    owner = torch.arange(n) // w
    return bool((perm.long() // w == owner).all())


# ---------------------------------------------------------------------------------------------
# Applying a transform
# ---------------------------------------------------------------------------------------------


def block_rotate(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """x [..., C] · BlockDiag(r) with r [b, b] shared by all C/b blocks (computed on x's device).

    Both operands are made contiguous first: BLAS picks its kernel by memory layout, and a
    strided slice or a column-major rotation rounds differently in the last bit, so callers
    holding the same values (reference, kernels, a TP rank's input slice) get the same result."""
    b = r.shape[0]
    shape = x.shape
    xb = x.contiguous().reshape(*shape[:-1], shape[-1] // b, b)
    return (xb @ r.to(device=x.device, dtype=x.dtype).contiguous()).reshape(shape)


def rotate_permute_rotate(
    x: torch.Tensor, r1: torch.Tensor, perm: torch.Tensor, r2: torch.Tensor
) -> torch.Tensor:
    """x [..., C] → BlockDiag(R1) → gather perm → BlockDiag(R2)."""
    y = block_rotate(x, r1)
    y = y.index_select(-1, perm.to(device=x.device, dtype=torch.long))
    return block_rotate(y, r2)


@dataclass
class InputTransform:
    """The transform of one linear input. r1, r2: [b, b] float32; perm: [C] int64; smooth: [C]
    float32 or None (None when the smoothing is folded into the previous layer)."""

    r1: torch.Tensor
    perm: torch.Tensor
    r2: torch.Tensor
    smooth: torch.Tensor | None = None
    # Set by identity_transform (the rtn/smoothquant baselines): rotations are I, perm is arange,
    # so apply() skips them. Never set for checkpoint transforms.
    is_identity: bool = False

    def __post_init__(self) -> None:
        # Shapes only (also valid on meta tensors): a mismatch here would otherwise surface as
        # an opaque reshape error at the first forward.
        b = self.r1.shape[0] if self.r1.dim() == 2 else -1
        if self.r1.dim() != 2 or tuple(self.r1.shape) != (b, b) or tuple(self.r2.shape) != (b, b):
            raise TransformError(f"r1 {tuple(self.r1.shape)} and r2 {tuple(self.r2.shape)} "
                                 "must be the same square [b, b]")
        if self.perm.dim() != 1 or self.perm.numel() % b:
            raise TransformError(f"perm {tuple(self.perm.shape)}: the width must be a multiple "
                                 f"of the rotation block {b}")
        if self.smooth is not None and tuple(self.smooth.shape) != (self.perm.numel(),):
            raise TransformError(f"smooth {tuple(self.smooth.shape)} does not match width "
                                 f"{self.perm.numel()}")

    @property
    def width(self) -> int:
        return self.perm.numel()

    @property
    def block_size(self) -> int:
        return self.r1.shape[0]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Runtime reference for activations: x [..., C] → transformed, in x's dtype."""
        if x.shape[-1] != self.width:
            raise TransformError(f"input width {x.shape[-1]} != transform width {self.width}")
        if self.smooth is not None:
            x = x / self.smooth.to(x)
        if self.is_identity:
            return x
        return rotate_permute_rotate(x, self.r1, self.perm, self.r2)

    def apply_to_weight(self, w: torch.Tensor) -> torch.Tensor:
        """w [N, C] → w' with x'·w'ᵀ = x·wᵀ (smoothing multiplies where activations divide)."""
        if self.smooth is not None:
            w = w * self.smooth.to(w)
        if self.is_identity:
            return w
        return rotate_permute_rotate(w, self.r1, self.perm, self.r2)

    def slice(self, lo: int, hi: int) -> InputTransform:
        """The transform of input channels [lo, hi) alone: valid when the permutation keeps them
        inside the range and blocks do not straddle its ends (tensor-parallel shards and
        activation groups of row-parallel layers are built that way)."""
        b = self.block_size
        if not 0 <= lo < hi <= self.width or lo % b or hi % b:
            raise TransformError(f"channels [{lo}, {hi}) are not whole {b}-blocks of width {self.width}")
        perm = self.perm[lo:hi] - lo
        if perm.numel() and (int(perm.min()) < 0 or int(perm.max()) >= hi - lo):
            raise TransformError(f"the permutation moves channels into [{lo}, {hi}) from outside")
        smooth = None if self.smooth is None else self.smooth[lo:hi]
        return InputTransform(self.r1, perm, self.r2, smooth, self.is_identity)

    def to(self, device: torch.device | str) -> InputTransform:
        mv = (lambda t: None if t is None else t.to(device))  # noqa: E731
        return InputTransform(mv(self.r1), mv(self.perm), mv(self.r2), mv(self.smooth), self.is_identity)

    def first_difference(self, other: InputTransform) -> str | None:
        """Name of the first component that differs ("rot1", "perm", "rot2", "smooth"), or None.

        Fused linears (qkv, gate_up) must share one transform bit for bit."""

        def eq(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
            if a is None or b is None:
                return a is None and b is None
            return a.shape == b.shape and bool(torch.equal(a.cpu(), b.cpu()))

        for name, a, b in (("rot1", self.r1, other.r1), ("perm", self.perm, other.perm),
                           ("rot2", self.r2, other.r2), ("smooth", self.smooth, other.smooth)):
            if not eq(a, b):
                return name
        return None


def identity_transform(width: int, block: int) -> InputTransform:
    eye = torch.eye(block)
    return InputTransform(eye, torch.arange(width), eye.clone(), is_identity=True)


def hadamard_transform(width: int, block: int) -> InputTransform:
    """Block-Hadamard rotation, no permutation: the QuaRot-RTN baseline of `duquant eval`."""
    return InputTransform(hadamard(block).float(), torch.arange(width), torch.eye(block))


def build_input_transform(
    x: torch.Tensor,
    block: int,
    steps: int,
    generator: torch.Generator,
    permutation: str = "zigzag",
    shards: int = 1,
    channel_select: str = "column",
    smooth: torch.Tensor | None = None,
) -> InputTransform:
    """Calibrate R1 → zigzag → R2 on x [T, C] (the smoothed mean calibration input).

    `smooth` is only recorded (for online smoothing); x must already be divided by it. The
    transform's tensors come back on x's device (greedy_rotation says what runs where).
    """
    t, c = x.shape
    if c % (block * shards):
        raise TransformError(f"width {c} is not {shards} shard(s) of whole {block}-blocks")
    xf = x.float()
    r1 = greedy_rotation(xf.reshape(-1, block), steps, generator, channel_select)
    y = block_rotate(xf, r1.float())
    if permutation == "zigzag":
        perm = zigzag_permutation(y.abs().amax(dim=0), block, shards)
        y = y[:, perm.to(y.device)]
        r2 = greedy_rotation(y.reshape(-1, block), steps, generator, channel_select)
    elif permutation == "none":
        perm = torch.arange(c)
        r2 = torch.eye(block, dtype=torch.float64)
    else:
        raise TransformError(f"unknown permutation {permutation!r}")
    return InputTransform(
        r1.float(), perm.long(), r2.float(), None if smooth is None else smooth.float()
    ).to(x.device)


def orthogonality_error(r: torch.Tensor) -> float:
    """max |R·Rᵀ − I| (the checkpoint validator's test of a rotation)."""
    rd = r.double()
    return float((rd @ rd.t() - torch.eye(r.shape[0], dtype=torch.float64)).abs().max())


# ---------------------------------------------------------------------------------------------
# Smoothing
# ---------------------------------------------------------------------------------------------


def smoothing_factors(
    act_absmax: torch.Tensor, weight_absmax: torch.Tensor, alpha: float
) -> torch.Tensor:
    """s_j = clamp(max|X_j|^α / max|W_:,j|^(1−α), min=1e-5) (SmoothQuant, as DuQuant uses it)."""
    a = act_absmax.double().clamp(min=1e-5)
    w = weight_absmax.double().clamp(min=1e-5)
    return (a.pow(alpha) / w.pow(1 - alpha)).clamp(min=1e-5).float()
