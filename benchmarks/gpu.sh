#!/usr/bin/env bash
# The GPU checks in one go, for a machine with CUDA (not yet run to the end anywhere; budget 10 minutes):
#   1. tests/test_devices.py on CUDA (against the float64 CPU oracle; fp32, channels_last, bf16/fp16
#      autocast, a whole model's training step, inductor compile);
#   2. a profile of a ReID training step (StRA and the limit): where the kernel time goes;
#   3. speed and memory of the ReID, face and FER models at batch 16 and 64, fp32 and then
#      channels_last + bf16 autocast (twin, StRA, limit, unfold reference; runs in one process);
#   4. the last stage's operators alone (ReID shapes), fp32 and channels_last + bf16.
# Usage: bash benchmarks/gpu.sh [OUTDIR]   (default: bench-gpu); each part's output goes to OUTDIR.
# PARTS="tests profile speed operator" picks parts; SPEED="fp32:reid ... bf16:fer" picks the speed runs;
# PART_TIMEOUT (seconds, default 600) stops a part that hangs so that the next one still runs.
set -uo pipefail
out=${1:-bench-gpu}
parts=" ${PARTS:-tests profile speed operator} "
speed_runs=${SPEED:-fp32:reid fp32:face fp32:fer bf16:reid bf16:face bf16:fer}
part_timeout=${PART_TIMEOUT:-600}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
run() { echo "[$(date +%T)] $*" >&2; timeout "$part_timeout" "$@"; }
run python -c 'import torch, timm; assert torch.cuda.is_available(), "no CUDA device"
print(f"torch {torch.__version__}, timm {timm.__version__}, {torch.cuda.get_device_name()}")' || exit 1

if [[ $parts == *" tests "* ]]; then
    run python -m pytest -q -p no:cacheprovider tests/test_devices.py -k cuda 2>&1 | tee "$out/tests.txt"
fi

if [[ $parts == *" profile "* ]]; then
    run python -m timm_stra.benchmarks.step_profile --device cuda --task reid --cases stra,limit --top 20 \
        2>&1 | tee "$out/profile.md"
fi

if [[ $parts == *" speed "* ]]; then
    for spec in $speed_runs; do
        flags=""
        [[ ${spec%%:*} == bf16 ]] && flags="--channels-last --bf16"
        # shellcheck disable=SC2086  # $flags is a list of options
        run python benchmarks/speed.py --device cuda --in-process --task "${spec#*:}" --cases twin,stra,limit,reference \
            --batch-sizes 16,64 --repeats 3 --warmup 3 --iters 8 --no-sweep --no-progress $flags
        echo
    done 2>&1 | tee "$out/speed.md"
fi

if [[ $parts == *" operator "* ]]; then
    for flags in "" "--channels-last --bf16"; do
        # shellcheck disable=SC2086
        run python benchmarks/operator.py --device cuda --task reid --repeats 3 --iters 10 --no-progress $flags
        echo
    done 2>&1 | tee "$out/operator.md"
fi
