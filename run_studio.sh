#!/usr/bin/env bash
# Command 1: set up (first run only), make sure a daemon answers, serve the studio on :8419.
#   ./run_studio.sh                 local daemon on the embedded default (or real weights if present)
#   DUET_DAEMON=tcp://host:8418 ./run_studio.sh    use a daemon that is already running elsewhere
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
scripts/setup_env.sh
PY="$ROOT/.venv/bin/python"
export DUET_DAEMON="${DUET_DAEMON:-tcp://127.0.0.1:8418}"
STUDIO_PORT="${STUDIO_PORT:-8419}"

started=""
if ! "$PY" -m studio.cli --daemon "$DUET_DAEMON" --timeout 3 info >/dev/null 2>&1; then
  mkdir -p "$ROOT/state"
  echo "[studio] no daemon answers at $DUET_DAEMON: starting one (log: state/daemon.log)"
  "$ROOT/run_daemon.sh" >"$ROOT/state/daemon.log" 2>&1 &
  started=$!
  trap '[ -n "$started" ] && kill "$started" 2>/dev/null; wait 2>/dev/null' EXIT INT TERM
  for _ in $(seq 1 120); do
    "$PY" -m studio.cli --daemon "$DUET_DAEMON" --timeout 2 info >/dev/null 2>&1 && break
    kill -0 "$started" 2>/dev/null || { echo "[studio] the daemon exited; see state/daemon.log" >&2; tail -20 "$ROOT/state/daemon.log" >&2; exit 1; }
    sleep 1
  done
fi
echo "[studio] open http://localhost:$STUDIO_PORT"
"$PY" -m streamlit run "$ROOT/studio/app.py" --server.port "$STUDIO_PORT" \
  --server.headless true --browser.gatherUsageStats false
