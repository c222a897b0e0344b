"""benchmarks/gpu_session.py --dry: the one-call GPU script, run whole on CPU before a GPU
session spends its budget on it. Every kernel path's prepare layout goes through the ops' CPU
implementations, and the timing code (every piece it times) runs on a tiny shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from duquant_serve.kernels.select import KERNELS

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_session_dry_run_covers_every_path(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_session.py"), "--dry",
                        "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert not [x for x in rows if any(k.endswith("error") for k in x)]
    linear = [x for x in rows if x.get("check") == "linear"]
    assert {x["path"] for x in linear} == set(KERNELS) - {"triton_groups"}
    for x in linear:  # bf16 inputs, fp32 reference: only input rounding separates them
        assert x["nan"] == 0 and x["rel_err"] < 1e-2, x
    # The load-time self-test ran for the CPU kernels (not for torch_ref, the reference), and
    # passed.
    checks = [x for x in rows if x.get("check") == "selftest"]
    assert {x["path"] for x in checks} == {"cpu_int8", "cpu_fp32_gemm"}
    assert all(x["passed"] for x in checks)
    # The CUDA-graph replay check needs a GPU: the dry run says it skipped it.
    assert any("graph replay check skipped" in x.get("info", "") for x in rows)
    # The block-scaled GEMM of activation-group layers: right, and timed beside the others.
    groups = [x for x in rows if x.get("check") == "groups"]
    assert {x["M"] for x in groups} == {1, 7, 33}
    assert all(x["rel_err"] < 1e-2 and x["nan"] == 0 and x["groups_ms"] > 0 for x in groups)
    # The split-K GEMM, forced over several splits: right, and the same bits launch after launch.
    split_k = [x for x in rows if x.get("check") == "split_k"]
    assert {x["split"] for x in split_k} == {2, 3, 8}
    assert all(x["rel_err"] < 1e-2 and x["differing"] == 0 for x in split_k), split_k
    split = [x for x in rows if x.get("decode") == "split"]
    assert {x["M"] for x in split} == {1, 7} and all(x["mismatches"] == 0 for x in split)
    timing = [x for x in rows if "bf16_ms" in x and x.get("check") != "groups"]
    assert timing
    for x in timing:
        for key in ("prologue_ms", "prologue_tf32_reload_ms", "prologue_tf32x3_recompute_ms",
                    "prologue_fp16_reload_ms", "prologue_fp16_recompute_ms",
                    "triton_gemm_ms", "cutlass_fused_gemm_ms",
                    "cutlass_int8w_fused_gemm_ms", "cutlass_gemm_int32_ms",
                    *(f"{name}_ms" for name in KERNELS if name != "triton_groups")):
            assert x[key] > 0, key
        assert x.get("prologue_split_ms", 0) > 0 or x["M"] > 16, x
        # Above 16 tokens every token tile of the tiled prologue is timed.
        assert x["prologue_tokens"] in (1, 2, 4)
        assert x["M"] <= 16 or all(x[f"prologue_tokens{t}_ms"] > 0 for t in (1, 2, 4)), x
        # The Triton GEMM's tiles are recorded: the static choice here (no table for a CPU).
        assert x["triton_gemm_tuned"] is False and x["triton_gemm_config"]["BLOCK_K"] >= 64
        # Packed sm_90 weights hold half the bytes of int8 ones (plus the same vectors).
        mem = x["w4a4_weight_bytes"]
        assert mem["cutlass_sm90"] < mem["cutlass_sm90_int8w"]
    assert (tmp_path / "speedup_tiny.png").is_file()


def test_gpu_correctness_sweep_runs_on_its_own_shapes():
    """check_correctness on the GPU sweep's real (N, K) shapes, at M = 1 on CPU. It used to give
    K = 1472 a rotation block of 128, which would have stopped the sweep at its second shape
    (found by reading the script; no GPU session had run it)."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import gpu_session as g; "
        "rows = g.check_correctness('cpu', ['torch_ref'], [1], g.CHECK_SHAPES, (9, 0), "
        "lambda r: None); print(json.dumps(rows))")
    r = subprocess.run([sys.executable, "-c", code, str(ROOT / "benchmarks")],
                       capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, TRITON_INTERPRET="1"))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = json.loads(r.stdout.splitlines()[-1])
    shapes = {(x["N"], x["K"]) for x in rows if x["check"] == "linear"}
    assert len(shapes) == 4 and (1000, 1472) in shapes
    for x in rows:
        assert "error" not in x, x
        if x["check"] == "linear":
            assert x["rel_err"] < 1e-2, x
        else:  # fp32 interpreter prologue vs reference: exact here
            assert x["mismatches"] == 0, x


