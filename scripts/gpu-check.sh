#!/usr/bin/env bash
# Builds, here, everything the lent GPU machine should run, and says how to run it there:
# the GPU tests (those marked `needs a CUDA GPU`: every layer kind and the three networks
# on the GPU against the CPU, forward and training, and the tf32 and bf16 forward passes),
# the forward benchmark on CUDA in f32, tf32 and bf16,
# benches/gpu_forward.rs (each generated kernel beside cuDNN / cuBLAS), benches/gpu_train.rs
# (an AlexNet training step), benches/towers.rs (AlexNet split into its two towers on two
# streams, and two GPUs when there are two, against unsplit), a short `train` run on CUDA, and scripts/bench_torch.py
# (PyTorch eager, AMP and torch.compile on the same GPU, when the machine has it); and scripts/gpu-sanitize.sh, the
# GPU tests under compute-sanitizer, for a second call.
# Uses the workplace's packer (../shared/gpu/pack.sh, see ../shared/gpu/README.md), which
# writes .gpu-bin/run.sh; then one device call: carry [".gpu-bin"], command
# "bash .gpu-bin/all.sh". Its summary table is printed last. Shorter calls: .gpu-bin/tf32.sh
# (the tensor-core path, the CUDA graph), .gpu-bin/towers.sh (the two towers),
# .gpu-bin/feed.sh (the data path: bytes cut on the GPU, batches sent ahead on a copy
# stream) and .gpu-bin/tune.sh (issue 17's tuner, writing the tuning table).
set -euo pipefail
cd "$(dirname "$0")/.."
pack=${ALEXNET_PACK:-../shared/gpu/pack.sh}
[ -f "$pack" ] || { echo "gpu-check: $pack not found (set ALEXNET_PACK)" >&2; exit 2; }
bash "$pack" \
  --example "alexnet:bench --device cuda --batch 1,7,128 --runs 20" \
  --example "alexnet:train --device cuda --epochs 3 --checkpoint /tmp/alexnet-train --overwrite" \
  --example "synthetic_folder:/tmp/alexnet-feed/src 5120 10" \
  --bench gpu_forward \
  --bench gpu_train \
  --bench towers
cp scripts/bench_torch.py .gpu-bin/
# Every GPU test under compute-sanitizer (memcheck, synccheck, racecheck, initcheck): a
# second device call, "bash .gpu-bin/sanitize.sh" (about 6 minutes).
cp scripts/gpu-sanitize.sh .gpu-bin/sanitize.sh
# What the scripts below share: the toolkit's, the driver's and cuDNN's libraries on the
# library path (run.sh's own, plus the PyTorch wheel's cuDNN that gpu_forward compares
# with), CUDA_HOME, and gpu_line, which names the GPU.
cat > .gpu-bin/env.sh <<'EOS'
dirs=""; for d in /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib64 /usr/local/nvidia/lib64 \
  /opt/torch/.venv/lib/python3*/site-packages/nvidia/cudnn/lib; do
  [ -d "$d" ] && dirs="${dirs:+$dirs:}$d"; done
export LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
gpu_line() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
}
EOS
cat > .gpu-bin/all.sh <<'EOS'
#!/usr/bin/env bash
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$here/out}; mkdir -p "$OUT"
py=/opt/torch/.venv/bin/python
if [ -x "$py" ]; then
  echo "==== PyTorch reference ===="
  # Eager f32/TF32/fp16/bf16/AMP (whole forward, training step, each stage alone), then
  # torch.compile, batch 1 and 128, until TORCH_BUDGET_S; TORCH_ARGS adds flags (e.g.
  # "--batch 128 --compile-mode max-autotune-no-cudagraphs"). JSON: $OUT/bench_torch.json.
  tb=${TORCH_BUDGET_S:-150}
  # shellcheck disable=SC2086
  timeout $((tb + 150)) "$py" "$here/bench_torch.py" --out "$OUT/bench_torch.json" --budget-s "$tb" \
    ${TORCH_ARGS:-} 2>&1 | tee "$OUT/torch.log" | grep -v -e Warning -e '^    '
fi
bash "$here/run.sh"
# The same forward bench with the convolutions and the fc layers on tensor cores (its own log: run.sh names a
# log after the binary), with run.sh's library path.
. "$here/env.sh"
for p in tf32 bf16 f16; do
  timeout 300 "$here/bin/example-alexnet" bench --device cuda --precision $p --batch 1,7,128 \
    --runs 20 > "$OUT/example-alexnet-$p.log" 2>&1; echo "bench --precision $p: rc=$?"
  tail -n 25 "$OUT/example-alexnet-$p.log"
done
# Issue 18: epochs of AlexNet at batch 128 over a prepared set (run.sh wrote the JPEGs with
# the synthetic_folder example); images/s per log line, and whether an epoch waited for data.
f=/tmp/alexnet-feed; rm -rf "$f/set" "$f/run"
[ -d "$f/src" ] || timeout 120 "$here/bin/example-synthetic_folder" "$f/src" 5120 10 > /dev/null
timeout 120 "$here/bin/example-alexnet" prepare --data "$f/src" --out "$f/set" 2>&1 | tail -n 1
timeout 240 "$here/bin/example-alexnet" train --net alexnet --device cuda --data "$f/set" --batch 128 \
  --epochs 3 --log-every 8 --checkpoint "$f/run" --overwrite 2>&1 | tee "$OUT/feed-train.log" \
  | grep -E 'images/s|waited|epoch|error'
