#!/usr/bin/env bash
# Runs a vqf recipe: one rank per GPU through torchrun, or one CPU rank when there is no GPU.
usage() {
  cat <<'TXT'
usage: launch/run.sh RECIPE [--tables URI] [--outputs URI] [--vfx_enable true|false]
                     [--com_enable ...] [--rov_enable ...] [--low_quality_enable ...]
                     [--set key=value ...]

  Runs the recipe over the input table and writes one row per input row to the outputs.
  First use creates .venv (several minutes). Rerunning the same command resumes: rows the
  outputs already hold are skipped.

  One node:   one rank per GPU (torchrun --nproc_per_node = number of GPUs); no GPU: one CPU rank.
  Many nodes: run the same command on every node with
                NNODES=N MASTER_ADDR=host0 MASTER_PORT=29500 launch/run.sh ...
              or RDZV_ENDPOINT=host0:29500 instead of MASTER_ADDR/MASTER_PORT.
              The nodes meet at that endpoint (torchrun's c10d rendezvous) and ranks are given
              out as they join (no NODE_RANK needed); the node holding rank 0 prints the
              job's progress. The table is split over all ranks; each writes its own shard.
  Environment: NPROC_PER_NODE (ranks on this node; default: GPU count),
               MAX_RESTARTS (torchrun restarts of failed ranks; default 3),
               RDZV_ID (job id shared by the nodes; default vqf),
               LOCAL_ADDR (this node's address as the other nodes reach it; default: hostname),
               VQF_FORCE_TORCHRUN=1 (use torchrun even with no GPU: CPU ranks),
               VQF_VENV (the virtual environment; default .venv next to launch/),
               VQF_SKIP_SETUP=1 (use VQF_VENV as it is; do not install or update it).

  examples:
    launch/run.sh pipelines/demo.yaml
    launch/run.sh pipelines/stage2.yaml --tables odps://proj/videos/ds=20260101 \
                                        --outputs odps://proj/vqf_results/ds=20260101
    NNODES=2 MASTER_ADDR=10.0.0.1 launch/run.sh pipelines/stage2.yaml   # on both nodes
TXT
}
set -euo pipefail
case "${1:-}" in ""|-h|--help) usage; exit 0;; esac
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export VQF_VENV=${VQF_VENV:-$root/.venv}
[ "${VQF_SKIP_SETUP:-0}" = 1 ] || bash "$root/launch/setup.sh"
py="$VQF_VENV/bin/python"
[ -x "$py" ] || { echo "vqf: no python at $py (VQF_VENV=$VQF_VENV)" >&2; exit 2; }

number() {  # number NAME VALUE: a whole number, or a message naming the variable
  case "$2" in ''|*[!0-9]*) echo "vqf: $1=$2 is not a whole number" >&2; exit 2;; esac
}
gpus=$("$py" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
nnodes=${NNODES:-1}
nproc=${NPROC_PER_NODE:-$gpus}
number NNODES "$nnodes"
number NPROC_PER_NODE "$nproc"
if [ "$nproc" -ge 1 ] || [ "$nnodes" -gt 1 ] || [ "${VQF_FORCE_TORCHRUN:-0}" = 1 ]; then
  [ "$nproc" -ge 1 ] || nproc=1
  endpoint=${RDZV_ENDPOINT:-${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT:-29500}}
  extra=()
  if [ "$nnodes" -gt 1 ]; then
    extra+=(--rdzv-backend c10d --rdzv-endpoint "$endpoint" --rdzv-id "${RDZV_ID:-vqf}")
  else
    extra+=(--standalone)
  fi
  if [ -n "${LOCAL_ADDR:-}" ]; then extra+=(--local-addr "$LOCAL_ADDR"); fi
  # SIGTERM (Kubernetes, Slurm) or Ctrl-C: torchrun passes SIGTERM on to every rank, which
  # stops gracefully (engine.grace_s) and writes what finished; this script then exits
  # 143 / 130 with one line, as a single `vqf run` does.
  "$py" -m torch.distributed.run --nnodes "$nnodes" \
    --nproc-per-node "$nproc" --max-restarts "${MAX_RESTARTS:-3}" "${extra[@]}" \
    -m vqf run "$@" &
  pid=$!
  stop=""
  trap 'stop=143; kill -TERM "$pid" 2>/dev/null' TERM
  trap 'stop=130; kill -TERM "$pid" 2>/dev/null' INT
  rc=0
  while :; do
    wait "$pid" && rc=0 || rc=$?
    kill -0 "$pid" 2>/dev/null || break  # a trapped signal woke `wait`: torchrun still runs
  done
  if [ -n "$stop" ]; then
    echo "vqf: stopped by a signal; every finished row is written; rerun the same command to resume" >&2
    exit "$stop"
  fi
  exit "$rc"
fi
exec "$py" -m vqf run "$@"
