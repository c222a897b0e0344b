#!/bin/sh
# docker run IMAGE [CHECKPOINT] [vLLM server options]
# Listens on all interfaces on $PORT by default; options given after the checkpoint come later
# on the command line, so they override these defaults (argparse keeps the last value).
set -e
model="${1:-/model}"
[ "$#" -gt 0 ] && shift
exec duquant serve "$model" --host "${HOST:-0.0.0.0}" --port "${PORT:-8000}" "$@"
