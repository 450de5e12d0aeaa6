#!/usr/bin/env bash
# Builds, here, everything the lent GPU machine should run, and says how to run it there:
# the GPU tests (those marked `needs a CUDA GPU`: every layer kind and the three networks
# on the GPU against the CPU, batches 1, 7 and 128), the forward benchmark on CUDA, and
# benches/gpu_forward.rs (each generated kernel beside cuDNN / cuBLAS).
# Uses the workplace's packer (../shared/gpu/pack.sh, see ../shared/gpu/README.md), which
# writes .gpu-bin/run.sh; then one device call: carry [".gpu-bin"], command
# "bash .gpu-bin/run.sh". Its summary table is printed last.
set -euo pipefail
cd "$(dirname "$0")/.."
pack=${ALEXNET_PACK:-../shared/gpu/pack.sh}
[ -f "$pack" ] || { echo "gpu-check: $pack not found (set ALEXNET_PACK)" >&2; exit 2; }
bash "$pack" \
  --example "alexnet:bench --device cuda --batch 1,7,128 --runs 20" \
  --bench gpu_forward
du -sh .gpu-bin
echo "next: device run, carry [\".gpu-bin\"], command \"bash .gpu-bin/run.sh\""
