#!/usr/bin/env bash
# Installs what benches/baseline/pipeline.py needs and prints the venv's python on stdout:
#   - ffmpeg (and ffprobe) from Debian's `ffmpeg` package, when `ffmpeg` is not on PATH;
#   - a venv with benches/baseline/requirements.txt at $CLASSGUARD_BASELINE_VENV
#     (default ~/.cache/classguard-tools/baseline-venv).
# Idempotent: when ffmpeg runs and the venv was installed from the same requirements.txt, it
# installs nothing. On failure it exits non-zero with one line on stderr saying why (the e2e
# bench then prints the row as "skipped: <that line>"); installer output goes to setup.log
# beside the venv.
#
#   benches/baseline/setup.sh
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REQ="$HERE/requirements.txt"
VENV="${CLASSGUARD_BASELINE_VENV:-$HOME/.cache/classguard-tools/baseline-venv}"
STAMP="$VENV/.installed-requirements.txt"
LOG="$(dirname "$VENV")/baseline-setup.log"
mkdir -p "$(dirname "$VENV")"
fail() { printf '%s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo -n "$@"
  else return 1
  fi
}

apt_install() {
  # A fresh machine may have no package lists yet: update once and retry.
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >>"$LOG" 2>&1 \
    || { as_root apt-get update -q >>"$LOG" 2>&1 \
      && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >>"$LOG" 2>&1; }
}

if ! { ffmpeg -version && ffprobe -version; } >/dev/null 2>&1; then
  echo "baseline setup: installing ffmpeg (apt-get)" >&2
  command -v apt-get >/dev/null 2>&1 || fail "ffmpeg is not installed and there is no apt-get"
  apt_install ffmpeg || fail "ffmpeg is not installed and apt-get install ffmpeg failed (not root, or see $LOG)"
fi

if [ -x "$VENV/bin/python" ] && cmp -s "$REQ" "$STAMP"; then
  echo "$VENV/bin/python"
  exit 0
fi

PYTHON="${CLASSGUARD_BASELINE_PYTHON:-python3}"
command -v "$PYTHON" >/dev/null 2>&1 || fail "no $PYTHON to create the baseline venv with"
echo "baseline setup: creating $VENV (pip install -r benches/baseline/requirements.txt)" >&2
if [ -e "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ]; then
  fail "$VENV exists and is not a venv: not replacing it"
fi
rm -rf "$VENV"
if ! "$PYTHON" -m venv "$VENV" >>"$LOG" 2>&1; then
  # Debian's python3 needs python3-venv for ensurepip.
  rm -rf "$VENV"
  apt_install python3-venv && "$PYTHON" -m venv "$VENV" >>"$LOG" 2>&1 \
    || fail "cannot create a venv with $PYTHON (see $LOG)"
fi
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$REQ" >>"$LOG" 2>&1 \
  || fail "pip install -r benches/baseline/requirements.txt failed (see $LOG)"
"$VENV/bin/python" -c 'import numpy, onnxruntime, PIL' >>"$LOG" 2>&1 \
  || fail "the baseline venv cannot import numpy, onnxruntime and PIL (see $LOG)"
cp "$REQ" "$STAMP"
echo "$VENV/bin/python"
