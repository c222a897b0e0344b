"""Kernel tests run Triton kernels on CPU through the interpreter.

TRITON_INTERPRET must be set before any kernel module is imported (triton.jit reads it when it
decorates), so it is set here, at collection time of this directory.
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
