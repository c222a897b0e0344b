#!/usr/bin/env bash
# Build libduquant_ext.so: a torch-free C-ABI library (README.md says why), one translation unit
# per architecture so each GEMM is compiled only for the -gencode it can run on.
#   cutlass_ext/build.sh [OUT_DIR]        (default cutlass_ext/build)
# Env: CUTLASS_INCLUDE (default: the nvidia-cutlass wheel's headers), NVCC, DUQUANT_ARCHS
# ("80 90a" by default; a subset builds a subset).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/build}"
mkdir -p "$out"
nvcc="${NVCC:-nvcc}"
if [[ -z "${CUTLASS_INCLUDE:-}" ]]; then
  py="${PYTHON:-$here/../.venv/bin/python}"
  [[ -x "$py" ]] || py=python3
  src="$("$py" -c 'import cutlass_library, os; print(os.path.join(os.path.dirname(cutlass_library.__file__), "source"))')"
  CUTLASS_INCLUDE="$src/include:$src/tools/util/include"
fi
inc=()
IFS=: read -ra dirs <<<"$CUTLASS_INCLUDE"
for d in "${dirs[@]}"; do inc+=("-I$d"); done
# -DNDEBUG: CUTLASS's device asserts are function calls that serialize wgmma (ptxas C7510).
common=(-std=c++17 -O3 -DNDEBUG --expt-relaxed-constexpr -Xcompiler -fPIC "${inc[@]}" "-I$here/csrc")
archs="${DUQUANT_ARCHS:-80 90a}"
objs=()
defs=()
pids=()
# Translation units compile in parallel (each fused sm_90a EVT unit alone takes ~2 min).
compile() {  # compile SRC OBJ GENCODE
  "$nvcc" "${common[@]}" "$3" -c "$here/csrc/$1" -o "$out/$2" &
  pids+=($!)
  objs+=("$out/$2")
}
for a in $archs; do
  case "$a" in
    80) compile w4a4_sm80.cu w4a4_sm80.o -gencode=arch=compute_80,code=sm_80
        defs+=(-DDUQUANT_BUILT_SM80) ;;
    90a) compile w4a4_sm90.cu w4a4_sm90.o -gencode=arch=compute_90a,code=sm_90a
         compile w4a4_sm90_evt.cu w4a4_sm90_evt.o -gencode=arch=compute_90a,code=sm_90a
         compile w4a4_sm90_packed.cu w4a4_sm90_packed.o -gencode=arch=compute_90a,code=sm_90a
         defs+=(-DDUQUANT_BUILT_SM90) ;;
    *) echo "unknown arch $a (expected 80 or 90a)" >&2; exit 2 ;;
  esac
done
for p in "${pids[@]}"; do wait "$p"; done
"$nvcc" "${common[@]}" "${defs[@]}" -gencode=arch=compute_80,code=sm_80 -c "$here/csrc/entry.cu" -o "$out/entry.o"
# cudart linked statically: the library then needs no libcudart.so.13 on the loader's path of
# the machine it runs on (a GPU image, the vLLM image), only the driver.
"$nvcc" -shared -cudart static "${objs[@]}" "$out/entry.o" -o "$out/libduquant_ext.so"
echo "built $out/libduquant_ext.so ($archs)"
