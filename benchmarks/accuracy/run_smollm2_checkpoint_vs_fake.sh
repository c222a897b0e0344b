#!/usr/bin/env bash
# The real checkpoint (integer path) and the fake-quant row of its method on the same LIMIT
# windows (default 32; LIMIT= for the whole split, 148 windows). Needs artifacts/smollm2-w4a4
# from run_smollm2_checkpoint.sh (WikiText-2 validation calibration, the settings of the row).
set -euo pipefail
want=${LIMIT-32}  # read before _env.sh, which defaults LIMIT to 8
source "$(dirname "$0")/_env.sh"
LIMIT=$want
lim=(); tag=full
if [ -n "$LIMIT" ]; then lim=(--limit "$LIMIT"); tag=w$LIMIT; fi
$PY -m duquant_serve.cli -q eval artifacts/smollm2-w4a4 --dataset "$DATA" --seqlen 2048 "${lim[@]}" \
  --json "$OUT/smollm2_checkpoint_$tag.json"
method=$($PY -c "import json; print(json.load(open('artifacts/smollm2-w4a4/config.json'))['quantization_config']['method'])")
$PY -m duquant_serve.cli -q eval smollm2 --dataset "$DATA" --seqlen 2048 "${lim[@]}" --methods "$method" \
  --calib "$CALIB" --json "$OUT/smollm2_${method}_$tag.json"
