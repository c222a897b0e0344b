#!/usr/bin/env bash
# Quantize SmolLM2 with the default method (WikiText-2 validation text as calibration), time
# it, and evaluate the real checkpoint (integer reference path) on the same windows as
# run_smollm2_ppl.sh. CALIB=random for the calibration-free default; QUANT_ARGS adds quantize
# options (e.g. TAG=_g128 QUANT_ARGS="--act-group-size 128").
set -euo pipefail
source "$(dirname "$0")/_env.sh"
tag=${TAG:-}
rm -rf artifacts/smollm2-w4a4$tag
/usr/bin/time -v $PY -m duquant_serve.cli -q quantize smollm2 --out artifacts/smollm2-w4a4$tag \
  --calib "$CALIB" ${QUANT_ARGS:-} 2> "$OUT/smollm2_quantize_time$tag.txt"
cp artifacts/smollm2-w4a4$tag/duquant_report.json "$OUT/smollm2_quantize_report$tag.json"
$PY -m duquant_serve.cli -q eval artifacts/smollm2-w4a4$tag --dataset "$DATA" --seqlen 2048 \
  --limit "$LIMIT" --json "$OUT/smollm2_checkpoint$tag.json"
