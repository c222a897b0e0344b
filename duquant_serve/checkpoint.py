"""The DuQuant checkpoint: write atomically, read, and refuse anything that cannot be trusted.

Layout (format_version 5; tensors as in 2) — a Hugging Face model directory:
  config.json            the model's config + quantization_config (DuQuantConfig.to_dict())
  model.safetensors      (or model-0000i-of-0000n.safetensors + model.safetensors.index.json)
  tokenizer files, generation_config.json, duquant_report.json (offline pipeline report)

Per quantized linear <m> (Hugging Face module name), N outputs, K inputs, block b:
  <m>.qweight        uint8   [N, K/2] two 4-bit codes per byte, low nibble first ([N, K] if > 4 bits)
  <m>.weight_scale   float32 [N]      > 0, finite
  <m>.weight_zero    float32 [N]      integers
  <m>.input_rot1     float32 [b, b]   orthogonal
  <m>.input_perm     int32   [K]      gather indices; stay inside each activation group
  <m>.input_rot2     float32 [b, b]   orthogonal
  <m>.input_smooth   float32 [K]      optional: online smoothing (divide) where folding is impossible
  <m>.bias           model dtype [N]  where the model has one
Fused inputs (q/k/v, gate/up) must carry identical transforms. Every other tensor is the 16-bit
model's own (embeddings, norms with smoothing folded in, lm_head unless tied).
Activations are quantized per token within each activation group (DuQuantConfig
.activation_groups: the tp_shards input shards of row-parallel linears, finer with
act_group_size; core/reference.py); the tensors are the same as for one group.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from .core.config import QUANT_METHOD, ConfigError, DuQuantConfig
from .core.pack import packed_in_features
from .core.reference import QuantizedLinear
from .core.topology import FUSED_GROUPS, FUSED_LEADER, ROW_PARALLEL
from .core.transform import (
    InputTransform,
    is_permutation,
    orthogonality_error,
    permutation_respects_shards,
)
from .files import atomic_directory

QUANT_SUFFIXES = ("qweight", "weight_scale", "weight_zero", "input_rot1", "input_perm", "input_rot2")
OPTIONAL_SUFFIXES = ("input_smooth",)
TRANSFORM_SUFFIXES = ("input_rot1", "input_perm", "input_rot2", "input_smooth")
ORTHO_TOL = 1e-4
INDEX_FILE = "model.safetensors.index.json"
REPORT_FILE = "duquant_report.json"
# `duquant serve` validates the checkpoint itself before starting vLLM and puts its resolved
# path here, so the API server does not read every tensor a second time. (Here, not in the
# vLLM plugin: importing vLLM cost the launcher 3.5 s of start-up.)
VALIDATED_ENV = "DUQUANT_VALIDATED_CHECKPOINT"


class CheckpointError(ValueError):
    """A checkpoint that must not be loaded; the message names the tensor and the problem."""


@dataclass
class Checkpoint:
    path: Path
    model_config: dict
    quant_config: DuQuantConfig
    linears: dict[str, QuantizedLinear]
    tensors: dict[str, torch.Tensor]  # everything else (embeddings, norms, lm_head)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def linear_tensors(name: str, q: QuantizedLinear) -> dict[str, torch.Tensor]:
    t = q.transform
    out = {
        f"{name}.qweight": q.qweight.contiguous(),
        f"{name}.weight_scale": q.weight_scale.float().contiguous(),
        f"{name}.weight_zero": q.weight_zero.float().contiguous(),
        f"{name}.input_rot1": t.r1.float().contiguous(),
        f"{name}.input_perm": t.perm.to(torch.int32).contiguous(),
        f"{name}.input_rot2": t.r2.float().contiguous(),
    }
    if t.smooth is not None:
        out[f"{name}.input_smooth"] = t.smooth.float().contiguous()
    if q.bias is not None:
        out[f"{name}.bias"] = q.bias.contiguous()
    return out


def _shard(tensors: dict[str, torch.Tensor], max_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(tensors):
        nb = tensors[k].numel() * tensors[k].element_size()
        if shards[-1] and size + nb > max_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = tensors[k]
        size += nb
    return shards


def write_checkpoint(
    out_dir: str | Path,
    model_config: dict,
    quant_config: DuQuantConfig,
    linears: dict[str, QuantizedLinear],
    other_tensors: dict[str, torch.Tensor],
    save_extras=None,
    report: dict | None = None,
    overwrite: bool = False,
    max_shard_bytes: int = 4 << 30,
) -> Path:
    """Write into a temp dir beside `out_dir`, validate it, then rename: a crash leaves no
    directory at `out_dir` that looks like a checkpoint. `save_extras(tmp_dir)` writes the
    tokenizer and generation config."""
    out = Path(out_dir).resolve()
    if out.exists() and not overwrite:
        raise FileExistsError(f"output directory {str(out)!r} exists (pass --overwrite to replace it)")
    with atomic_directory(out) as tmp:
        tensors = dict(other_tensors)
        for name, q in linears.items():
            t = linear_tensors(name, q)
            if quant_config.format_version >= 4 and _leader(name) in linears:
                t = {k: v for k, v in t.items() if not k.endswith(TRANSFORM_SUFFIXES)}
            tensors.update(t)
        tensors = {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}
        shards = _shard(tensors, max_shard_bytes)
        if len(shards) == 1:
            save_file(shards[0], str(tmp / "model.safetensors"), metadata={"format": "pt"})
        else:
            weight_map = {}
            for i, sh in enumerate(shards):
                fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file(sh, str(tmp / fname), metadata={"format": "pt"})
                weight_map.update({k: fname for k in sh})
            total = sum(v.numel() * v.element_size() for v in tensors.values())
            (tmp / INDEX_FILE).write_text(json.dumps(
                {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        cfg = dict(model_config)
        cfg["quantization_config"] = quant_config.to_dict()
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        if save_extras is not None:
            save_extras(tmp)
        if report is not None:
            (tmp / REPORT_FILE).write_text(json.dumps(report, indent=2))
        validate_checkpoint(tmp)
    return out


# ---------------------------------------------------------------------------------------------
# Reading and validation
# ---------------------------------------------------------------------------------------------


def read_config(path: str | Path) -> tuple[dict, DuQuantConfig]:
    p = Path(path)
    cfg_file = p / "config.json"
    if not p.is_dir():
        raise CheckpointError(f"checkpoint {str(p)!r} is not a directory")
    if not cfg_file.is_file():
        raise CheckpointError(f"checkpoint {str(p)!r} has no config.json")
    try:
        cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"config.json is not valid JSON: {e}") from e
    qc = cfg.get("quantization_config")
    if not isinstance(qc, dict) or qc.get("quant_method") != QUANT_METHOD:
        raise CheckpointError(
            f"config.json has no quantization_config with quant_method {QUANT_METHOD!r}: "
            "not a DuQuant checkpoint")
    try:
        return cfg, DuQuantConfig.from_dict(qc)
    except ConfigError as e:
        raise CheckpointError(f"quantization_config: {e}") from e


def _weight_files(p: Path) -> list[Path]:
    index = p / INDEX_FILE
    if index.is_file():
        try:
            wm = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise CheckpointError(f"{INDEX_FILE} is malformed: {e}") from e
        files = sorted({p / f for f in wm.values()})
    else:
        files = [p / "model.safetensors"]
    for f in files:
        if not f.is_file():
            raise CheckpointError(f"weight file {f.name} is missing")
    if any(p.glob("*.bin")) or any(p.glob("*.pt")) or any(p.glob("*.pth")):
        raise CheckpointError("checkpoint contains pickled weight files (*.bin/*.pt); only safetensors")
    return files


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    p = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for f in _weight_files(p):
        try:
            with safe_open(str(f), framework="pt") as fh:
                for k in fh.keys():
                    if k in tensors:
                        raise CheckpointError(f"tensor {k} appears in more than one weight file")
                    tensors[k] = fh.get_tensor(k)
        except CheckpointError:
            raise
        except Exception as e:  # safetensors raises its own error types for corrupt files
            raise CheckpointError(f"weight file {f.name} is corrupt or unreadable: {e}") from e
    return tensors


def _expected_model_params(model_config: dict) -> dict[str, tuple[tuple[int, ...], bool]]:
    """HF parameter names → (shape, is a quantizable nn.Linear), from a meta-device model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg_dict = {k: v for k, v in model_config.items() if k != "quantization_config"}
    model_type = cfg_dict.pop("model_type", None)
    try:
        cfg = AutoConfig.for_model(model_type, **cfg_dict)
    except Exception as e:
        raise CheckpointError(f"config.json describes no known model ({model_type!r}): {e}") from e
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    linear_names = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    out = {}
    for n, prm in model.named_parameters(remove_duplicate=True):
        mod = n.rpartition(".")[0]
        out[n] = (tuple(prm.shape), mod in linear_names and n.endswith(".weight"))
    return out


