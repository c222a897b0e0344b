"""Shared fixtures of the vLLM plugin tests: a tiny DuQuant checkpoint, its offline reference
tokens, and a runner for engines in their own processes (see engine_script.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).parent
ENGINE_SCRIPT = HERE / "engine_script.py"
PROMPTS = ["Hello world", "The quick brown fox", "1 2 3 4", "DuQuant rotates, permutes and rotates"]
MAX_TOKENS = 32
QUANT_ARGS = ["--calib", "random", "--nsamples", "4", "--calib-seqlen", "64", "--steps", "32"]

sys.path.insert(0, str(HERE))  # broken.py, engine_script.py


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


@pytest.fixture(scope="session")
def dq_checkpoint(tmp_path_factory) -> Path:
    """A float32 tiny Llama (GQA, head_dim 64) quantized to a DuQuant W4A4 checkpoint with
    tp_shards=2 (o_proj gets online smoothing, down_proj a 64-block)."""
    return quantize_tiny(tmp_path_factory.mktemp("vllm_plugin"), "llama")


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


@pytest.fixture(scope="session")
def reference_tokens(dq_checkpoint: Path) -> list[list[int]]:
    return greedy_reference(dq_checkpoint)


@pytest.fixture(scope="session")
def eager_run(dq_checkpoint: Path, tmp_path_factory) -> dict:
    """One eager (--enforce-eager) engine on the tiny checkpoint, shared by the tests."""
    proc, res = run_engine(dq_checkpoint, tmp_path_factory.mktemp("eager") / "out.json")
    assert res is not None, tail(proc)
    return res
