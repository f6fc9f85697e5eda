#!/usr/bin/env bash
# The test command: set up the environment (as run_studio.sh does, plus test tools), then run
# the whole suite. Extra arguments go to pytest, e.g. ./run_tests.sh -k protocol
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
scripts/setup_env.sh --dev
exec .venv/bin/python -m pytest -q "$@"
