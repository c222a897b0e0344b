"""A checkpoint linear as a torch module run by a serving kernel, without vLLM: what
`duquant serve` computes per linear (`duquant eval --kernels`, the offline checks)."""

from __future__ import annotations

import torch

from ..core.reference import QuantizedLinear
from .base import LayerSpec, device_capability
from .select import choose_kernel


class KernelLinear(torch.nn.Module):
    """One linear through the kernel `choose_kernel` picks for it on `device` (cpu_int8 on
    CPU; Triton or CUTLASS on a GPU, after their self-test), activations cast to `act_dtype`."""

    def __init__(self, layer: QuantizedLinear, device: torch.device, name: str,
                 act_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        spec = LayerSpec(
            layer.in_features // layer.shards, layer.out_features,
            layer.transform.block_size, act_groups=layer.act_groups // layer.shards,
            w_bits=layer.w_bits, a_bits=layer.a_bits,
            has_smooth=layer.transform.smooth is not None, has_bias=layer.bias is not None,
            act_dtype=act_dtype, device_type=device.type, capability=device_capability(device))
        self.kernel = choose_kernel(spec, layer_name=name)
        self.prepared = self.kernel.prepare_groups(spec, layer, device=device)
        self.act_dtype = act_dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kernel.apply_groups(self.prepared, x.to(self.act_dtype)).to(x.dtype)
