#!/usr/bin/env bash
# Runs the packed GPU test binaries under compute-sanitizer on the lent GPU machine
# (issue 14; written 2026-12-01 and checked here only against a mock compute-sanitizer:
# it has not run on a GPU yet). scripts/gpu-check.sh copies it beside the packed binaries
#   (.gpu-bin/bin/test-gpu-*, test-gpu_training-*, test-gpu_towers-*) as .gpu-bin/sanitize.sh;
# then one device call: carry [".gpu-bin"], command "bash .gpu-bin/sanitize.sh",
# timeout_s 600.
#
# What runs (each binary with --ignored --test-threads=1, so only the `needs a CUDA GPU`
# tests, one at a time):
#   memcheck   every ignored test of each binary, --leak-check full, --padding where supported
#   synccheck  the small tests (`small` below)
#   racecheck  the small tests: every kernel template at small shapes (shared-memory GEMM
#              tiles, softmax shuffles, pooling, LRN, loss, SGD, the towers' exchanges);
#              the batch-128 AlexNet tests would take many minutes under racecheck
#   initcheck  the small tests
# The three binaries of one tool run side by side (SANITIZE_SERIAL=1 to run them one after
# another); the tools run in the order above, each run capped (memcheck 120 s, synccheck
# 45 s, racecheck 100 s, initcheck 70 s: CAP_MEMCHECK ... CAP_INITCHECK). One deadline bounds
# the whole script (SANITIZE_BUDGET_S, default 360 s of a 600 s call, leaving time for the
# machine's start and the copy back): each run's timeout is the smaller of its cap and what
# is left; a run with under MIN_RUN_S (20) seconds left is skipped, and says so. A run cut by
# its timeout says which test it was in.
# Logs: $OUT/sanitize/<tool>.<binary>.sanitizer.log (compute-sanitizer's report, through
# --log-file) and .test.log (the tests' own output). A summary line per (tool, binary) is
# printed last. Exit status: 0 when every run that ran was clean and its tests passed, else 1.
#
# Environment: SANITIZER (path to compute-sanitizer), BIN_DIR (default: bin/ beside this
# script), SANITIZE_TOOLS (default "memcheck synccheck racecheck initcheck"),
# SANITIZE_BUDGET_S, SANITIZE_SERIAL, MEMCHECK_FILTER (libtest filters for memcheck; empty =
# every ignored test).
set -u
here=$(cd "$(dirname "$0")" && pwd)
OUT=${OUT:-$here/out}
logs="$OUT/sanitize"; mkdir -p "$logs"
BIN_DIR=${BIN_DIR:-$here/bin}
BUDGET=${SANITIZE_BUDGET_S:-360}
MIN_RUN_S=${MIN_RUN_S:-20}
TOOLS=${SANITIZE_TOOLS:-"memcheck synccheck racecheck initcheck"}
start=$(date +%s); deadline=$((start + BUDGET))

# Library path as in the packer's run.sh: the toolkit's NVRTC first (a newer one would make
# PTX the driver refuses), then the driver.
dirs=""
for d in /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda/lib64 /usr/local/cuda-13.0/targets/x86_64-linux/lib \
  /usr/local/nvidia/lib64 /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib \
  /opt/torch/.venv/lib/python3*/site-packages/nvidia/cudnn/lib; do
  [ -d "$d" ] && dirs="${dirs:+$dirs:}$d"
done
export LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
# One CUBIN cache for every run (the first run compiles, the rest load), outside $OUT so
# that it does not travel back.
export ALEXNET_CACHE_DIR=${ALEXNET_CACHE_DIR:-/tmp/alexnet-sanitize-cubin}
# Rust panics name their test; a backtrace would only lengthen the logs.
export RUST_BACKTRACE=0

# compute-sanitizer: $SANITIZER, the toolkit's bin/ (CUDA_HOME, then the 13.0 install), the
# toolkit's compute-sanitizer/ folder, then PATH.
san=""
for c in "${SANITIZER:-}" "$CUDA_HOME/bin/compute-sanitizer" /usr/local/cuda-13.0/bin/compute-sanitizer \
  "$CUDA_HOME/compute-sanitizer/compute-sanitizer" /usr/local/cuda-13.0/compute-sanitizer/compute-sanitizer \
  "$(command -v compute-sanitizer 2>/dev/null)"; do
  [ -n "$c" ] && [ -x "$c" ] && { san=$c; break; }