def test_decoder_layer_benchmark_dry_run(tmp_path):
    """benchmarks/layers/bench_decoder_layer.py --dry: the prefill and decode cases run end to
    end on CPU and write their rows (the GPU run is the same code with real shapes)."""
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "layers" /
                                            "bench_decoder_layer.py"), "--dry", "--out",
                        str(tmp_path)], capture_output=True, text=True, timeout=600,
                       env=dict(os.environ, TRITON_INTERPRET="1"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(line) for line in
            (tmp_path / "decoder_layer.jsonl").read_text().splitlines()]
    assert {x["case"] for x in rows} == {"prefill", "decode"}
    for x in rows:
        assert x["bf16_ms"] > 0 and x["w4a4_ms"] > 0 and x["kernels"]
        # W4A4 and BF16 layers share weights up to quantization: same output, roughly.
        assert x["w4a4_rel_diff_vs_bf16"] < 0.5, x


def test_gemm_tuner_dry_run_writes_a_table_the_kernel_reads(tmp_path, monkeypatch):
    """benchmarks/kernels/tune_triton_gemm.py --dry: every candidate checked against the
    reference and timed, the winners written as a table that tuned.lookup serves."""
    from duquant_serve.kernels import tuned

    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernels" / "tune_triton_gemm.py"),
                        "--dry", "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(line) for line in
            (tmp_path / "tune_triton_gemm.jsonl").read_text().splitlines()]
    assert rows and all("error" not in x and x["rel_err"] < 1e-2 and x["ms"] > 0 for x in rows)
    assert sum(x["static"] for x in rows) == 4  # the static config is a candidate every time
    # On the dry run's pretend 8-SM GPU, one decode grid of 48 outputs leaves SMs idle: split-K
    # candidates are timed there (and only where K has the tiles for it).
    split = [x for x in rows if x["config"]["SPLIT_K"] > 1]
    assert split and all((x["n"], x["k"]) == (48, 512) for x in split), split
    table = json.loads((tmp_path / tuned.table_name("triton_gemm", "cpu-dry")).read_text())
    assert "tune_triton_gemm.py --dry" in table["command"]
    for e in table["entries"]:
        best = min((x for x in rows if (x["n"], x["k"], x["m"]) == (e["n"], e["k"], e["m"])),
                   key=lambda x: x["ms"])
        assert tuned.lookup("triton_gemm", "cpu-dry", e["n"], e["k"], e["m"],
                            str(tmp_path)) == best["config"]
    assert {(e["n"], e["k"], e["m"]) for e in table["entries"]} == {
        (48, 512, 1), (48, 512, 40), (64, 192, 1), (64, 192, 40)}


def test_gemm_tuner_takes_explicit_shapes_and_refuses_bad_ones(tmp_path):
    script = str(ROOT / "benchmarks" / "kernels" / "tune_triton_gemm.py")
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, script, "--dry", "--shapes", "32x128", "--out",
                        str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    table = json.loads((tmp_path / "triton_gemm__cpu_dry.json").read_text())
    assert {(e["n"], e["k"]) for e in table["entries"]} == {(32, 128)}
    for bad, why in (("32x100", "multiple of 64"), ("4096", "not NxK")):
        r = subprocess.run([sys.executable, script, "--dry", "--shapes", bad, "--out",
                            str(tmp_path)], capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode != 0 and why in r.stderr, r.stderr[-2000:]