def _is_quantized(module: str, qcfg: DuQuantConfig) -> bool:
    return not any(module == s or module.endswith("." + s) for s in qcfg.modules_not_quantized)


def tensor_error(tensor: str, problem: str, prefix: str = "") -> CheckpointError:
    """The one shape of a refusal: "<prefix>tensor <name>: <problem>"."""
    return CheckpointError(f"{prefix}tensor {tensor}: {problem}")


def check_tensor(t: torch.Tensor, name: str, shape: tuple[int, ...], dtype: torch.dtype,
                 prefix: str = "") -> None:
    """Refuse a tensor of the wrong dtype or shape, naming it (checkpoint loader and plugin)."""
    if t.dtype != dtype:
        raise tensor_error(name, f"dtype {str(t.dtype).replace('torch.', '')}, expected "
                                 f"{str(dtype).replace('torch.', '')}", prefix)
    if tuple(t.shape) != tuple(shape):
        raise tensor_error(name, f"shape {list(t.shape)}, expected {list(shape)}", prefix)



def _linear_from_tensors(
    m: str, tensors: dict[str, torch.Tensor], n: int, k: int, qcfg: DuQuantConfig, row_parallel: bool
) -> QuantizedLinear:
    for suf in QUANT_SUFFIXES:
        if f"{m}.{suf}" not in tensors:
            raise tensor_error(f"{m}.{suf}", "missing")
    qw = tensors[f"{m}.qweight"]
    check_tensor(qw, f"{m}.qweight", (n, packed_in_features(k, qcfg.w_bits)), torch.uint8)
    if qcfg.w_bits <= 4 and k % 2:
        raise tensor_error(f"{m}.qweight", f"input dim {k} is odd and cannot hold packed 4-bit pairs")
    if 4 < qcfg.w_bits < 8 and qw.numel() and int(qw.max()) >= 1 << qcfg.w_bits:
        raise tensor_error(f"{m}.qweight", f"code {int(qw.max())} exceeds {qcfg.w_bits} bits")
    scale, zero = tensors[f"{m}.weight_scale"], tensors[f"{m}.weight_zero"]
    check_tensor(scale, f"{m}.weight_scale", (n,), torch.float32)
    check_tensor(zero, f"{m}.weight_zero", (n,), torch.float32)
    if not torch.isfinite(scale).all() or (scale <= 0).any():
        raise tensor_error(f"{m}.weight_scale", "non-finite or non-positive scales")
    if not torch.isfinite(zero).all() or not torch.equal(zero, zero.round()):
        raise tensor_error(f"{m}.weight_zero", "zero points must be finite integers")
    r1, r2 = tensors[f"{m}.input_rot1"], tensors[f"{m}.input_rot2"]
    b = r1.shape[0] if r1.dim() == 2 else -1
    if b < 1 or b & (b - 1):
        raise tensor_error(f"{m}.input_rot1", f"shape {list(r1.shape)} is not a square power-of-two block")
    try:
        groups = qcfg.activation_groups(k, row_parallel)
    except ConfigError as e:
        raise tensor_error(f"{m}.input_rot1", str(e)) from e
    if k % (b * groups):
        raise tensor_error(f"{m}.input_rot1", f"block {b} does not divide the input width {k}"
                                      + (f" in {groups} activation groups" if groups > 1 else ""))
    for nm, r in ((f"{m}.input_rot1", r1), (f"{m}.input_rot2", r2)):
        check_tensor(r, nm, (b, b), torch.float32)
        if not torch.isfinite(r).all():
            raise tensor_error(nm, "non-finite values")
        e = orthogonality_error(r)
        if e > ORTHO_TOL:
            raise tensor_error(nm, f"rotation is not orthogonal (max |R·Rᵀ − I| = {e:.2e})")
    perm = tensors[f"{m}.input_perm"]
    check_tensor(perm, f"{m}.input_perm", (k,), torch.int32)
    if not is_permutation(perm, k):
        raise tensor_error(f"{m}.input_perm", f"not a permutation of 0..{k - 1}")
    if groups > 1 and not permutation_respects_shards(perm, groups):
        raise tensor_error(f"{m}.input_perm", f"moves channels across its {groups} activation "
                                              "groups (tensor-parallel shards)")
    smooth = tensors.get(f"{m}.input_smooth")
    if smooth is not None:
        check_tensor(smooth, f"{m}.input_smooth", (k,), torch.float32)
        if not torch.isfinite(smooth).all() or (smooth <= 0).any():
            raise tensor_error(f"{m}.input_smooth", "smoothing factors must be finite and positive")
    bias = tensors.get(f"{m}.bias")
    return QuantizedLinear(
        qweight=qw, weight_scale=scale, weight_zero=zero,
        transform=InputTransform(r1, perm.long(), r2, smooth), bias=bias,
        w_bits=qcfg.w_bits, a_bits=qcfg.a_bits, act_clip_ratio=qcfg.act_clip_ratio,
        act_groups=groups, shards=qcfg.input_shards(row_parallel))


