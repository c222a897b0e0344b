"""W4A4 linear kernels. Import `duquant_serve.kernels.select.choose_kernel` to pick one.

This package's own import is light: ops and kernels load Triton and the CUDA extension only
when a CUDA implementation is first called or a kernel's `can_implement` asks for them.
"""
