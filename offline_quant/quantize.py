"""`duquant quantize`: source model → DuQuant checkpoint directory (+ JSON report)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from duquant_serve.checkpoint import write_checkpoint
from duquant_serve.core.config import DuQuantConfig

from .calibration import calibration_windows
from .models import load_config, load_model, source_description
from .pipeline import PipelineOptions, describe_device, quantize_model, resolve_device

log = logging.getLogger(__name__)

DTYPES = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SIXTEEN_BIT = (torch.bfloat16, torch.float16)


def unquantized_dtype(requested: str, source_dtype: torch.dtype | None) -> torch.dtype:
    """dtype of the tensors left unquantized (embeddings, norms, lm_head). auto: the source's
    16-bit dtype; bfloat16 for a float32 source or a GGUF (dequantized to float32 on load), since
    a 4-bit checkpoint carrying 32-bit embeddings would be a third larger than it needs to be."""
    if DTYPES[requested] is not None:
        return DTYPES[requested]
    return source_dtype if source_dtype in SIXTEEN_BIT else torch.bfloat16


def checkpoint_bytes(directory: Path) -> int:
    """Bytes of a checkpoint's tensors (its safetensors files)."""
    return sum(f.stat().st_size for f in directory.glob("*.safetensors"))


@dataclass
class CalibrationSpec:
    source: str = "wikitext2"  # a shipped text's name, a text file path or "random"
    nsamples: int = 16
    seqlen: int = 512
    seed: int = 2


def _model_config_dict(model, dtype: torch.dtype) -> dict:
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg.pop("_name_or_path", None)
    cfg.pop("_model_name_or_path", None)
    cfg["architectures"] = cfg.get("architectures") or [type(model).__name__]
    cfg["dtype"] = str(dtype).replace("torch.", "")
    cfg["torch_dtype"] = cfg["dtype"]
    return cfg


def quantize_to_checkpoint(
    source: str,
    out_dir: str | Path,
    qcfg: DuQuantConfig,
    calib: CalibrationSpec,
    opts: PipelineOptions | None = None,
    dtype: str = "auto",
    overwrite: bool = False,
) -> dict:
    """Run the whole offline pipeline; returns the report (also written to the checkpoint)."""
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"output directory {str(out)!r} exists (pass --overwrite to replace it)")
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}")
    opts = opts or PipelineOptions()
    # A bad --device fails before the model loads. (load_model loads on the CPU: None = cpu.)
    dev = resolve_device(opts.device or "cpu")
    opts = replace(opts, device=str(dev))
    log.info("calibrating and quantizing on %s", describe_device(dev))
    times: dict[str, float] = {}
    t = time.perf_counter()
    source_dtype = getattr(load_config(source), "dtype", None)
    model, tok = load_model(source)  # checks the architecture before loading weights
    times["load_model"] = time.perf_counter() - t
    # parameters() counts a tied embedding once, as the 16-bit checkpoint stores it.
    bytes_16bit = 2 * sum(p.numel() for p in model.parameters())
    t = time.perf_counter()
    ids = calibration_windows(tok, calib.source, calib.nsamples, calib.seqlen, calib.seed,
                              vocab_size=model.config.vocab_size)
    times["calibration_data"] = time.perf_counter() - t
    t = time.perf_counter()
    result = quantize_model(model, ids, qcfg, opts)
    times["quantize_total"] = time.perf_counter() - t

    save_dtype = unquantized_dtype(dtype, source_dtype if isinstance(source_dtype, torch.dtype)
                                   else None)
    # Quantized linears are QuantLinearModules without registered tensors: the state dict now
    # holds exactly the 16-bit rest (embeddings, smoothing-folded norms, lm_head).
    others = {name: p.detach().to(save_dtype) for name, p in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        others.pop("lm_head.weight", None)

    def save_extras(d: Path) -> None:
        tok.save_pretrained(d)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(d)

    report = {
        "source": source_description(source),
        "quantization_config": result.config.to_dict(),
        "calibration": vars(calib),
        "method": opts.method,
        "device": describe_device(dev),
        # What the stage times depend on besides the model: the learned loss's products run
        # in bfloat16 only where the device computes it natively (pipeline.learn_matmul_dtype),
        # so the same command's time depends on the CPU's instruction set, not only its speed.
        "compute": {"threads": torch.get_num_threads(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "learned_matmul_dtype": result.report["learned_matmul_dtype"]},
        "seconds_per_stage": {**{k: round(v, 3) for k, v in times.items()},
                              **result.report["seconds_per_stage"]},
        "layers": result.report["layers"],
    }
    t = time.perf_counter()
    write_checkpoint(out, _model_config_dict(model, save_dtype), result.config, result.linears,
                     others, save_extras=save_extras, report=report, overwrite=overwrite)
    report["seconds_per_stage"]["write_and_validate"] = round(time.perf_counter() - t, 3)
    size = checkpoint_bytes(out)
    report["size"] = {"checkpoint_bytes": size, "bytes_16bit": bytes_16bit,
                      "ratio_to_16bit": round(size / bytes_16bit, 4),
                      "unquantized_dtype": str(save_dtype).replace("torch.", "")}
    # The report is informational (not validated): add the write time once the checkpoint is in place.
    (out / "duquant_report.json").write_text(json.dumps(report, indent=2))
    return report
