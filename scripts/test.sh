#!/usr/bin/env bash
# The test command (README; .ci/run calls it): set up if needed, then the default suite.
# Slow tests (real SmolLM2, TP=2) skip with a reason unless DUQUANT_RUN_SLOW=1; GPU tests skip
# with a reason where no CUDA device exists.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
