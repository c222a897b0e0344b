"""`duquant bench SUITE [args]`: one door to the benchmark scripts in this folder.

Each suite is a script that also runs on its own (`python benchmarks/<script> --help`); this
only maps names to scripts so users need not know the file layout.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUITES = {
    "kernels": ("gpu_session.py", "W4A4 kernels vs BF16/int8 on model shapes, correctness first (GPU)"),
    "serve": ("serve/bench_serve.py", "TTFT/TPOT/ITL/throughput: 16-bit vs W4A4 behind vLLM servers"),
    "serve-ppl": ("serve_ppl.py", "perplexity through `duquant serve` vs `duquant eval`"),
    "serve-lm-eval": ("serve/lm_eval_server.py", "lm-eval loglikelihoods through the server: 16-bit vs W4A4"),
    "quantize": ("quantize/bench_quantize.py", "offline quantization time per device; CPU vs GPU agreement"),
    "tune-gemm": ("kernels/tune_triton_gemm.py", "Triton GEMM tile tuning on this GPU -> its config table"),
    "accuracy": ("accuracy/run_smollm2_ppl.sh", "SmolLM2 WikiText-2 perplexity, every method"),
    "capacity": ("capacity/capacity_model.py", "70B sizing: memory per GPU, smallest TP x PP, decode ratio"),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUITES:
        print("usage: duquant bench SUITE [args]\n\nsuites:")
        for name, (script, what) in SUITES.items():
            print(f"  {name:<13} {what}  (benchmarks/{script})")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    script, _ = SUITES[argv[0]]
    path = HERE / script
    if path.suffix == ".sh":
        import subprocess

        return subprocess.call(["bash", str(path), *argv[1:]])
    sys.argv = [str(path), *argv[1:]]
    try:
        runpy.run_path(str(path), run_name="__main__")
    except SystemExit as e:
        return int(e.code or 0)
    return 0


if __name__ == "__main__":  # `duquant bench` runs this module (the library never imports it)
    sys.exit(main(sys.argv[1:]))
