#!/usr/bin/env bash
# Quantize SmolLM2 with the default pipeline (WikiText-2 validation text as calibration), time
# it, and evaluate the real checkpoint (integer reference path) on the same windows as
# run_smollm2_ppl.sh.
set -euo pipefail
source "$(dirname "$0")/_env.sh"
rm -rf artifacts/smollm2-w4a4
/usr/bin/time -v $PY -m duquant_serve.cli -q quantize smollm2 --out artifacts/smollm2-w4a4 --calib "$CALIB" \
  2> "$OUT/smollm2_quantize_time.txt"
cp artifacts/smollm2-w4a4/duquant_report.json "$OUT/smollm2_quantize_report.json"
$PY -m duquant_serve.cli -q eval artifacts/smollm2-w4a4 --dataset "$DATA" --seqlen 2048 --limit "$LIMIT" \
  --json "$OUT/smollm2_checkpoint.json"
