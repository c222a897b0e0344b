"""Helpers of the vLLM plugin tests: tiny DuQuant checkpoints, the offline reference's greedy
tokens (optionally with row-parallel layers split like tensor parallelism), and a runner for
engines in their own processes (engine_script.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).parent
ENGINE_SCRIPT = HERE / "engine_script.py"
PROMPTS = ["Hello world", "The quick brown fox", "1 2 3 4", "DuQuant rotates, permutes and rotates"]
MAX_TOKENS = 32
QUANT_ARGS = ["--calib", "random", "--nsamples", "4", "--calib-seqlen", "64", "--steps", "32"]


def engine_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    # In-process engine: the script can look at the layers (apply_model) and errors raised while
    # loading come out as themselves.
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    env.pop("DUQUANT_VALIDATED_CHECKPOINT", None)
    env.update(extra)
    return env


def run_engine(checkpoint: Path, out: Path, *args: str, env: dict[str, str] | None = None,
               timeout: float = 480) -> tuple[subprocess.CompletedProcess, dict | None]:
    """Run engine_script.py; → (process with output, parsed JSON or None when it failed)."""
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(ENGINE_SCRIPT), str(checkpoint), str(out), *PROMPTS,
         "--max-tokens", str(MAX_TOKENS), *args],
        env=env or engine_env(), capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t
    if proc.returncode != 0 or not out.is_file():
        return proc, None
    res = json.loads(out.read_text())
    res["wall_s"] = round(wall, 1)
    print(f"\nengine {' '.join(args) or 'eager'}: process {wall:.1f}s, engine startup "
          f"{res['startup_s']}s, generate {res['generate_s']}s")
    return proc, res


def tail(proc: subprocess.CompletedProcess, n: int = 4000) -> str:
    return (proc.stdout + proc.stderr)[-n:]


def quantize_tiny(d: Path, arch: str) -> Path:
    from duquant_serve.cli import main
    from duquant_serve.testing.tiny import make_tiny_model

    src = make_tiny_model(d / arch, arch)
    out = d / f"{arch}-dq"
    assert main(["-q", "quantize", str(src), "--out", str(out), "--tp-shards", "2", *QUANT_ARGS]) == 0
    return out


def greedy_reference(checkpoint: Path, row_parallel_shards: int = 1) -> list[list[int]]:
    """Greedy tokens of the offline reference model (transformers + the stored integer codes,
    core.reference), recomputing the whole sequence each step.

    row_parallel_shards > 1: o_proj / down_proj run as that many input shards, each with its own
    per-token activation quantization, summed — what tensor parallelism computes."""
    import torch

    from duquant_serve.checkpoint import ROW_PARALLEL
    from offline_quant.evaluate import load_checkpoint_model

    model, tok, ck = load_checkpoint_model(checkpoint)
    if row_parallel_shards > 1:
        for name, q in ck.linears.items():
            if name.endswith(ROW_PARALLEL):
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, ShardedRowLinear(q, row_parallel_shards))
    out = []
    with torch.no_grad():
        for p in PROMPTS:
            ids = tok(p)["input_ids"]
            cur = list(ids)
            for _ in range(MAX_TOKENS):
                cur.append(int(model(torch.tensor([cur])).logits[0, -1].argmax()))
            out.append(cur[len(ids):])
    return out


class ShardedRowLinear(torch.nn.Module):
    """A row-parallel QuantizedLinear cut into `tp` input shards the way the plugin cuts it
    (qweight columns, rank-local input_perm, input_smooth slice, bias on rank 0 only)."""

    def __init__(self, q, tp: int) -> None:
        super().__init__()
        from duquant_serve.core.reference import QuantizedLinear
        from duquant_serve.core.transform import InputTransform

        self.kp = kp = q.in_features // tp
        t = q.transform
        self.parts = [QuantizedLinear(
            qweight=q.qweight[:, r * kp // 2:(r + 1) * kp // 2], weight_scale=q.weight_scale,
            weight_zero=q.weight_zero,
            transform=InputTransform(t.r1, t.perm[r * kp:(r + 1) * kp] - r * kp, t.r2,
                                     None if t.smooth is None else t.smooth[r * kp:(r + 1) * kp]),
            bias=q.bias if r == 0 else None, w_bits=q.w_bits, a_bits=q.a_bits,
            act_clip_ratio=q.act_clip_ratio) for r in range(tp)]

    def forward(self, x):
        from duquant_serve.core.reference import w4a4_linear_ref

        ys = [w4a4_linear_ref(x[..., r * self.kp:(r + 1) * self.kp], p)
              for r, p in enumerate(self.parts)]
        return sum(ys[1:], ys[0])