def _leader(module: str) -> str | None:
    """`model.layers.3.self_attn.k_proj` → `model.layers.3.self_attn.q_proj` (None: no leader)."""
    prefix, _, rel = module.partition(".layers.")
    layer, _, name = rel.partition(".")
    leader = FUSED_LEADER.get(name)
    return f"{prefix}.layers.{layer}.{leader}" if leader and rel else None


def _share_fused_transforms(tensors: dict[str, torch.Tensor]) -> None:
    """Formats >= 4: give each fused follower its leader's transform tensors (they must not carry
    their own), so every linear is then read and checked alike."""
    for name in [k for k in tensors if k.endswith(".qweight")]:
        m = name.removesuffix(".qweight")
        leader = _leader(m)
        if leader is None or f"{leader}.qweight" not in tensors:
            continue
        for suf in TRANSFORM_SUFFIXES:
            if f"{m}.{suf}" in tensors:
                raise tensor_error(f"{m}.{suf}", f"unexpected: formats >= 4 store a fused group's "
                                                 f"input transform once, on {leader}")
            if f"{leader}.{suf}" in tensors:
                tensors[f"{m}.{suf}"] = tensors[f"{leader}.{suf}"]


def check_tp_size(tp_size: int, tp_shards: int) -> None:
    """Refuse a tensor-parallel size the checkpoint cannot be served at (clear message)."""
    if tp_size < 1 or tp_shards % tp_size:
        ok = [d for d in range(1, tp_shards + 1) if tp_shards % d == 0]
        raise CheckpointError(
            f"duquant: tensor-parallel size {tp_size} does not divide the checkpoint's "
            f"quantization_config.tp_shards={tp_shards} (row-parallel permutations stay inside "
            f"{tp_shards} input shard(s)); serve with --tensor-parallel-size in {ok}, or "
            f"re-quantize with `duquant quantize --tp-shards {tp_size}` (or a multiple)")


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and fully validate a checkpoint; raises CheckpointError naming the first problem."""
    p = Path(path)
    model_config, qcfg = read_config(p)
    tensors = read_tensors(p)
    if qcfg.format_version >= 4:
        _share_fused_transforms(tensors)
    expected = _expected_model_params(model_config)
    tied = bool(model_config.get("tie_word_embeddings", False))
    consumed: set[str] = set()
    linears: dict[str, QuantizedLinear] = {}
    others: dict[str, torch.Tensor] = {}
    for pname, (shape, is_linear) in expected.items():
        mod = pname.rpartition(".")[0]
        if tied and pname == "lm_head.weight":
            continue
        if is_linear and _is_quantized(mod, qcfg):
            n, k = shape
            row_parallel = mod.endswith(ROW_PARALLEL)
            q = _linear_from_tensors(mod, tensors, n, k, qcfg, row_parallel)
            bias_shape = expected.get(f"{mod}.bias", (None, False))[0]
            if bias_shape is not None:
                if q.bias is None:
                    raise tensor_error(f"{mod}.bias", "missing")
                if tuple(q.bias.shape) != bias_shape:
                    raise tensor_error(f"{mod}.bias",
                                       f"shape {list(q.bias.shape)}, expected {list(bias_shape)}")
            linears[mod] = q
            consumed.update(f"{mod}.{s}" for s in QUANT_SUFFIXES + OPTIONAL_SUFFIXES + ("bias",))
            continue
        if pname in consumed:
            continue
        if pname not in tensors:
            raise tensor_error(pname, "missing")
        t = tensors[pname]
        if tuple(t.shape) != shape:
            raise tensor_error(pname, f"shape {list(t.shape)}, expected {list(shape)}")
        if not t.is_floating_point():
            raise tensor_error(pname, f"dtype {t.dtype} is not floating point")
        others[pname] = t
        consumed.add(pname)
    extra = sorted(set(tensors) - consumed)
    if extra:
        raise tensor_error(extra[0], "unexpected (not a parameter of this model)"
                   + (f"; {len(extra) - 1} more" if len(extra) > 1 else ""))
    layer_prefixes = sorted({m.rsplit(".", 2)[0] for m in linears if ".layers." in m})
    for prefix in layer_prefixes:
        for group in FUSED_GROUPS:
            names = [f"{prefix}.{g}" for g in group if f"{prefix}.{g}" in linears]
            for other in names[1:]:
                diff = linears[other].transform.first_difference(linears[names[0]].transform)
                if diff is not None:
                    raise tensor_error(f"{other}.input_{diff}",
                               f"fused input transform differs from {names[0]} (vLLM fuses these "
                               "linears, so they must share one transform)")
    return Checkpoint(p, model_config, qcfg, linears, others)


def validate_checkpoint(path: str | Path) -> Checkpoint:
    return load_checkpoint(path)
