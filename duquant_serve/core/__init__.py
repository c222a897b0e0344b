"""Torch-only DuQuant math: the single source of truth shared by offline_quant and the runtime."""

from .config import FORMAT_VERSION, QUANT_METHOD, ConfigError, DuQuantConfig
from .pack import pack_int4, pack_weight_codes, unpack_int4, unpack_weight_codes
from .quant import (
    NonFiniteInputError,
    dequantize,
    fake_quantize_per_token,
    quantize_per_channel,
    quantize_per_token,
)
from .reference import (
    QuantizedLinear,
    fake_quant_linear,
    gemm_epilogue_ref,
    prologue_ref,
    quantize_linear,
    w4a4_linear_ref,
)
from .transform import (
    InputTransform,
    TransformError,
    build_input_transform,
    choose_block_size,
    hadamard_transform,
    identity_transform,
)

__all__ = [
    "FORMAT_VERSION",
    "QUANT_METHOD",
    "ConfigError",
    "DuQuantConfig",
    "InputTransform",
    "NonFiniteInputError",
    "QuantizedLinear",
    "TransformError",
    "build_input_transform",
    "choose_block_size",
    "dequantize",
    "fake_quant_linear",
    "fake_quantize_per_token",
    "gemm_epilogue_ref",
    "hadamard_transform",
    "identity_transform",
    "pack_int4",
    "pack_weight_codes",
    "prologue_ref",
    "quantize_linear",
    "quantize_per_channel",
    "quantize_per_token",
    "unpack_int4",
    "unpack_weight_codes",
    "w4a4_linear_ref",
]
