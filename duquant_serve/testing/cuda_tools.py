"""Reading compiled GPU code on a machine without a GPU (tests, not serving): Triton's bundled
`cuobjdump` (or one on PATH) prints SASS and per-kernel register / stack / local-memory use."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path


def cuobjdump() -> str | None:
    """Path of a cuobjdump executable, or None."""
    try:
        import triton
    except ImportError:
        return shutil.which("cuobjdump")
    exe = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    return str(exe) if exe.is_file() else shutil.which("cuobjdump")


def sass(obj: Path, exe: str) -> str:
    return subprocess.run([exe, "-sass", str(obj)], capture_output=True, text=True,
                          check=True).stdout


def resource_usage(obj: Path, exe: str) -> list[dict[str, int]]:
    """One {registers, stack_bytes, local_bytes} per kernel in an object file or cubin."""
    out = subprocess.run([exe, "-res-usage", str(obj)], capture_output=True, text=True,
                         check=True).stdout
    return [{"registers": int(r), "stack_bytes": int(st), "local_bytes": int(lo)}
            for r, st, lo in re.findall(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", out)]
