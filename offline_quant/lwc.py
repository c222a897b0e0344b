"""Learnable weight clipping (OmniQuant's LWC, as DuQuant+LWC uses it), per linear.

Learns per-row factors f_lo, f_hi = sigmoid(θ) that scale the row min/max before the
asymmetric quantizer of `duquant_serve.core.quant`, minimizing the MSE between the W/A-quantized
linear and the 16-bit one on calibration tokens. Rounding passes gradients straight through.
"""

from __future__ import annotations

import math

import torch

from duquant_serve.core.quant import SCALE_MAX, SCALE_MIN, ZERO_LIMIT, qmax


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return (x.round() - x).detach() + x


def _fake_quant_rows(w: torch.Tensor, lo_t: torch.Tensor, hi_t: torch.Tensor, bits: int):
    lo = w.amin(dim=1) * torch.sigmoid(lo_t)
    hi = w.amax(dim=1) * torch.sigmoid(hi_t)
    scale = ((hi - lo) / qmax(bits)).clamp(SCALE_MIN, SCALE_MAX).unsqueeze(1)
    zero = _round_ste(-lo.unsqueeze(1) / scale).clamp(-ZERO_LIMIT, ZERO_LIMIT)
    q = (_round_ste(w / scale) + zero).clamp(0, qmax(bits))
    return (q - zero) * scale


def learn_clip_factors(
    w_t: torch.Tensor,
    x_q: torch.Tensor,
    target: torch.Tensor,
    bits: int,
    init_ratio: float,
    epochs: int = 20,
    lr: float = 1e-2,
    batch: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """w_t [N, K] weight in the transformed basis; x_q [S, K] quantized transformed activations;
    target [S, N] 16-bit outputs (without bias) → (lo_factor, hi_factor) [N] in (0, 1).

    Starts from the static clip ratio, so the result is never worse than it on the training loss
    at step 0 (the paper's LWC starts from sigmoid(4) ≈ 0.98 instead).
    """
    init = math.log(init_ratio / (1 - init_ratio)) if init_ratio < 1 else 4.0
    n = w_t.shape[0]
    lo_t = torch.full((n,), init, device=w_t.device, requires_grad=True)
    hi_t = torch.full((n,), init, device=w_t.device, requires_grad=True)
    opt = torch.optim.AdamW([lo_t, hi_t], lr=lr, weight_decay=0.0)
    w = w_t.float().detach()
    s = x_q.shape[0]
    for _ in range(epochs):
        for i in range(0, s, batch):
            xb, tb = x_q[i : i + batch], target[i : i + batch]
            loss = torch.nn.functional.mse_loss(xb @ _fake_quant_rows(w, lo_t, hi_t, bits).t(), tb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        return torch.sigmoid(lo_t).detach(), torch.sigmoid(hi_t).detach()
