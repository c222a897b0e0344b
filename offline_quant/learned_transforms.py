"""Learned transforms: a site's smoothing vector and block rotations R1, R2 refined together
by gradient descent on what its linears lose to W4A4 quantization.

The greedy rotation (Algorithm 1) only looks at the largest outlier of a mean calibration
input, and α-smoothing is one global trade-off. Starting from both, this moves

    s  (per-channel smoothing, s = s_α·exp(δ) > 0)  and  R1, R2  (one b×b rotation each)

to minimize ‖Q_a((x/s)·M)·Q_w((W·s)·M)ᵀ − x·Wᵀ‖² with M = BlockDiag(R1)·P·BlockDiag(R2), on
calibration tokens x and the site's stacked 16-bit weights W. The rotations stay exactly
orthogonal as R = R₀·exp(A − Aᵀ) (SpinQuant and OSTQuant learn full rotations on the same
manifold, OSTQuant with a learned scaling too); here they stay block-diagonal, shared by all
blocks, with the zigzag permutation fixed, so the checkpoint format and the kernels are
unchanged. Rounding passes gradients straight through.
"""

from __future__ import annotations

import torch

from duquant_serve.core.quant import SCALE_MAX, SCALE_MIN, qmax
from duquant_serve.core.transform import InputTransform, orthonormalize

# Adam's rate: chosen on WikiText-2 validation windows (benchmarks/results/accuracy/README.md);
# PipelineOptions.learn_lr and `duquant quantize --learn-lr` default to it.
DEFAULT_LR = 0.032


def _fake_quant_ste(x: torch.Tensor, bits: int, clip: float = 1.0, groups: int = 1) -> torch.Tensor:
    """core.quant's quantizer over each row of x [R, C] (per `groups` contiguous channel groups):
    per-token activations, or per-output-channel weights with clip 1. Rounding passes
    gradients straight through."""
    shape = x.shape
    xg = x.reshape(shape[0], groups, shape[1] // groups)
    lo = xg.amin(dim=-1, keepdim=True) * clip
    hi = xg.amax(dim=-1, keepdim=True) * clip
    scale = ((hi - lo) / qmax(bits)).clamp(SCALE_MIN, SCALE_MAX)
    zero = torch.round(-lo / scale).detach()
    v = xg / scale
    q = (v + (torch.round(v) - v).detach() + zero).clamp(0, qmax(bits))
    return ((q - zero) * scale).reshape(shape)


def _rotate(x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    b = r.shape[0]
    return (x.reshape(x.shape[0], -1, b) @ r).reshape(x.shape)


def refine_smoothing_and_rotations(
    tr: InputTransform,
    x: torch.Tensor,
    weight: torch.Tensor,
    smooth: torch.Tensor,
    a_bits: int,
    w_bits: int,
    clip: float,
    groups: int = 1,
    steps: int = 40,
    lr: float = DEFAULT_LR,
    matmul_dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, InputTransform, dict[str, float]]:
    """Learn the smoothing vector and R1, R2 of one site together (OSTQuant-style, inside the
    block-rotation format) on its W4A4 output error

        L(s, R1, R2) = ‖Q_a((x/s)·M)·Q_w((W·s)·M)ᵀ − x·Wᵀ‖²

    x [S, C] the raw site input (before any smoothing), weight [N, C] the raw stacked weights,
    smooth [C] the starting factors (α-smoothing), tr the greedy transform built on x / smooth
    (its own smooth field ignored). Both quantizers are in the loss: smoothing trades activation
    range for weight range, which only the weight quantizer prices. s = smooth·exp(δ) stays
    positive. matmul_dtype bfloat16 runs the loss's products in bfloat16 (autocast; on a CPU
    with AVX-512 BF16 / AMX the stage takes about half the time): its rounding (~0.4%) is far
    below the 4-bit error the loss measures, and the transform is rebuilt in float32 after.
    → (s, transform with the new R1/R2 and tr's smooth field unchanged, report)."""
    x = x.float()
    w = weight.float().to(x.device)
    s0 = smooth.float().to(x.device)
    perm = tr.perm.to(x.device)
    r1_0, r2_0 = tr.r1.float().to(x.device), tr.r2.float().to(x.device)
    b = r1_0.shape[0]
    a1 = torch.zeros(b, b, device=x.device, requires_grad=True)
    a2 = torch.zeros(b, b, device=x.device, requires_grad=True)
    d = torch.zeros(x.shape[1], device=x.device, requires_grad=True)
    opt = torch.optim.Adam([a1, a2, d], lr=lr)
    target = x @ w.t()
    ref = target.pow(2).mean().clamp(min=1e-30)

    def params():
        return (s0 * torch.exp(d), r1_0 @ torch.linalg.matrix_exp(a1 - a1.t()),
                r2_0 @ torch.linalg.matrix_exp(a2 - a2.t()))

    low = matmul_dtype != torch.float32

    def loss_of(s, r1, r2):
        with torch.autocast(x.device.type, dtype=matmul_dtype, enabled=low):
            xt = _rotate(_rotate(x / s, r1)[:, perm], r2).float()
            wt = _rotate(_rotate(w * s, r1)[:, perm], r2).float()
            y = _fake_quant_ste(xt, a_bits, clip, groups) @ _fake_quant_ste(wt, w_bits).t()
        return (y.float() - target).pow(2).mean() / ref

    with torch.no_grad():
        before = float(loss_of(s0, r1_0, r2_0))
    best, best_p = before, (s0, r1_0, r2_0)
    for _ in range(steps):
        p = params()
        loss = loss_of(*p)
        if loss.item() < best:
            best, best_p = loss.item(), tuple(t.detach() for t in p)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        p = params()
        last = float(loss_of(*p))
        if last < best:
            best, best_p = last, p
    s, r1, r2 = best_p
    r1, r2 = (orthonormalize(r).float().to(tr.r1.device) for r in (r1, r2))
    return (s.detach().float(), InputTransform(r1, tr.perm, r2, tr.smooth),
            {"loss_before": before, "loss_after": best})
