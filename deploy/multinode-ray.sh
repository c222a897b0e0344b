#!/bin/sh
# One DuQuant server over GPU nodes with vLLM's Ray executor (for clusters that already run Ray;
# deploy/multinode.sh needs no Ray). Start every worker first, then the head: the head starts the
# Ray head, then `duquant serve --distributed-executor-backend ray`, whose placement group waits
# until the workers' GPUs have joined.
#
#   node 1..N-1: HEAD_IP=10.0.0.1 ROLE=worker CHECKPOINT=/models/llama-70b-w4a4 deploy/multinode-ray.sh
#   node 0:      HEAD_IP=10.0.0.1 ROLE=head TP=8 PP=2 CHECKPOINT=/models/llama-70b-w4a4 deploy/multinode-ray.sh
#
# All nodes: the same image (it ships Ray, from the vLLM image), host networking (Ray's GCS port
# RAY_PORT and its worker ports, and NCCL's, reachable between the nodes; NCCL_SOCKET_IFNAME for
# the interface), --ipc=host. The checkpoint is mounted on every node at the same path (Ray's
# workers load their shards themselves). Not run on GPU hosts yet; on CPU vLLM cannot run Ray
# (tests/server/test_multinode.py shows where it fails) and `duquant serve` refuses it.
set -eu
: "${HEAD_IP:?set HEAD_IP to node 0's address}" "${CHECKPOINT:?set CHECKPOINT}"
ROLE=${ROLE:-head}; TP=${TP:-8}; PP=${PP:-2}; RAY_PORT=${RAY_PORT:-6379}
IMAGE=${IMAGE:-duquant-serve}
case "$ROLE" in
  head)
    # shellcheck disable=SC2086
    exec docker run --rm --gpus all --network host --ipc host --stop-timeout 40 \
      ${NCCL_SOCKET_IFNAME:+-e NCCL_SOCKET_IFNAME="$NCCL_SOCKET_IFNAME"} \
      -e RAY_ADDRESS="$HEAD_IP:$RAY_PORT" -v "$CHECKPOINT:/model:ro" --entrypoint sh "$IMAGE" -c \
      "ray start --head --node-ip-address=$HEAD_IP --port=$RAY_PORT --disable-usage-stats \
       && exec duquant-entrypoint /model --tensor-parallel-size $TP --pipeline-parallel-size $PP \
       --distributed-executor-backend ray" ;;
  worker)  # retries until the head's Ray is up
    # shellcheck disable=SC2086
    exec docker run --rm --gpus all --network host --ipc host \
      ${NCCL_SOCKET_IFNAME:+-e NCCL_SOCKET_IFNAME="$NCCL_SOCKET_IFNAME"} \
      -v "$CHECKPOINT:/model:ro" --entrypoint sh "$IMAGE" -c \
      "until ray start --address=$HEAD_IP:$RAY_PORT --disable-usage-stats --block; do sleep 5; done" ;;
  *) echo "ROLE must be head or worker" >&2; exit 2 ;;
esac
