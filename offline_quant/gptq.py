"""Weight quantization on the transformed weights: per-row clip search and GPTQ.

Both produce exactly the grid the kernels decode (core.quant: per-output-channel asymmetric
codes, `lo = f_lo·min(w)`, `hi = f_hi·max(w)`, `zero = round(-lo/scale)`), so a checkpoint made
with them is read and served like any other; only the codes and the per-row clip differ.

- Clip search picks each row's clip factor from a grid by the row's output error under the
  input second moment H = XᵀX (diagonal part), instead of one fixed ratio for all rows.
- GPTQ (Frantar et al., 2022) quantizes the columns one at a time and spreads each column's
  rounding error over the columns not yet quantized, through the inverse Hessian of the layer's
  squared output error. Columns go in decreasing order of H's diagonal ("act order"); the grid
  is per row, fixed before the loop, so the order changes nothing in the stored layout.

H comes from the transformed calibration inputs of the linear's site (one H per site: q/k/v and
gate/up share their input), accumulated in float64 by the caller.
"""

from __future__ import annotations

import torch

from duquant_serve.core.quant import choose_qparams, qmax


class GPTQError(ValueError):
    """A Hessian or weight GPTQ cannot work with."""


def _qparams(w: torch.Tensor, factor: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row min/max scaled by `factor` [N] → scale, zero (core.quant.choose_qparams), in w's dtype."""
    scale, zero = choose_qparams(w.amin(dim=-1) * factor, w.amax(dim=-1) * factor, bits)
    return scale.to(w.dtype), zero.to(w.dtype)


def search_clip(
    w: torch.Tensor,
    bits: int,
    h_diag: torch.Tensor | None = None,
    grid: int = 40,
    min_factor: float = 0.5,
) -> torch.Tensor:
    """w [N, K] → per-row clip factor [N] in [min_factor, 1] minimizing Σ_k h_k (w_k − ŵ_k)²
    (h = diag(XᵀX); plain squared error without it)."""
    wf = w.float()
    h = torch.ones(wf.shape[1], device=wf.device) if h_diag is None else h_diag.float().to(wf.device)
    best_err = torch.full((wf.shape[0],), float("inf"), device=wf.device)
    best = torch.ones(wf.shape[0], device=wf.device)
    qm = qmax(bits)
    for f in torch.linspace(1.0, min_factor, grid).tolist():
        factor = torch.full_like(best, f)
        scale, zero = _qparams(wf, factor, bits)
        s, z = scale.unsqueeze(1), zero.unsqueeze(1)
        deq = (torch.clamp(torch.round(wf / s) + z, 0, qm) - z) * s
        err = ((deq - wf).pow(2) * h).sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, factor, best)
    return best


def gptq_quantize(
    w: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    factor: torch.Tensor,
    damp: float = 0.01,
    block: int = 128,
    act_order: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ of w [N, K] under H [K, K] on the per-row grid fixed by clip `factor` [N]
    → codes uint8 [N, K], scale fp32 [N], zero fp32 [N] (core.quant's semantics)."""
    n, k = w.shape
    if hessian.shape != (k, k):
        raise GPTQError(f"Hessian {tuple(hessian.shape)} does not match weight width {k}")
    if not torch.isfinite(hessian).all():
        raise GPTQError("Hessian has non-finite entries")
    wf = w.double().clone()
    scale, zero = _qparams(wf, factor.double(), bits)
    s, z = scale.unsqueeze(1), zero.unsqueeze(1)
    qm = qmax(bits)

    h = hessian.double().clone()
    dead = torch.diagonal(h) == 0  # a channel never active: its weights cannot matter
    h[dead, dead] = 1.0
    wf[:, dead] = 0.0
    perm = torch.argsort(torch.diagonal(h), descending=True) if act_order else torch.arange(k)
    wf = wf[:, perm]
    h = h[perm][:, perm]
    h.diagonal().add_(damp * torch.diagonal(h).mean())
    # Upper Cholesky factor of H⁻¹: row i holds the update direction for column i.
    try:
        hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    except RuntimeError as e:  # not positive definite even after damping
        raise GPTQError(f"Hessian is not positive definite after damping {damp}: {e}") from e

    codes = torch.empty(n, k, dtype=torch.uint8, device=w.device)
    for i0 in range(0, k, block):
        i1 = min(i0 + block, k)
        w1 = wf[:, i0:i1].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i0:i1, i0:i1]
        for i in range(i1 - i0):
            col = w1[:, i]
            q = torch.clamp(torch.round(col / s[:, 0]) + z[:, 0], 0, qm)
            codes[:, perm[i0 + i]] = q.to(torch.uint8)
            deq = (q - z[:, 0]) * s[:, 0]
            e = (col - deq) / hinv1[i, i]
            w1[:, i:] -= e.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            err1[:, i] = e
        wf[:, i1:] -= err1 @ hinv[i0:i1, i1:]
    return codes, scale.float(), zero.float()
