#!/usr/bin/env bash
# Start the Duet Studio daemon: one rank per visible GPU under torchrun, or one CPU process.
#
#   ./run_daemon.sh [--nproc N] [daemon flags…]      (python -m daemon --help lists the flags)
#
# N: --nproc, else $NPROC, else the GPUs `nvidia-smi -L` lists (limited by
# CUDA_VISIBLE_DEVICES when it is set). N = 0 runs `python -m daemon` on the CPU (draft renders).
# Stop it with Ctrl-C or SIGTERM: the running job goes back to the queue.
#
# Supervision: when the daemon dies (a rank died, a fatal error: exit code 1 or a signal) it is
# started again with the same flags after a pause (2 s, doubling up to 30 s; back to 2 s after a
# run of 60 s or more), and the job store resumes the queue. Exit code 0 (asked to stop) or 2 (bad
# flags, port in use) ends the script with that code; so do 5 quick deaths in a row.
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
    command=("$python" -m daemon "${args[@]+"${args[@]}"}")
else
    # Sequence parallelism over all ranks unless the flags say otherwise
    # (cfg_parallel × ulysses × ring = ranks).
    flags=" ${args[*]+"${args[*]}"} "
    if (( nproc > 1 )) && [[ $flags != *" --ulysses_size"* && $flags != *" --ring_size"* && $flags != *" --cfg_parallel"* ]]; then
        args+=(--ulysses_size "$nproc")
    fi
    command=("$python" -m torch.distributed.run --standalone --nproc_per_node="$nproc" -m daemon
             "${args[@]+"${args[@]}"}")
fi

backoff_first=2 backoff_max=30 steady_s=60 max_quick_failures=5
child=0 stopping=0

# Ctrl-C in a terminal reaches the daemon directly (same foreground process group): passing
# SIGINT on as well would be its second signal, which means "exit at once".
reaches_child_directly() {
    local stat
    read -ra stat </proc/$$/stat 2>/dev/null || return 1
    [[ ${stat[4]} == "${stat[7]}" ]]        # our process group is the terminal's foreground
}
forward() {
    stopping=1
    if (( child > 0 )) && ! { [[ $1 == INT ]] && reaches_child_directly; }; then
        kill -s "$1" "$child" 2>/dev/null || true
    fi
}
trap 'forward TERM' TERM
trap 'forward INT' INT

backoff=$backoff_first quick_failures=0
while true; do
    started=$SECONDS
    "${command[@]}" &
    child=$!
    code=0
    # `wait` returns early when a trapped signal arrives: wait again until the child has exited.
    while true; do
        wait "$child" && code=0 || code=$?
        kill -0 "$child" 2>/dev/null || break
    done
    child=0
    if (( stopping )); then
        exit 0
    fi
    if (( code == 0 || code == 2 )); then
        exit "$code"
    fi
    if (( SECONDS - started >= steady_s )); then
        backoff=$backoff_first quick_failures=0
    fi
    quick_failures=$((quick_failures + 1))
    if (( quick_failures >= max_quick_failures )); then
        echo "run_daemon.sh: the daemon died $quick_failures times in a row within ${steady_s} s of starting (last exit code $code); giving up — see the log above" >&2
        exit 1
    fi
    echo "run_daemon.sh: the daemon exited with code $code; starting it again in ${backoff} s (the queue resumes)" >&2
    sleep "$backoff" &
    wait $! || true
    if (( stopping )); then
        exit 0
    fi
    backoff=$(( backoff * 2 > backoff_max ? backoff_max : backoff * 2 ))
done
