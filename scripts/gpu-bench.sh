#!/usr/bin/env bash
# The measurements of docs/PERFORMANCE.md on one GPU, in one bounded run (issue 26). From the repository root:
#
#   OUT=/some/dir bash scripts/gpu-bench.sh                         # on the GPU machine (<= 330 s)
#   OUT=/tmp/x GPU_BENCH_DEVICE=cpu bash scripts/gpu-bench.sh       # the same steps at CPU sizes: a dry run
#
# Steps run in the order of GPU_BENCH_STEPS; each has its own time limit and the whole run GPU_BENCH_BUDGET_S
# seconds, so a step that fails or runs out of time loses only itself. Every `hdit bench` step writes its own JSON
# under $OUT, rewritten after each measurement; the log of everything is $OUT/gpu-bench.log and $OUT/steps.tsv
# holds each step's exit code (124/137: its time limit) and seconds. Wheels in .whl/ (natten's pure-Python wheel
# for the natten-flex kernel) are installed into /tmp/site first, without an index.
#   train    E and DiT-B/4 (R2) training img/s at 128 px, batch 128, bf16, compiled; forward latency, peak memory
#   profile  E's training step at batch 256 as above, then 5 steps under torch.profiler: the top-kernel table
#   trainer  `hdit train` of paper-size E, compiled bf16, 30 steps on synthetic ImageNet class folders (the real
#            trainer with its data loader, EMA and log; img/s per 5 steps in trainer-log.csv). Batch 256 as
#            `profile`, whose compiled graphs inductor's cache then holds
#   na       neighborhood attention alone: our FlexAttention kernel vs natten's flex backend, masked SDPA, global
#   sample   50-step DPM++(3M) SDE sampling img/s, batch 256
#   scaling  forward latency and peak memory, E vs DiT-B/4, at GPU_BENCH_RESOLUTIONS
#   tests    the CUDA tests of tests/test_flex.py and tests/test_bench.py
# (At most 8 files come back from the GPU machine: the default steps write exactly 8.)
set -uo pipefail
: "${OUT:?set OUT to the output folder}"
DEVICE=${GPU_BENCH_DEVICE:-cuda}
BUDGET=${GPU_BENCH_BUDGET_S:-330}  # the coordinator's: what is left of the device time, less the machine's start
STEPS=${GPU_BENCH_STEPS:-profile trainer na scaling}  # the full protocol: train profile trainer na sample scaling tests
RESOLUTIONS=${GPU_BENCH_RESOLUTIONS:-512 1024}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
LOG="$OUT/gpu-bench.log"
START=$(date +%s)
HDIT=(python3 -m hdit.cli)  # no install needed: the package is imported from the working tree
SYNTH_DIR=/tmp/gpu-bench-imagenet RUN_DIR=/tmp/gpu-bench-run

if [ "$DEVICE" = cuda ]; then
    BENCH=(bench --device cuda)
    TRAIN=(--profile paper --steps 30 --log-every 5 --checkpoint-every 30 --data "$SYNTH_DIR")
    SYNTH=(--classes 1000 --per-class 1 --size 160x128)  # ~25 s on 2 CPU cores; the loader makes ~1500 img/s on 2
    TESTS=(tests/test_flex.py tests/test_bench.py -k cuda)
    SIZES=() PROFILE_SIZES=(--batches 256 --warmup 3 --iters 10) TRAIN_SIZES=(--batches 128) SLOWER=1
else  # dry run: the same commands at the CPU-quick plan's sizes; two steps of the default profile's E
    BENCH=(bench --device cpu --quick --threads 1)
    TRAIN=(--profile default --steps 2 --log-every 1 --threads 1)  # the embedded data: no --data
    SYNTH=(--classes 3 --per-class 1 --size 40x32)
    TESTS=(tests/test_bench.py -k "bad_input")
    SIZES=(--warmup 1 --iters 2 --sample-batch 2 --sample-steps 2 --scaling-batch 2)
    PROFILE_SIZES=(--batches 2) TRAIN_SIZES=(--batches 2) RESOLUTIONS="32 64"
    SLOWER=3  # a CPU compiles several times slower than the GPU machine's 16 cores: step limits x3
fi

say() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }

# bounded NAME LIMIT_S COMMAND...: runs COMMAND under min(LIMIT_S, what is left of the budget)
bounded() {
    local name=$1 limit=$(($2 * SLOWER)); shift 2
    local left=$((BUDGET - ($(date +%s) - START)))
    if [ "$left" -lt 20 ]; then say "skip $name: budget spent"; printf '%s\tskipped\t0\n' "$name" >>"$OUT/steps.tsv"; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    say "start $name (limit ${limit}s): $*"
    local t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    say "end $name: exit $rc after $(($(date +%s) - t0))s"
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" >>"$OUT/steps.tsv"
}

run_step() {
    case $1 in
    train) bounded train 200 "${HDIT[@]}" "${BENCH[@]}" --suites train forward "${TRAIN_SIZES[@]}" "${SIZES[@]}" \
        --out "$OUT/bench-train.json" ;;
    profile) bounded profile 90 "${HDIT[@]}" "${BENCH[@]}" --suites train --configs E "${PROFILE_SIZES[@]}" \
        "${SIZES[@]}" --profile "$OUT" --out "$OUT/bench-profile.json" ;;
    trainer)
        rm -rf "$SYNTH_DIR" "$RUN_DIR"
        bounded synth 30 "${HDIT[@]}" data synth --layout imagenet "${SYNTH[@]}" --out "$SYNTH_DIR"
        bounded trainer 100 "${HDIT[@]}" train --config E "${TRAIN[@]}" --device "$DEVICE" --compile --no-progress \
            --out "$RUN_DIR"
        cp "$RUN_DIR/log.csv" "$OUT/trainer-log.csv" 2>/dev/null
        cp "$RUN_DIR/config.json" "$OUT/trainer-config.json" 2>/dev/null ;;
    na) bounded na 60 "${HDIT[@]}" "${BENCH[@]}" --suites na "${SIZES[@]}" --out "$OUT/bench-na.json" ;;
    sample) bounded sample 120 "${HDIT[@]}" "${BENCH[@]}" --suites sample "${SIZES[@]}" --out "$OUT/bench-sample.json" ;;
    # shellcheck disable=SC2086  # the resolutions are words
    scaling) bounded scaling 90 "${HDIT[@]}" "${BENCH[@]}" --suites scaling --resolutions $RESOLUTIONS "${SIZES[@]}" \
        --out "$OUT/bench-scaling.json" ;;
    tests) bounded tests 60 python3 -m pytest -q -p no:cacheprovider -o addopts= "${TESTS[@]}" ;;
    *) say "unknown step $1 (expected train profile trainer na sample scaling tests)"; return 2 ;;
    esac
}

printf 'step\texit\tseconds\n' >"$OUT/steps.tsv"
say "gpu-bench on $DEVICE: steps [$STEPS], budget ${BUDGET}s, commit $(git rev-parse --short HEAD 2>/dev/null || echo ?)"
{ nvidia-smi 2>&1 | head -15; python3 -c 'import sys, torch; print(sys.version); print("torch", torch.__version__,
  "cuda", torch.version.cuda, "available", torch.cuda.is_available())'; } >>"$LOG" 2>&1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >>"$LOG" 2>&1 && export PYTHONPATH="$PYTHONPATH:/tmp/site" && say "installed $(ls .whl | tr '\n' ' ')"
fi
for s in $STEPS; do run_step "$s"; done
say "done after $(($(date +%s) - START))s"
tee -a "$LOG" <"$OUT/steps.tsv"
