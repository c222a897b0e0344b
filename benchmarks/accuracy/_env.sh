# Shared settings of the accuracy scripts (sourced). Override any of them from the environment.
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY=${PY:-.venv/bin/python}
# One thread per process: the greedy rotation search is hundreds of small matmuls whose OpenMP
# barriers spin badly when other jobs share the cores; set OMP_NUM_THREADS higher on a quiet box.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
LIMIT=${LIMIT:-8}
DATA=${DATA:-wikitext2}  # the shipped test split (offline_quant/data/wikitext2)
CALIB=${CALIB:-wikitext2}  # the shipped validation split
OUT=benchmarks/results/accuracy