done
if [ -z "$san" ]; then
  echo "sanitize: no compute-sanitizer (looked in \$SANITIZER, $CUDA_HOME/bin, /usr/local/cuda-13.0/bin, PATH)" >&2
  ls -d /usr/local/cuda* 2>&1 | sed 's/^/  /' >&2
  exit 2
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/gpu: /'
echo "sanitizer: $san ($("$san" --version 2>&1 | grep -iE 'version|release' | head -n 1))"
"$san" --help > "$logs/compute-sanitizer-help.txt" 2>&1
# An option is passed only where this compute-sanitizer lists it.
has() { grep -q -- "$1" "$logs/compute-sanitizer-help.txt"; }

# Binaries, by the packer's names.
declare -A bin=()
for kind in gpu gpu_training gpu_towers; do
  f=$(ls "$BIN_DIR"/test-"$kind"-* 2>/dev/null | head -n 1)
  if [ -n "$f" ]; then bin[$kind]=$f; else echo "sanitize: no $BIN_DIR/test-$kind-* (pack with scripts/gpu-check.sh)"; fi
done
[ ${#bin[@]} -gt 0 ] || exit 2

# The small tests: every kernel template on small shapes, a few thousand launches in all.
#   gpu:          every layer kind forward (16 tiny nets, two with an LRN and its pooling
#                 fused; batches 1, 7, 128), and the tf32
#                 and bf16 kernels (cp.async, st.shared, ldmatrix, mma; fc split-K;
#                 convolutions with groups and with gathered weights) on 5 tiny nets and the
#                 small net each
#   gpu_training: every backward stage, the LRN intermediates, every layer kind trained
#                 (6 small nets x batches 1, 5, 33 x 3 steps: the GEMM data/weight gradients,
#                 chunked weight sums, pooling, LRN, ReLU, tanh, dropout, loss, SGD)
#   gpu_towers:   the small net split in two towers on two streams, 3 SGD steps (the
#                 exchange kernels); in tf32 and bf16 its towers and a training step (the
#                 gradients on tensor cores, conv_mma_dgrad_*, conv_mma_wgrad_*)
# Left out there: the fixture networks (AlexNet at batch 128 forward, batch 4-64 training)
# and the AlexNet towers at batch 64; memcheck runs those.
declare -A small=(
  [gpu]="every_layer_kind_matches_the_cpu tf32_forward_is_within_tf32_error_of_the_cpu bf16_forward_is_within_bf16_error_of_the_cpu f16_forward_is_within_f16_error_of_the_cpu"
  [gpu_training]="every_backward_stage_matches_the_cpu lrn_backward_intermediates every_layer_kind_trains_as_on_the_cpu"
  [gpu_towers]="split_training_on_gpus_equals_unsplit tf32_towers_and_training_stay_within_tf32_error bf16_towers_and_training_stay_within_bf16_error"
)
# Caps in seconds per run; the three binaries of a tool run side by side, so a tool's phase
# lasts at most its cap: 120 + 45 + 100 + 70 = 335 s of the 360 s budget. The deadline may
# cut a run shorter (and decides alone under SANITIZE_SERIAL=1).
declare -A cap=([memcheck]=${CAP_MEMCHECK:-120} [synccheck]=${CAP_SYNCCHECK:-45} [racecheck]=${CAP_RACECHECK:-100} [initcheck]=${CAP_INITCHECK:-70})

common=(--error-exitcode 86 --print-limit 25)
has --show-backtrace && common+=(--show-backtrace device)
has --require-cuda-init && common+=(--require-cuda-init no)
has --target-processes && common+=(--target-processes all)
tool_opts() {
  case $1 in
    memcheck)
      echo --leak-check full
      has --padding && echo --padding 256
      ;;
    racecheck)
      has --racecheck-report && echo --racecheck-report analysis
      ;;
    initcheck | synccheck) ;;
  esac
}

