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
                NNODES=N NODE_RANK=i MASTER_ADDR=host0 MASTER_PORT=29500 launch/run.sh ...
              or RDZV_ENDPOINT=host0:29500 instead of MASTER_ADDR/MASTER_PORT.
  Environment: NPROC_PER_NODE (ranks on this node; default: GPU count),
               MAX_RESTARTS (torchrun restarts of failed ranks; default 3),
               RDZV_ID (job id shared by the nodes; default vqf),
               VQF_FORCE_TORCHRUN=1 (use torchrun even with no GPU: CPU ranks).

  examples:
    launch/run.sh pipelines/demo.yaml
    launch/run.sh pipelines/stage2.yaml --tables odps://proj/videos/ds=20260101 \
                                        --outputs odps://proj/vqf_results/ds=20260101
TXT
}
set -euo pipefail
case "${1:-}" in ""|-h|--help) usage; exit 0;; esac
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/launch/setup.sh"
py="$root/.venv/bin/python"
gpus=$("$py" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
nnodes=${NNODES:-1}
nproc=${NPROC_PER_NODE:-$gpus}
if [ "$nproc" -ge 1 ] || [ "$nnodes" -gt 1 ] || [ "${VQF_FORCE_TORCHRUN:-0}" = 1 ]; then
  [ "$nproc" -ge 1 ] || nproc=1
  endpoint=${RDZV_ENDPOINT:-${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT:-29500}}
  extra=()
  [ "$nnodes" -gt 1 ] || extra+=(--standalone)
  [ "$nnodes" -gt 1 ] && extra+=(--rdzv-backend c10d --rdzv-endpoint "$endpoint" --rdzv-id "${RDZV_ID:-vqf}")
  exec "$py" -m torch.distributed.run --nnodes "$nnodes" --node-rank "${NODE_RANK:-0}" \
    --nproc-per-node "$nproc" --max-restarts "${MAX_RESTARTS:-3}" "${extra[@]}" \
    -m vqf run "$@"
fi
exec "$py" -m vqf run "$@"
