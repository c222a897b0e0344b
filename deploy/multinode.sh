#!/bin/sh
# One DuQuant server over two GPU nodes with vLLM's own multi-node launcher (no Ray needed):
# node 0 serves HTTP, node 1 runs its workers headless; TP x PP workers are split evenly.
#
#   node 0:  HEAD_IP=10.0.0.1 ROLE=head   TP=8 PP=2 CHECKPOINT=/models/llama-70b-w4a4 deploy/multinode.sh
#   node 1:  HEAD_IP=10.0.0.1 ROLE=worker TP=8 PP=2 CHECKPOINT=/models/llama-70b-w4a4 deploy/multinode.sh
#
# Both nodes: the same image (duquant-serve), the same checkpoint path, host networking (the
# torch.distributed master on HEAD_IP:MASTER_PORT and NCCL's own ports must be reachable between
# the nodes; set NCCL_SOCKET_IFNAME to the interface that connects them), --ipc=host (shared
# memory between the local workers). Tested on one CPU machine as two processes
# (tests/server/test_multinode.py: TP=2 over two "nodes" gives the offline reference's tokens);
# not yet on two GPU hosts. `tp_shards` of the checkpoint must be a multiple of TP
# (`duquant quantize --tp-shards auto` gives 8 for 70B models).
set -eu
: "${HEAD_IP:?set HEAD_IP to node 0's address}" "${CHECKPOINT:?set CHECKPOINT}"
ROLE=${ROLE:-head}; TP=${TP:-8}; PP=${PP:-2}; NNODES=${NNODES:-2}
MASTER_PORT=${MASTER_PORT:-29501}; IMAGE=${IMAGE:-duquant-serve}
case "$ROLE" in
  head) RANK=0; EXTRA="" ;;  # host networking: it listens on the host's $PORT (8000)
  worker) RANK=${NODE_RANK:-1}; EXTRA="--headless" ;;
  *) echo "ROLE must be head or worker" >&2; exit 2 ;;
esac
# shellcheck disable=SC2086
exec docker run --rm --gpus all --network host --ipc host --stop-timeout 40 \
  ${NCCL_SOCKET_IFNAME:+-e NCCL_SOCKET_IFNAME="$NCCL_SOCKET_IFNAME"} \
  -v "$CHECKPOINT:/model:ro" "$IMAGE" /model \
  --tensor-parallel-size "$TP" --pipeline-parallel-size "$PP" \
  --nnodes "$NNODES" --node-rank "$RANK" --master-addr "$HEAD_IP" --master-port "$MASTER_PORT" \
  $EXTRA
