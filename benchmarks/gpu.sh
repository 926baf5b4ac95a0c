#!/usr/bin/env bash
# The GPU checks, for a machine with CUDA. All of it is more than one 10-minute call (the speed part
# alone is 6 x 48 runs, about 5 minutes on an H200): pick parts with PARTS and SPEED. Its commands ran
# on an H200 on 2026-11-26: benchmarks/results/h200-2026-11-26/.
#   1. tests: tests/test_devices.py on CUDA (against the float64 CPU oracle; fp32, channels_last,
#      bf16/fp16 autocast, a whole model's training step, inductor compile), compiling under bf16
#      autocast (tests/test_stra_operator.py) and the CUDA cases of the benchmark tests;
#   2. profile: a profile of a ReID training step (StRA and the limit): where the kernel time goes;
#   3. speed: speed and memory of the ReID, face and FER models at batch 16 and 64, fp32 and then
#      channels_last + bf16 autocast (twin, StRA, limit, unfold reference; runs in one process);
#   4. operator: the last stage's operators alone (ReID shapes; with stra-triton, StRA's inference as Triton
#      kernels), fp32 and channels_last + bf16;
#   5. compile: with CUDA graphs (torch.compile mode=reduce-overhead), the ReID operators alone (StRA
#      and the 3x3 conv; not yet run on a GPU), then the ReID training step of the limit and StRA (3.3
#      minutes on an H200 on 2026-11-27, most of it compiling: benchmarks/results/h200-2026-11-27/);
#   6. compile-profile: a profile of that compiled training step (StRA and the limit), with its top
#      kernels (not yet run on a GPU);
#   7. interleaved: the ReID models' steps alternated in one process (benchmarks/interleaved.py), eager,
#      fp32 and then channels_last + bf16, batch 16 and 64: ratios to the limit and to StRA from
#      steps of the same round; with stra_triton (StRA's inference as Triton kernels);
#   8. triton: StRA's inference as Triton kernels (timm_stra.set_triton) against the PyTorch path and
#      the limit, inference only: the ReID operators alone, then the ReID models interleaved, fp32
#      and channels_last + bf16 (about 1.5 minutes on an H200; its CUDA tests are in part 1).
# Usage: bash benchmarks/gpu.sh [OUTDIR]   (default: bench-gpu); each part's output goes to OUTDIR.
#   PARTS="tests profile speed operator compile compile-profile interleaved triton"   the parts to run, in this order
#   SPEED="fp32:reid fp32:face fp32:fer bf16:reid bf16:face bf16:fer"   the speed runs
#   PREFLIGHT_TIMEOUT=120, CMD_TIMEOUT=300   seconds for the first import of torch and for each command
#   PYTHON=python3   the interpreter (the lent GPU machines name python3 as the one with PyTorch)
#   DEADLINE   seconds from the start after which no command runs (unset: none; 540 ends inside a
#              10-minute call): each command is cut to what is left, and skipped when under 30 s are left
# Exits non-zero if any command failed, timed out or was skipped; 2 at once for an unknown part or speed run.
set -uo pipefail
out=${1:-bench-gpu}
parts=" ${PARTS:-tests profile speed operator compile compile-profile interleaved triton} "
speed_runs=${SPEED:-fp32:reid fp32:face fp32:fer bf16:reid bf16:face bf16:fer}
cmd_timeout=${CMD_TIMEOUT:-300}
known_parts=" tests profile speed operator compile compile-profile interleaved triton "
for part in $parts; do  # a misspelt part would run nothing and succeed: refused before anything runs
    [[ $known_parts == *" $part "* ]] && continue
    echo "gpu.sh: unknown part '$part' in PARTS; the parts:$known_parts" >&2; exit 2
done
for spec in $speed_runs; do
    [[ $spec =~ ^(fp32|bf16):(reid|face|fer|imagenet)$ ]] && continue
    echo "gpu.sh: unknown speed run '$spec' in SPEED: give fp32 or bf16, a colon, reid, face, fer or imagenet" >&2
    exit 2
done
py=${PYTHON:-python3}
deadline=$((SECONDS + ${DEADLINE:-100000}))
mkdir -p "$out"
export PYTHONUNBUFFERED=1
failures=$(mktemp)  # a file, not a variable: run() is called in pipelines, which run in subshells
trap 'rm -f "$failures"' EXIT
run() {  # run "$@" under the command timeout, cut to the deadline; note a failure or a skip
    local left=$((deadline - SECONDS))
    if ((left < 30)); then echo "[$(date +%T)] skipped (${left}s left before DEADLINE): $*" | tee -a "$failures" >&2; return; fi
    echo "[$(date +%T)] $*" >&2
    timeout -k 10 "$((left < cmd_timeout ? left : cmd_timeout))" "$@"
    local status=$?
    if ((status)); then echo "[$(date +%T)] failed (exit $status; 124 means timed out): $*" | tee -a "$failures" >&2; fi
}

