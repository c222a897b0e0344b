"""CUTLASS W4A4 GEMM sources (csrc/) and their build script (build.sh).

The compiled library, libduquant_ext.so, is torch-free and loaded at run time by
`duquant_serve.kernels.cutlass` (found through $DUQUANT_EXT_LIB or cutlass_ext/build/).
"""

from pathlib import Path

CSRC = Path(__file__).resolve().parent / "csrc"
BUILD_SCRIPT = Path(__file__).resolve().parent / "build.sh"
