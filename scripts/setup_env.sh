#!/usr/bin/env bash
# One environment for both README commands: Debian packages, then .venv/ at the repo root.
# Idempotent and quick once done: every step checks before it installs.
#   setup_env.sh            what the product needs
#   setup_env.sh --dev      also what the test suite needs (pytest, Chromium for browser tests)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
DEV=0
[ "${1:-}" = "--dev" ] && DEV=1

say() { printf '[setup] %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------------
# espeak-ng: the always-available TTS; fonts: subtitles in Latin and CJK scripts.
# opencv-data: the trained face cascade the studio runs (OpenCV 5 wheels ship none).
APT_PKGS=(espeak-ng fonts-dejavu-core fonts-wqy-zenhei opencv-data)
[ $DEV = 1 ] && APT_PKGS+=(chromium)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  if [ "$(id -u)" = 0 ] || command -v sudo >/dev/null; then
    say "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    say "WARNING: cannot install ${missing[*]} (not root, no sudo): TTS falls back to the bundled espeak library"
  fi
fi

# --- Python environment --------------------------------------------------------------
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip install -q --disable-pip-version-check)
# pip's notes about unreachable local package mirrors on some machines are noise here.
pip_install() { "${PIP[@]}" "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; }

# torch first, chosen by the machine: a CPU machine never gets CUDA wheels forced on it
# (torch==2.13.0 is the CPU build this project is tested with), a GPU machine keeps or gets
# a CUDA build. TORCH_SPEC overrides, e.g. TORCH_SPEC="torch==2.11.0".
if ! "$VPY" -c "import torch" 2>/dev/null; then
  if [ -n "${TORCH_SPEC:-}" ]; then
    spec="$TORCH_SPEC"
  elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    spec="torch"
  else
    spec="torch==2.13.0"
  fi
  say "installing $spec"
  pip_install "$spec"
fi

# The rest, only when the requirement files changed since the last successful install.
req_files=("$ROOT/requirements.txt")
[ $DEV = 1 ] && req_files+=("$ROOT/requirements-dev.txt")
stamp="$VENV/.installed-$(cat "${req_files[@]}" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  say "installing Python packages (${req_files[*]##*/})"
  args=()
  for f in "${req_files[@]}"; do args+=(-r "$f"); done
  pip_install "${args[@]}"
  touch "$stamp"
fi

# The repo's packages (studio, daemon, shared) importable by the venv's python from any folder,
# so `.venv/bin/python -m studio.cli …` works where the user's files are.
site=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
[ -f "$site/duet-studio.pth" ] && [ "$(cat "$site/duet-studio.pth")" = "$ROOT" ] || echo "$ROOT" > "$site/duet-studio.pth"