echo "[$(date +%T)] importing torch" >&2
timeout -k 10 "${PREFLIGHT_TIMEOUT:-120}" "$py" -c 'import torch, timm
assert torch.cuda.is_available(), "no CUDA device"
print(f"torch {torch.__version__}, timm {timm.__version__}, {torch.cuda.get_device_name()}")' \
    || { echo "[$(date +%T)] no usable torch with CUDA here (or import torch took too long): stopping" >&2; exit 1; }

if [[ $parts == *" tests "* ]]; then
    run "$py" -m pytest -q -p no:cacheprovider tests/test_devices.py tests/test_operator_bench.py \
        tests/test_step_profile.py tests/test_interleaved.py tests/test_stra_operator.py -k cuda 2>&1 | tee "$out/tests.txt"
fi

if [[ $parts == *" profile "* ]]; then
    run "$py" -m timm_stra.benchmarks.step_profile --device cuda --task reid --cases stra,limit --top 20 \
        2>&1 | tee "$out/profile.md"
fi

if [[ $parts == *" speed "* ]]; then
    for spec in $speed_runs; do
        flags=""
        [[ ${spec%%:*} == bf16 ]] && flags="--channels-last --bf16"
        # shellcheck disable=SC2086  # $flags is a list of options
        run "$py" benchmarks/speed.py --device cuda --in-process --task "${spec#*:}" --cases twin,stra,limit,reference \
            --batch-sizes 16,64 --repeats 3 --warmup 3 --iters 8 --no-sweep --no-progress --log-runs $flags
        echo
    done 2>&1 | tee "$out/speed.md"
fi

if [[ $parts == *" operator "* ]]; then
    for flags in "" "--channels-last --bf16"; do
        # shellcheck disable=SC2086
        run "$py" benchmarks/operator.py --device cuda --task reid --repeats 3 --iters 10 --no-progress $flags
        echo
    done 2>&1 | tee "$out/operator.md"
fi
if [[ $parts == *" compile "* ]]; then
    {
        run "$py" benchmarks/operator.py --device cuda --task reid --impls stra,conv3x3 --repeats 3 --iters 10 \
            --warmup 4 --no-progress --compile reduce-overhead
        echo
        run "$py" benchmarks/speed.py --device cuda --in-process --task reid --cases limit,stra --modes train \
            --batch-sizes 16 --repeats 2 --warmup 4 --iters 10 --no-sweep --no-progress --log-runs \
            --compile reduce-overhead
    } 2>&1 | tee "$out/compile.md"
fi
if [[ $parts == *" compile-profile "* ]]; then
    run "$py" -m timm_stra.benchmarks.step_profile --device cuda --task reid --cases stra,limit --top 20 \
        --compile reduce-overhead 2>&1 | tee "$out/compile-profile.md"
fi
if [[ $parts == *" interleaved "* ]]; then
    for precision in fp32 bf16; do
        flags=""
        [[ $precision == bf16 ]] && flags="--channels-last --bf16"
        # shellcheck disable=SC2086
        run "$py" benchmarks/interleaved.py --device cuda --task reid --batch-sizes 16,64 --rounds 32 --warmup 3 \
            --cases twin,stra,limit,reference,stra_triton --no-progress --log-runs \
            --json "$out/interleaved-$precision.json" $flags
        echo
    done 2>&1 | tee "$out/interleaved.md"
fi
if [[ $parts == *" triton "* ]]; then
    for flags in "" "--channels-last --bf16"; do
        # shellcheck disable=SC2086
        run "$py" benchmarks/operator.py --device cuda --task reid --impls stra,stra-triton,conv3x3 --modes infer \
            --repeats 3 --iters 20 --no-progress $flags
        echo
        # shellcheck disable=SC2086
        run "$py" benchmarks/interleaved.py --device cuda --task reid --cases stra,stra_triton,limit --modes infer \
            --batch-sizes 16,64 --rounds 32 --warmup 3 --no-progress --log-runs $flags
        echo
    done 2>&1 | tee "$out/triton.md"
fi
if [[ -s $failures ]]; then
    echo "failed:" >&2
    cat "$failures" >&2
    exit 1
fi