EOS
# The two towers alone (issue 5), for a short device call: the GPU tower tests, the
# split-versus-unsplit bench and `bench --towers` on one GPU.
cat > .gpu-bin/towers.sh <<'EOS'
#!/usr/bin/env bash
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$here/out}; mkdir -p "$OUT"
. "$here/env.sh"; gpu_line
timeout 240 "$here"/bin/test-gpu_towers-* --ignored --test-threads=1 --nocapture 2>&1 | tee "$OUT/gpu_towers.log" \
  | grep -E 'one GPU|two GPUs|AlexNet|SmallNet|panicked|test result'
timeout 240 "$here/bin/bench-towers" --bench 2>&1 | tee "$OUT/towers.log" | grep -E 'time:|^alexnet|  [a-z_]+ '
timeout 120 "$here/bin/example-alexnet" bench --net alexnet --device cuda --batch 128 --runs 20 \
  --towers cuda:0,cuda:0 2>&1 | tee "$OUT/bench-towers-cli.log" | grep -E 'towers|batch'
EOS
# The tensor-core path alone (issue 13), for a short device call: the tf32 and bf16 GPU
# tests (tiny nets, the small net, AlexNet and torchvision's; in tf32 towers and a training
# step too) and the CUDA graph's replay (issue 17), `bench --precision tf32` and `bf16`,
# then gpu_forward (f32 and tf32 stages beside cuDNN / cuBLAS, the fused LRN stages, and
# each precision's whole pass launched from the host beside its CUDA graph).
cat > .gpu-bin/tf32.sh <<'EOS'
#!/usr/bin/env bash
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$here/out}; mkdir -p "$OUT"
. "$here/env.sh"; gpu_line
for t in gpu gpu_towers; do
  timeout 240 "$here"/bin/test-$t-* --ignored --test-threads=1 --nocapture tf32 bf16 f16 graph 2>&1 \
    | tee "$OUT/tf32-$t.log" | grep -E 'tf32|bf16|f16|graph|panicked|test result'
done
for p in tf32 bf16 f16; do
  timeout 120 "$here/bin/example-alexnet" bench --net alexnet --device cuda --precision $p --batch 1,128 \
    --runs 20 2>&1 | tee "$OUT/bench-$p-cli.log" | grep -E 'forward|batch|stages'
done
timeout 240 "$here/bin/bench-gpu_forward" --bench 2>&1 | tee "$OUT/gpu_forward-tf32.log" | tail -n 60
EOS
# The data path alone (issue 18), for a short device call: the GPU tests of bytes cut on
# the GPU and of batches sent ahead (pinned memory, the copy stream), then gpu_train
# (the step with the batch on the device, copied before it, and sent one step ahead).
cat > .gpu-bin/feed.sh <<'EOS'
#!/usr/bin/env bash
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$here/out}; mkdir -p "$OUT"
. "$here/env.sh"; gpu_line
timeout 240 "$here"/bin/test-gpu_training-* --ignored --test-threads=1 --nocapture images sent_ahead 2>&1 \
  | tee "$OUT/feed-tests.log" | grep -E 'sent ahead|cut on the GPU|panicked|test result'
timeout 240 "$here/bin/bench-gpu_train" --bench 2>&1 | tee "$OUT/gpu_train.log" | grep -E 'batch|step'
# Epochs of AlexNet at batch 128 over a prepared set (5,120 generated 500x375 JPEGs
# prepared at 256x256): `train` prints images/s per log line and whether an epoch waited
# for data; compare with gpu_train's rate with the patches on the device.
f=/tmp/alexnet-feed; rm -rf "$f/set" "$f/run"
[ -d "$f/src" ] || timeout 120 "$here/bin/example-synthetic_folder" "$f/src" 5120 10
timeout 120 "$here/bin/example-alexnet" prepare --data "$f/src" --out "$f/set" 2>&1 | tail -n 3
timeout 240 "$here/bin/example-alexnet" train --net alexnet --device cuda --data "$f/set" --batch 128 \
  --epochs 3 --log-every 8 --checkpoint "$f/run" --overwrite 2>&1 | tee "$OUT/feed-train.log" \
  | grep -E 'images/s|waited|epoch|error'
EOS
# Issue 17's tuner: every conv and fc stage's spill-free candidate tiles of AlexNet (and
# its towers) timed in f32, tf32 and bf16 at batch 128; the table comes back as
# $OUT/tuning.txt: commit it as kernels_templates/tuning/<its arch>.txt.
cat > .gpu-bin/tune.sh <<'EOS'
#!/usr/bin/env bash
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$here/out}; mkdir -p "$OUT"
. "$here/env.sh"; gpu_line
timeout 420 "$here/bin/example-alexnet" tune --net alexnet --batch 128 --out "$OUT/tuning.txt" 2>&1 \
  | tee "$OUT/tune.log"
EOS
du -sh .gpu-bin
echo "next: device run, carry [\".gpu-bin\"], command \"bash .gpu-bin/all.sh\" (everything), \"bash .gpu-bin/tf32.sh\" (the tf32 and bf16 paths and the CUDA graph alone, a few minutes), \"bash .gpu-bin/towers.sh\" (the towers alone, a few minutes), \"bash .gpu-bin/feed.sh\" (the data path alone, a few minutes) or \"bash .gpu-bin/tune.sh\" (the tuner, under 7 minutes); then \"bash .gpu-bin/sanitize.sh\" (compute-sanitizer, about 6 minutes)"
