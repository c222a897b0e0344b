"""The Triton kernels under the Triton of the lent GPU machines' image (3.6, with torch 2.11),
not only under the newer one of the development venv.

The GPU session compiles our kernels with that image's Triton, and Triton's front end changes
between releases: 3.6 rejects an int8 `tl.dot` into an int32 accumulator unless `out_dtype` says
int32, which 3.9 infers. scripts/setup.sh installs triton==3.6.0 into .venv/triton-gpu-image;
these tests put it first on the path of a subprocess (torch stays the venv's: our kernels use
no torch API that changed between 2.11 and 2.13) and run the interpreter tests and the sm_90
compile there. (Triton 3.6's interpreter needs numpy < 2.4, which the venv has; the GPU image's
numpy 2.5 does not matter there, where kernels are compiled, not interpreted.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import test_triton_aot

ROOT = Path(__file__).resolve().parents[2]
GPU_IMAGE_TRITON = ROOT / ".venv" / "triton-gpu-image"  # the version: scripts/setup.sh
# Interpreter tests of every Triton kernel and of the linear kernels built on them.
INTERPRETER_TESTS = ["test_triton_prologue.py", "test_triton_gemm.py", "test_linear_kernels.py"]

pytestmark = pytest.mark.skipif(
    not (GPU_IMAGE_TRITON / "triton").is_dir(),
    reason=f"{GPU_IMAGE_TRITON} missing: scripts/setup.sh installs the GPU image's Triton there",
)


def _env(interpret: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(GPU_IMAGE_TRITON), str(ROOT), env.get("PYTHONPATH", "")])
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return env


def test_subprocess_imports_the_gpu_image_triton():
    r = subprocess.run([sys.executable, "-c", "import triton; print(triton.__version__, triton.__file__)"],
                       capture_output=True, text=True, env=_env(False), timeout=120, check=True)
    version, path = r.stdout.split()
    assert Path(path).is_relative_to(GPU_IMAGE_TRITON)
    (dist,) = GPU_IMAGE_TRITON.glob("triton-*.dist-info")
    assert dist.name == f"triton-{version}.dist-info"


def test_interpreter_tests_pass_under_gpu_image_triton():
    tests = [str(Path(__file__).with_name(name)) for name in INTERPRETER_TESTS]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                       capture_output=True, text=True, env=_env(True), cwd=ROOT, timeout=1200)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout.splitlines()[-1]


def test_kernels_compile_for_sm90_under_gpu_image_triton():
    test_triton_aot.check_report(test_triton_aot.compile_report(90, GPU_IMAGE_TRITON), 90)
