#!/usr/bin/env bash
# The default checkpoint (artifacts/smollm2-w4a4, from run_smollm2_checkpoint.sh) through its
# compute paths (PATHS, default "int exact fake": integer reference, float64 dequantization,
# fp32 fake quantization) on LIMIT test windows (default: the whole split, 0), one process per
# path side by side, joined into benchmarks/results/accuracy/smollm2_checkpoint_int_vs_fake_$tag$TAG.json.
# CK=<checkpoint dir> TAG=<suffix> for another checkpoint (e.g. CK=artifacts/smollm2-w4a4_g128 TAG=_g128).
set -euo pipefail
want=${LIMIT-0}  # read before _env.sh, which defaults LIMIT to 8
source "$(dirname "$0")/_env.sh"
tag=$([ "$want" = 0 ] && echo full || echo "w$want")${TAG:-}
ck=${CK:-artifacts/smollm2-w4a4}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
script=benchmarks/accuracy/checkpoint_int_vs_fake.py
pids=()
jsons=()
for path in ${PATHS:-int exact fake}; do
  $PY $script "$ck" --dataset "$DATA" --limit "$want" --path "$path" \
    --json "$tmp/$path.json" &
  pids+=($!)
  jsons+=("$tmp/$path.json")
done
for pid in "${pids[@]}"; do wait "$pid"; done
$PY $script --merge "${jsons[@]}" --json "$OUT/smollm2_checkpoint_int_vs_fake_$tag.json"
