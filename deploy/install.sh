#!/usr/bin/env bash
# The install steps of the Docker image, runnable (and run by CI) outside Docker.
#   deploy/install.sh kernels OUT_DIR    build libduquant_ext.so for sm_80 (runs on 8.0/8.6/8.9)
#                                        and sm_90a (H100/H200) with nvcc + CUTLASS headers
#   deploy/install.sh package [PIP ARGS] install the duquant-serve package with pip
# Env: PYTHON (default python3), DUQUANT_ARCHS (default "80 90a"), NVCC.
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-python3}"
cmd="${1:-}"
shift || true
case "$cmd" in
  kernels)
    out="${1:?usage: install.sh kernels OUT_DIR}"
    # CUTLASS/CuTe headers come from the nvidia-cutlass wheel: no git submodule.
    if [[ -z "${CUTLASS_INCLUDE:-}" ]]; then
      "$py" -c "import cutlass_library" 2>/dev/null || "$py" -m pip install --no-cache-dir -q "nvidia-cutlass>=4.0"
    fi
    PYTHON="$py" DUQUANT_ARCHS="${DUQUANT_ARCHS:-80 90a}" bash "$src/cutlass_ext/build.sh" "$out"
    ;;
  package)
    "$py" -m pip install --no-cache-dir "$@" "$src"
    ;;
  *)
    echo "usage: $0 {kernels OUT_DIR | package [pip args]}" >&2
    exit 2
    ;;
esac