# run TOOL KIND: one sanitizer run; writes $logs/TOOL.KIND.{sanitizer,test}.log and .result.
run_one() {
  local tool=$1 kind=$2 exe=${bin[$2]} base="$logs/$1.$2"
  local now left t filters=() opts=()
  now=$(date +%s); left=$((deadline - now))
  t=${cap[$tool]:-60}; [ "$t" -gt "$left" ] && t=$left
  if [ "$t" -lt "$MIN_RUN_S" ]; then
    echo "skipped: ${left}s left of the ${BUDGET}s budget" > "$base.result"; return
  fi
  if [ "$tool" = memcheck ]; then
    # shellcheck disable=SC2206
    filters=(${MEMCHECK_FILTER:-})
  else
    # shellcheck disable=SC2206
    filters=(--exact ${small[$kind]})
  fi
  mapfile -t opts < <(tool_opts "$tool" | tr ' ' '\n')
  local s; s=$(date +%s)
  # SIGINT first, so that compute-sanitizer can still write what it has; KILL 15 s later.
  timeout -s INT -k 15 "$t" "$san" --tool "$tool" "${common[@]}" "${opts[@]}" \
    --log-file "$base.sanitizer.log" \
    "$exe" --ignored --test-threads=1 "${filters[@]}" > "$base.test.log" 2>&1
  local rc=$? secs=$(( $(date +%s) - s ))
  local errs hz tests leaks first
  errs=$(grep -Eo 'ERROR SUMMARY: [0-9]+' "$base.sanitizer.log" 2>/dev/null | tail -n 1 | grep -Eo '[0-9]+$')
  hz=$(grep -Eo 'RACECHECK SUMMARY: .*' "$base.sanitizer.log" 2>/dev/null | tail -n 1)
  leaks=$(grep -c 'Leaked [0-9]* bytes' "$base.sanitizer.log" 2>/dev/null)
  tests=$(grep -E '^test result:' "$base.test.log" | tail -n 1 | sed 's/^test result: //; s/; finished in.*//')
  first=$(grep -E '^========= +(Invalid|Uninitialized|Race|Barrier|Program hit|Error|Leaked|Warning|Potential|Malformed|Misaligned|Out-of-range)' \
    "$base.sanitizer.log" 2>/dev/null | head -n 1 | sed 's/^=* *//' | cut -c1-110)
  local verdict
  if [ $rc -eq 124 ] || [ $rc -eq 137 ] || { [ $rc -eq 130 ] && [ -z "$errs" ]; }; then
    # With one test thread libtest prints "test NAME ... " before it runs NAME.
    local cur; cur=$(grep -Eo '^test [A-Za-z0-9_:]+ \.\.\. *$' "$base.test.log" | tail -n 1 | awk '{print $2}')
    verdict="TIMED OUT after ${t}s${cur:+ in $cur}${errs:+ ($errs errors before the cut)}"
  elif [ -z "$errs" ]; then
    verdict="NO SUMMARY (rc=$rc; see $(basename "$base").sanitizer.log)"
  elif [ "$errs" -gt 0 ] 2>/dev/null; then
    [ "${leaks:-0}" -gt 0 ] && errs="$errs, $leaks leak reports"
    verdict="ERRORS: $errs${first:+; first: $first}"
  else
    verdict="clean"
  fi
  [ -n "$hz" ] && verdict="$verdict [$hz]"
  # A failed test under a clean sanitizer is worth saying: rc 101 is libtest's failure.
  if [ $rc -ne 0 ] && [ $rc -ne 86 ] && [ $rc -ne 124 ] && [ $rc -ne 137 ]; then verdict="$verdict; tests rc=$rc"; fi
  printf '%s %4ss  tests: %s\n' "$verdict" "$secs" "${tests:-no result line}" > "$base.result"
}

for tool in $TOOLS; do
  echo "==== $tool ($(( deadline - $(date +%s) ))s of the budget left) ===="
  if [ "${SANITIZE_SERIAL:-0}" = 1 ]; then
    for kind in gpu gpu_training gpu_towers; do [ -n "${bin[$kind]:-}" ] && run_one "$tool" "$kind"; done
  else
    for kind in gpu gpu_training gpu_towers; do [ -n "${bin[$kind]:-}" ] && run_one "$tool" "$kind" & done
    wait
  fi
  for kind in gpu gpu_training gpu_towers; do
    [ -f "$logs/$tool.$kind.result" ] && printf '  %-10s %-14s %s\n' "$tool" "$kind" "$(cat "$logs/$tool.$kind.result")"
  done
done

echo "==== sanitizer summary (logs in \$OUT/sanitize; $(( $(date +%s) - start ))s) ===="
bad=0
for tool in $TOOLS; do
  for kind in gpu gpu_training gpu_towers; do
    [ -n "${bin[$kind]:-}" ] || continue
    r=$(cat "$logs/$tool.$kind.result" 2>/dev/null || echo "not run")
    printf '%-10s %-40s %s\n' "$tool" "$(basename "${bin[$kind]}")" "$r"
    case $r in clean*tests:\ ok*) ;; skipped*) ;; *) bad=1 ;; esac
  done
done
exit $bad
