#!/usr/bin/env bash
# Start the Duet Studio daemon: one rank per visible GPU under torchrun, or one CPU process.
#
#   ./run_daemon.sh [--nproc N] [daemon flags…]      (python -m daemon --help lists the flags)
#
# N: --nproc, else $NPROC, else the GPUs `nvidia-smi -L` lists (limited by
# CUDA_VISIBLE_DEVICES when it is set). N = 0 runs `python -m daemon` on the CPU (draft renders).
# Stop it with Ctrl-C or SIGTERM: the running job goes back to the queue.
set -euo pipefail
cd "$(dirname "$0")"

python=.venv/bin/python
if [[ ! -x $python ]]; then
    echo "run_daemon.sh: $python not found — create the virtual environment first (see README.md)" >&2
    exit 2
fi

nproc=${NPROC:-}
args=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --nproc) nproc=${2:?--nproc needs a number}; shift 2 ;;
        --nproc=*) nproc=${1#*=}; shift ;;
        *) args+=("$1"); shift ;;
    esac
done

if [[ -z $nproc ]]; then
    nproc=0
    if command -v nvidia-smi >/dev/null 2>&1; then
        nproc=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
    fi
    if [[ -n ${CUDA_VISIBLE_DEVICES:-} && $nproc -gt 0 ]]; then
        IFS=, read -ra visible <<<"$CUDA_VISIBLE_DEVICES"
        (( ${#visible[@]} < nproc )) && nproc=${#visible[@]}
    fi
fi
if ! [[ $nproc =~ ^[0-9]+$ ]]; then
    echo "run_daemon.sh: --nproc/NPROC must be a whole number, got '$nproc'" >&2
    exit 2
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# NVLink SHARP (NVLS) multicast is off: it hangs or fails on some hosts and buys nothing here.
export NCCL_NVLS_ENABLE=0

if (( nproc == 0 )); then
    exec "$python" -m daemon "${args[@]+"${args[@]}"}"
fi
# Sequence parallelism over all ranks unless the flags say otherwise
# (cfg_parallel × ulysses × ring = ranks).
flags=" ${args[*]+"${args[*]}"} "
if (( nproc > 1 )) && [[ $flags != *" --ulysses_size"* && $flags != *" --ring_size"* && $flags != *" --cfg_parallel"* ]]; then
    args+=(--ulysses_size "$nproc")
fi
exec "$python" -m torch.distributed.run --standalone --nproc_per_node="$nproc" -m daemon \
    "${args[@]+"${args[@]}"}"
