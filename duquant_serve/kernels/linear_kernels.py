"""The W4A4 linear kernels, one per file: CUTLASS (cutlass_linear.py: sm_90a packed / int8
weights, sm_80), Triton (triton_linear.py: ungrouped, and activation groups), CPU
(cpu_int8.py: int8 or exact fp32 GEMM on the codes), torch reference (torch_ref.py). select.py
ranks them; this module names them in one place.

Each `apply` is a straight line of `torch.ops.duquant.*` calls (ops.py), or on CPU (`cpu_int8`)
of the plain torch functions behind them: no data-dependent Python, no printing, so
torch.compile traces it and vLLM can capture it in CUDA graphs. Availability checks
(`can_implement`) import Triton / load the extension lazily.
"""

from .cpu_int8 import CpuFp32GemmKernel, CpuInt8Kernel, int_mm_cpu_missing
from .cutlass_linear import CutlassSm80Kernel, CutlassSm90Int8WeightKernel, CutlassSm90Kernel
from .torch_ref import TorchRefKernel
from .triton_linear import TritonGroupsKernel, TritonKernel

__all__ = ["CpuFp32GemmKernel", "CpuInt8Kernel", "CutlassSm80Kernel", "CutlassSm90Int8WeightKernel",
           "CutlassSm90Kernel", "TorchRefKernel", "TritonGroupsKernel", "TritonKernel",
           "int_mm_cpu_missing"]
